"""The explicit fast inference form of a DCD layer (eval only): :meth:`DynamicConvDecomposition.reparameterize`.

In eval mode every BatchNorm is affine, so the stabilised layer (Eq. 3.6 as released) equals
``y = Λ(x) ⊙ (W0 ∗ x) + P Φ_eff(x) (Q ∗ x) + bias(x)`` with

* Φ_eff = diag(a₂)·Φ·diag(a₁) + diag(a₁) and bias = P(a₂ ⊙ Φc₁ + c₂ + c₁) (+ Λ ⊙ b), (a₁, c₁), (a₂, c₂) the affine maps
  of BN2d(Qx) and BN1d(Φz): both are linear in the branch's hidden features h, so they are rows of ONE Linear head
  ``h → [Λ logits | vec Φ_eff | bias]``;
* hsig2(t) = clamp(t/3 + 1, 0, 2): its affine part is folded into the gate and Λ rows;
* a following BatchNorm2d (s, t): s scales W0, b and P, t joins the bias rows (outside Λ).

Application: "featurewise" (``y = Λ⊙conv(x) + P·(Φ_eff·z) + bias``, W0 and Q as one conv when they read the same
pixels) or "synthesis" for 1×1 layers without padding (one kernel Λ⊙W0 + PΦ_effQ per sample, applied as a batched
GEMM) — fixed per layer at conversion time, so the module is one traceable graph (no shape-dependent branches).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from dcd.layers import _trace
from dcd.layers.dcd import block_diag, bn_affine
from dyncore.nn import ApplyMode, check_mode

if TYPE_CHECKING:
    from dcd.layers.dcd import DynamicConvDecomposition

__all__ = ["DCDInference"]


class DCDInference(nn.Module):
    """Eval-only DCD layer made of standard modules: ``fc``/``gate``/``head`` Linears and a Conv2d.

    Shapes: (B, C_in, H, W) → (B, C_out, H', W'); with ``flat=True`` (the classifier) (B, C_in) → (B, C_out).
    Attributes: ``splits`` = (n_Λ, n_Φ, n_bias) rows of the fused head; ``form`` "featurewise" | "synthesis".
    """

    def __init__(
        self,
        *,
        in_channels: int,
        out_channels: int,
        latent: int,
        pool: int,
        fc: nn.Linear,
        gate: nn.Linear | None,
        head: nn.Linear,
        splits: tuple[int, int, int],
        conv: nn.Conv2d,
        q: nn.Conv2d | None,
        p: Tensor | None,
        static_bias: Tensor | None,
        stride: int,
        form: ApplyMode,
        flat: bool = False,
    ) -> None:
        super().__init__()
        self.in_channels, self.out_channels, self.latent = in_channels, out_channels, latent
        self.pool, self.splits, self.stride, self.flat = pool, splits, stride, flat
        self.form = check_mode(form)
        self.fc, self.gate, self.head, self.conv, self.q = fc, gate, head, conv, q
        self.p = None if p is None else nn.Parameter(p, requires_grad=False)
        self.static_bias = None if static_bias is None else nn.Parameter(static_bias, requires_grad=False)
        # W0 and Q fused in ``conv`` (C_out + L output channels) when ``q`` is None and there is a residual.
        self.fused = q is None and latent > 0

    @classmethod
    @torch.no_grad()
    def from_layer(
        cls, layer: DynamicConvDecomposition, *, bn: nn.BatchNorm2d | None = None, form: ApplyMode = "featurewise"
    ) -> DCDInference:
        """Fold ``layer`` (its eval statistics) and an optional following ``bn`` (eval statistics) into the fast form.

        Raises:
            ValueError: ``form="synthesis"`` on a layer that is not a 1×1 conv without padding.
        """
        who = f"{type(layer).__name__}.reparameterize"
        form = check_mode(form)
        if form == "synthesis" and not (layer.kernel_size == 1 and layer.padding == 0):
            raise ValueError(f"{who}: form='synthesis' needs a 1×1 layer without padding (kernel {layer.kernel_size})")
        br = layer.branch
        if br.fc is None:
            raise ValueError(f"{who}: the dynamic branch has no hidden layer")
        w0 = layer.weight.detach().clone()
        dt, dev = w0.dtype, w0.device
        o, lat, hidden = layer.out_channels, layer.latent, br.fc.out_features
        s = torch.ones(o, dtype=dt, device=dev)
        t = torch.zeros(o, dtype=dt, device=dev)
        if bn is not None:
            s, t = bn_affine(bn)
        w0 = w0 * s[:, None, None, None]
        b = None if layer.bias is None else layer.bias.detach() * s
        fc = _linear(br.fc.weight, br.fc.bias)
        gate = None
        if br.gate is not None:  # hsig2(t) = clamp(t/3 + 1, 0, 2): the affine part goes into the Linear
            gb = torch.ones(hidden, dtype=dt, device=dev) + (0.0 if br.gate.bias is None else br.gate.bias / 3.0)
            gate = _linear(br.gate.weight / 3.0, gb)
        rows_w: list[Tensor] = []
        rows_b: list[Tensor] = []
        n_lam = n_phi = 0
        if layer.use_lambda:
            head = br.heads["scale"]
            rows_w.append(head.weight / 3.0)
            rows_b.append(torch.ones(o, dtype=dt, device=dev) + (0.0 if head.bias is None else head.bias / 3.0))
            n_lam = o
        bias_w = torch.zeros(o, hidden, dtype=dt, device=dev)
        bias_b = t.clone()
        if b is not None and not layer.use_lambda:
            bias_b = bias_b + b
        p = q_full = None
        if layer.use_residual:
            head = br.heads["phi"]
            nb, lb = layer.blocks, layer.block_latent
            wp = head.weight.reshape(nb, lb, lb, hidden)
            bp = torch.zeros(nb, lb, lb, dtype=dt, device=dev) if head.bias is None else head.bias.reshape(nb, lb, lb)
            # block-diagonal Φ (Eq. 3.7) as full L×L rows of the head (zero rows off the blocks)
            wp = block_diag(wp.permute(3, 0, 1, 2)).permute(1, 2, 0)  # (L, L, S)
            bp = block_diag(bp)  # (L, L)
            p_full, q_full = layer._full_pq()
            p = p_full.detach() * s[:, None]
            q_full = q_full.detach()
            if layer.stabilised:  # Φ_eff = diag(a₂)Φdiag(a₁) + diag(a₁); bias P(a₂⊙(Φc₁) + c₂ + c₁)
                a1, c1 = bn_affine(layer.bn_q)
                a2, c2 = bn_affine(layer.bn_phi)
                scale = a2[:, None] * a1[None, :]
                eye = torch.eye(lat, dtype=dt, device=dev)
                rows_w.append((wp * scale[:, :, None]).reshape(lat * lat, hidden))
                rows_b.append((bp * scale + eye * a1).reshape(-1))
                m_w = (wp * c1[None, :, None]).sum(1)  # Φ(x)c₁ = m_w·h + m_b, (L, S) and (L,)
                m_b = (bp * c1).sum(1)
                bias_w = p @ (a2[:, None] * m_w)
                bias_b = bias_b + p @ (a2 * m_b + c2 + c1)
            else:
                rows_w.append(wp.reshape(lat * lat, hidden))
                rows_b.append(bp.reshape(-1))
            n_phi = lat * lat
        rows_w.append(bias_w)
        rows_b.append(bias_b)
        head_lin = _linear(torch.cat(rows_w), torch.cat(rows_b))
        k = layer.kernel_size
        same_pixels = k == 1 and layer.inner_padding == layer.padding
        q_conv = None
        if q_full is not None and (form == "synthesis" or same_pixels):
            weight = torch.cat([w0, q_full[:, :, None, None]])  # W0 and Q read the same pixels: one conv
        else:
            weight = w0
            if q_full is not None:
                q_conv = _conv(q_full[:, :, None, None], layer.stride, layer.inner_padding, layer.dilation)
        conv = _conv(weight, layer.stride, layer.padding, layer.dilation)
        static_bias = b if (b is not None and layer.use_lambda) else None
        flat = type(layer).__name__ == "DCDClassifier" or getattr(layer, "flat_input", False)
        return cls(
            in_channels=layer.in_channels, out_channels=o, latent=lat if layer.use_residual else 0,
            pool=br.pool, fc=fc, gate=gate, head=head_lin, splits=(n_lam, n_phi, o), conv=conv, q=q_conv, p=p,
            static_bias=static_bias, stride=layer.stride, form=form, flat=flat,
        )  # fmt: skip

    def extra_repr(self) -> str:
        return f"{self.in_channels}, {self.out_channels}, L={self.latent}, form={self.form}, flat={self.flat}"

    def coefficients(self, x: Tensor) -> tuple[Tensor | None, Tensor | None, Tensor]:
        """Λ (B, C_out) or None, Φ_eff (B, L, L) or None, and the per-sample bias (B, C_out)."""
        pooled = x.flatten(1) if self.flat else _trace.branch_pool(x, self.pool)
        h = self.fc(pooled)
        if self.gate is not None:
            h = h * self.gate(h).clamp(0.0, 2.0)
        c = self.head(h)
        n_lam, n_phi, _ = self.splits
        lam = c[:, :n_lam].clamp(0.0, 2.0) if n_lam else None
        bias = c[:, n_lam + n_phi :]
        if lam is not None and self.static_bias is not None:
            bias = torch.addcmul(bias, lam, self.static_bias)
        phi = c[:, n_lam : n_lam + n_phi].reshape(-1, self.latent, self.latent) if n_phi else None
        return lam, phi, bias

    def forward(self, x: Tensor) -> Tensor:
        _trace.check_input(x, 2 if self.flat else 4, self.in_channels, type(self).__name__)
        x4 = x[:, :, None, None] if self.flat else x
        lam, phi, bias = self.coefficients(x4)
        if self.form == "synthesis" and phi is not None and self.p is not None:
            y = self._synthesis(x4, lam, phi, bias)
        else:
            y = self._featurewise(x4, lam, phi, bias)
        return y.flatten(1) if self.flat else y

    def _featurewise(self, x: Tensor, lam: Tensor | None, phi: Tensor | None, bias: Tensor) -> Tensor:
        o = self.out_channels
        out = self.conv(x)
        if phi is None or self.p is None:
            y = out if lam is None else out * lam[:, :, None, None]
            return y + bias[:, :, None, None]
        if self.fused:
            y, z = out[:, :o], out[:, o:]
        else:
            assert self.q is not None
            y, z = out, self.q(x)
        # Λ⊙(W0∗x) + bias in one op, then + P·(Φ_eff·z) in one batched GEMM: two full-size outputs in all
        y = (
            torch.addcmul(bias[:, :, None, None], y, lam[:, :, None, None])
            if lam is not None
            else y + bias[:, :, None, None]
        )
        u = torch.bmm(phi, z.flatten(2))  # Φ_eff·z, (B, L, H'W')
        return torch.baddbmm(y.flatten(2), self.p.expand(x.shape[0], -1, -1), u).view_as(y)

    def _synthesis(self, x: Tensor, lam: Tensor | None, phi: Tensor, bias: Tensor) -> Tensor:
        """One 1×1 kernel per sample, K_b = Λ_b⊙W0 + P Φ_eff,b Q, as a batched GEMM on the (strided) pixels."""
        assert self.p is not None
        o = self.out_channels
        w = self.conv.weight.flatten(1)
        w0, q = w[:o], w[o:]
        n = phi.shape[0]
        scaled = w0.expand(n, -1, -1) if lam is None else lam[:, :, None] * w0
        kernel = torch.baddbmm(scaled, torch.matmul(self.p, phi), q.expand(n, -1, -1))  # (B, O, I)
        xs = x[:, :, :: self.stride, :: self.stride] if self.stride > 1 else x
        y = torch.baddbmm(bias[:, :, None], kernel, xs.flatten(2))
        return y.reshape(xs.shape[0], o, xs.shape[2], xs.shape[3])


def _linear(weight: Tensor, bias: Tensor | None) -> nn.Linear:
    lin = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None, device=weight.device, dtype=weight.dtype)
    lin.weight.data.copy_(weight)
    if bias is not None:
        lin.bias.data.copy_(bias)
    lin.requires_grad_(False)
    return lin


def _conv(weight: Tensor, stride: int, padding: int, dilation: int) -> nn.Conv2d:
    o, i, kh, kw = weight.shape
    conv = nn.Conv2d(i, o, (kh, kw), stride, padding, dilation, bias=False, device=weight.device, dtype=weight.dtype)
    conv.weight.data.copy_(weight)
    conv.requires_grad_(False)
    return conv
