"""The DCD layer: W(x) = Λ(x)·W0 + ⊕_b P_b Φ_b(x) Q_bᵀ  (Eq. 3.6; Eq. 3.7 for B > 1 blocks).

On a k×k static kernel the low-rank residual is a 1×1 conv on the centre tap ("channel fusion alone", Sec. 3.4.3).
Forms:

* **stabilised** (default, the released implementation): the kernel is never built; with z = BN2d(Q ∗ x)
  ``y = Λ(x) ⊙ (W0 ∗ x + b) + P( BN1d(Φ(x)·z) + z )`` — effectively P(Φ + I)Qᵀ with BNs "for stability".
* **plain**: ``y = (Λ(x)·W0 + P Φ(x) Qᵀ) ∗ x + Λ(x) ⊙ b``, exactly Eq. 3.6.

The layer always runs its own modules (its BNs, its branch), in training and in eval, with or without autograd.
``mode`` picks how the equation is applied: "featurewise" runs every term on the features (per pixel, the released
computation), "synthesis" builds one kernel per sample, "auto" (default) is feature-wise in eval and, in training,
per-sample synthesis for 1×1 layers where that costs fewer MAdds (same outputs, gradients and BN statistics).

The fast inference form (BNs folded, hsig2's affine part and the per-sample bias folded into the branch, a following
BN folded, kernel synthesis where cheaper) is an explicit conversion: :meth:`DynamicConvDecomposition.reparameterize`
returns a :class:`dcd.layers.fast.DCDInference` (see :func:`dcd.reparameterize` for a whole model).
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dcd.layers import _trace
from dcd.rules import check_latent, paper_latent, scale_latent, squeeze_width
from dyncore.nn import (
    ApplyMode,
    CoefficientBranch,
    check_mode,
    hsig2,
    low_rank_conv2d,
    low_rank_madds,
    pointwise_per_sample,
)

__all__ = ["VARIANTS", "DynamicConvDecomposition", "block_diag", "bn_affine", "dynamic_per_sample"]

VARIANTS = ("full", "lambda", "residual")


def bn_affine(
    bn: nn.modules.batchnorm._BatchNorm, mean: Tensor | None = None, var: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """A BN as y = a·x + c with the given statistics (default: its running ones, i.e. eval mode): (a, c), each (C,)."""
    if var is None:
        var = bn.running_var if bn.running_var is not None else torch.ones(bn.num_features)
    if mean is None:
        mean = bn.running_mean if bn.running_mean is not None else torch.zeros(bn.num_features)
    a = torch.rsqrt(var + bn.eps)
    if bn.weight is not None:
        a = a * bn.weight
    c = -mean * a
    if bn.bias is not None:
        c = c + bn.bias
    return a, c


def dynamic_per_sample(convention: Any) -> bool:
    """True when a MAdds convention counts the dynamic part once per sample (kernel synthesis)."""
    return getattr(convention, "dynamic", "per_sample") == "per_sample"


def block_diag(blocks: Tensor) -> Tensor:
    """(..., nb, r, c) → (..., nb·r, nb·c) block-diagonal."""
    *lead, nb, r, c = blocks.shape
    eye = torch.eye(nb, dtype=blocks.dtype, device=blocks.device)
    out = blocks.unsqueeze(-2) * eye[:, None, :, None]  # (..., nb, r, nb, c)
    return out.reshape(*lead, nb * r, nb * c)


class DynamicConvDecomposition(nn.Module):
    """Dynamic convolution decomposition (Eq. 3.6 / 3.7; k×k: channel fusion alone).

    Args:
        in_channels, out_channels: C_in, C_out.
        kernel_size: k of the static kernel W0 (odd); the dynamic residual is always 1×1 (centre tap).
        stride, padding (default k//2), dilation: of W0; Q carries the stride.
        groups: must be 1 (W0 is a full matrix; see :class:`DepthwiseDCD` for depthwise convs).
        bias: a static bias b (scaled by Λ, as in the released classifier).
        latent: L, the size of Φ (default: the paper's ⌊C_in / 2^⌊log2 √C_in⌋⌋), multiplied by ``latent_mult``.
        squeeze: S, hidden width of the dynamic branch (default max(C_in·pool², L²) // ``reduction``, ≥ 4).
        pool: 1 (global) or 2 (2×2 → 4·C_in branch features).
        variant: "full" (ΛW0 + PΦQᵀ), "lambda" (ΛW0 only) or "residual" (W0 + PΦQᵀ) — Table 3.1.
        blocks: B diagonal blocks of the dynamic residual (Eq. 3.7); each block has L/B latent channels.
        stabilised: the released P(BN(Φ·BN(Qx)) + BN(Qx)) form (default) or the plain equation.
        fusion_bn_init: initial γ of BN(Φ·z) in the stabilised form (1 as released; 0 = start from ΛW0 + PQᵀ).
        mode: "featurewise", "synthesis" or "auto" (default): feature-wise in eval; in training the stabilised form
            runs by per-sample synthesis on 1×1 layers where that costs fewer MAdds (:meth:`_train_by_synthesis`).
            The fast inference form chooses its own application per layer (:meth:`apply_mode`, :meth:`reparameterize`).

    Shapes: x (B, C_in, H, W) → (B, C_out, H', W').
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 1,
        *,
        stride: int = 1,
        padding: int | None = None,
        dilation: int = 1,
        groups: int = 1,
        bias: bool = False,
        latent: int | None = None,
        latent_mult: float = 1.0,
        squeeze: int | None = None,
        reduction: int = 16,
        pool: int = 1,
        variant: str = "full",
        blocks: int = 1,
        stabilised: bool = True,
        fusion_bn_init: float = 1.0,
        mode: str = "auto",
    ) -> None:
        super().__init__()
        who = type(self).__name__
        for name, v in (("in_channels", in_channels), ("out_channels", out_channels)):
            if not isinstance(v, int) or v <= 0:
                raise ValueError(f"{who}: {name} must be a positive integer, got {v!r}")
        if groups != 1:
            raise ValueError(
                f"{who}: groups={groups} is not supported (W0 must be a full C_out×C_in matrix); "
                "use DepthwiseDCD for a depthwise conv or keep grouped convs static"
            )
        if kernel_size <= 0 or kernel_size % 2 == 0:
            raise ValueError(f"{who}: kernel_size must be a positive odd number (centre tap), got {kernel_size}")
        if variant not in VARIANTS:
            raise ValueError(f"{who}: unknown variant {variant!r}; choose one of {VARIANTS}")
        if not isinstance(blocks, int) or blocks <= 0:
            raise ValueError(f"{who}: blocks (B) must be a positive integer, got {blocks!r}")
        if in_channels % blocks or out_channels % blocks:
            raise ValueError(
                f"{who}: blocks B={blocks} must divide in_channels={in_channels} and out_channels={out_channels}"
            )
        padding = kernel_size // 2 * dilation if padding is None else padding
        inner = padding - dilation * (kernel_size - 1) // 2
        if inner < 0:
            raise ValueError(f"{who}: padding={padding} too small for a centred 1×1 residual on a {kernel_size}² conv")
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size, self.stride, self.padding, self.dilation = kernel_size, stride, padding, dilation
        self.inner_padding = inner
        self.variant = variant
        self.stabilised = stabilised
        self.fusion_bn_init = fusion_bn_init
        self.blocks = blocks
        self.mode = mode if mode == "auto" else check_mode(mode)
        self.use_lambda = variant in ("full", "lambda")
        self.use_residual = variant in ("full", "residual")

        self.weight = nn.Parameter(torch.empty(out_channels, in_channels, kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.zeros(out_channels)) if bias else None
        heads: dict[str, int] = {}
        outputs: dict[str, str] = {}
        lat = scale_latent(check_latent(paper_latent(in_channels) if latent is None else latent, who), latent_mult)
        if self.use_residual:
            if lat < blocks:
                raise ValueError(f"{who}: latent L={lat} is smaller than the number of blocks B={blocks}")
            self.block_latent = lat // blocks
            self.latent = self.block_latent * blocks
            self.q = nn.Parameter(torch.empty(self.latent, in_channels // blocks, 1, 1))
            self.p = nn.Parameter(torch.empty(out_channels, self.block_latent, 1, 1))
            heads["phi"] = blocks * self.block_latent**2
            outputs["phi"] = "raw"
            if stabilised:
                self.bn_q = nn.BatchNorm2d(self.latent)
                self.bn_phi = nn.BatchNorm1d(self.latent)
                # γ of BN1d(Φz): 1 as released. BN rescales the tiny Φ(x)·z of initialisation to unit variance, so
                # the fused path starts as per-sample noise; 0 starts the layer as ΛW0 + PQᵀ (faster on short budgets).
                nn.init.constant_(self.bn_phi.weight, fusion_bn_init)
        else:
            self.latent = self.block_latent = 0
        if self.use_lambda:
            heads["scale"] = out_channels
            outputs["scale"] = "hsig2"
        if squeeze is None:
            squeeze = squeeze_width(in_channels * pool * pool, self.latent, reduction)
        self.squeeze = squeeze
        self.branch = CoefficientBranch(
            in_channels, heads, hidden=squeeze, pool=pool, hidden_activation="gate", output=outputs, bias=False
        )
        self.reset_parameters()

    @classmethod
    def from_conv(cls, conv: nn.Conv2d, **kwargs: Any) -> DynamicConvDecomposition:
        """A DCD layer whose W0 (and bias) is a copy of ``conv``'s weights; stride/padding/dilation are taken over.

        Raises:
            ValueError: grouped conv, non-square or even kernel, or string/asymmetric padding.
        """
        who = f"{cls.__name__}.from_conv"
        if not isinstance(conv, nn.Conv2d):
            raise TypeError(f"{who}: expected an nn.Conv2d, got {type(conv).__name__}")
        if conv.groups != 1:
            raise ValueError(f"{who}: cannot convert a grouped conv (groups={conv.groups}); DCD needs a full W0")
        kh, kw = conv.kernel_size
        if kh != kw:
            raise ValueError(f"{who}: kernel {conv.kernel_size} must be square")
        pads, strides, dils = conv.padding, conv.stride, conv.dilation
        if isinstance(pads, str) or len(set(pads)) != 1 or len(set(strides)) != 1 or len(set(dils)) != 1:
            raise ValueError(f"{who}: padding/stride/dilation must be symmetric integers, got {pads}/{strides}/{dils}")
        layer = cls(
            conv.in_channels, conv.out_channels, kh, stride=strides[0], padding=int(pads[0]), dilation=dils[0],
            bias=conv.bias is not None, **kwargs,
        )  # fmt: skip
        with torch.no_grad():
            layer.weight.copy_(conv.weight)
            if conv.bias is not None and layer.bias is not None:
                layer.bias.copy_(conv.bias)
        return layer.to(conv.weight.device)

    # ------------------------------------------------------------------------------------------------------------------
    def reset_parameters(self) -> None:
        """PyTorch conv default for W0, P, Q (the model builders re-initialise as the paper does)."""
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        if self.use_residual:
            nn.init.kaiming_uniform_(self.q, a=math.sqrt(5))
            nn.init.kaiming_uniform_(self.p, a=math.sqrt(5))

    def conv_weights(self) -> list[Tensor]:
        """The conv-like weights (W0, Q, P) for conv-style initialisation."""
        return [self.weight, *([self.q, self.p] if self.use_residual else [])]

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
            f"variant={self.variant}, L={self.latent}, S={self.squeeze}, B={self.blocks}, "
            f"stabilised={self.stabilised}, mode={self.mode}"
        )

    # ------------------------------------------------------------------------------------------------------------------
    def apply_mode(self, batch: int, out_hw: tuple[int, int]) -> ApplyMode:
        """The application form of the fast inference form for ``batch`` samples with output grid ``out_hw``
        (used by :func:`dcd.reparameterize` with an example input; the layer itself never switches forms in eval).

        An explicit ``mode`` is returned as is. ``"auto"``: synthesis when building the kernel, (Λ·W0: O·I·k²) +
        (PΦ_eff)Qᵀ: O·L² + O·L·I, costs fewer MAdds than the feature-wise residual, H'W'·(L·I + L² + O·L) (+ O·H'W'
        for Λ) — for a batch only on 1×1 layers, whose per-sample kernels run as one batched GEMM (a k×k layer would
        need a per-sample grouped conv, slow per MAdd on CPU)."""
        if self.mode != "auto":
            return self.mode  # type: ignore[return-value]
        if not self.use_residual or (batch != 1 and not self._gemm_form):
            return "featurewise"
        o, i, lat = self.out_channels, self.in_channels, self.latent
        pixels = out_hw[0] * out_hw[1]
        featurewise = pixels * (lat * i + lat * lat + o * lat + (o if self.use_lambda else 0))
        synthesis = o * lat * (lat + i) + (o * i * self.kernel_size**2 if self.use_lambda else 0)
        return "synthesis" if synthesis < featurewise else "featurewise"

    @property
    def _gemm_form(self) -> bool:
        """A 1×1 layer without padding: per-sample kernels apply as one batched GEMM on the (strided) input."""
        return self.kernel_size == 1 and self.padding == 0

    def _out_hw(self, x: Tensor) -> tuple[int, int]:
        """Output grid (H', W') of W0 for the input ``x``."""
        reach = 2 * self.padding - self.dilation * (self.kernel_size - 1) - 1
        return (x.shape[-2] + reach) // self.stride + 1, (x.shape[-1] + reach) // self.stride + 1

    def coefficients(self, x: Tensor) -> tuple[Tensor | None, Tensor | None]:
        """Λ(x) (B, C_out) or None, and block-diagonal Φ(x) (B, L, L) or None.

        The branch's modules run one by one (pool → fc → u ⊙ hsig2(gate(u)) → heads) so that ``torch.fx`` can trace
        the layer (:mod:`dcd.layers._trace`)."""
        br = self.branch
        assert br.fc is not None
        u = br.fc(_trace.branch_pool(x, br.pool))
        if br.gate is not None:
            u = u * hsig2(br.gate(u))
        lam = hsig2(br.heads["scale"](u)) if self.use_lambda else None
        phi = None
        if self.use_residual:
            phi = br.heads["phi"](u).reshape(x.shape[0], self.blocks, self.block_latent, self.block_latent)
            phi = phi[:, 0] if self.blocks == 1 else block_diag(phi)
        return lam, phi

    def _full_pq(self) -> tuple[Tensor, Tensor]:
        """P (C_out, L) and Qᵀ (L, C_in), block-diagonal when B > 1."""
        p = self.p.flatten(1)
        q = self.q.flatten(1)
        if self.blocks > 1:
            p = block_diag(p.reshape(self.blocks, self.out_channels // self.blocks, self.block_latent))
            q = block_diag(q.reshape(self.blocks, self.block_latent, self.in_channels // self.blocks))
        return p, q

    def _static(self, x: Tensor, lam: Tensor | None) -> Tensor:
        y = F.conv2d(x, self.weight, self.bias, self.stride, self.padding, self.dilation)
        return y if lam is None else y * lam[:, :, None, None]

    def forward_released(self, x: Tensor, lam: Tensor | None = None, phi: Tensor | None = None) -> Tensor:
        """Feature-wise path with the BN modules as they are (the released computation; used in training)."""
        if lam is None and phi is None:
            lam, phi = self.coefficients(x)
        if phi is None:
            return self._static(x, lam)
        if self.kernel_size == 1 and self.blocks == 1 and self.inner_padding == self.padding:
            # W0 and Q read the same pixels: one conv producing C_out + L channels, then split.
            both = F.conv2d(x, torch.cat([self.weight, self.q]), None, self.stride, self.padding, self.dilation)
            y, z = both.split([self.out_channels, self.latent], dim=1)
            if self.bias is not None:
                y = y + self.bias[:, None, None]
            if lam is not None:
                y = y * lam[:, :, None, None]
        else:
            y = self._static(x, lam)
            z = F.conv2d(x, self.q, None, self.stride, self.inner_padding, self.dilation, self.blocks)
        shape = z.shape
        if self.stabilised:
            z = self.bn_q(z)
            u = self.bn_phi(torch.bmm(phi, z.flatten(2))).reshape(shape) + z
        else:
            u = torch.bmm(phi, z.flatten(2)).reshape(shape)
        if self.blocks == 1:
            # y + P·u as one batched GEMM (cheaper than a 1×1 conv plus an add, forward and backward).
            p = self.p.flatten(1).expand(x.shape[0], -1, -1)
            return torch.baddbmm(y.flatten(2), p, u.flatten(2)).reshape(y.shape)
        return y + F.conv2d(u, self.p, None, 1, 0, 1, self.blocks)

    def effective(self, lam: Tensor | None, phi: Tensor) -> tuple[Tensor, Tensor | None]:
        """Φ_eff (B, L, L) and the per-sample bias (B, C_out) such that the layer equals
        (Λ·W0 + P Φ_eff Qᵀ) ∗ x + bias — exact for the plain form and for the stabilised form in eval mode."""
        bias = None if self.bias is None else (self.bias if lam is None else lam * self.bias)
        if not self.stabilised:
            return phi, bias
        a1, c1 = bn_affine(self.bn_q)
        a2, c2 = bn_affine(self.bn_phi)
        eye = torch.eye(self.latent, dtype=phi.dtype, device=phi.device)
        phi_eff = a2[None, :, None] * phi * a1[None, None, :] + eye * a1  # diag(a1) (ONNX has no aten::diag)
        vec = a2 * (phi @ c1) + c2 + c1  # (B, L)
        p, _ = self._full_pq()
        extra = vec @ p.t()
        return phi_eff, extra if bias is None else extra + bias

    def forward(self, x: Tensor) -> Tensor:
        _trace.check_input(x, 4, self.in_channels, type(self).__name__)
        lam, phi = self.coefficients(x)
        if phi is None:
            return self._static(x, lam)
        if self.training and self.stabilised:
            if self._train_by_synthesis(x):
                return self._forward_train_synthesis(x, lam, phi)
            return self.forward_released(x, lam, phi)
        if self.mode != "synthesis":
            return self.forward_released(x, lam, phi)
        phi_eff, bias = self.effective(lam, phi)
        p, q = self._full_pq()
        return low_rank_conv2d(
            x, p, phi_eff, q, static_weight=self.weight, static_scale=lam, bias=bias,
            stride=self.stride, padding=self.padding, dilation=self.dilation, mode="synthesis",
        )  # fmt: skip

    def _train_by_synthesis(self, x: Tensor) -> bool:
        """Whether the stabilised training forward runs by synthesis (:meth:`_forward_train_synthesis`).

        Only 1×1 layers without blocks (and without SyncBatchNorm); ``mode="synthesis"`` forces it, ``"featurewise"``
        forbids it, and ``"auto"`` takes it when it costs fewer MAdds per sample: the feature-wise form pays P·u at
        every pixel (O·L·H'W'), synthesis pays z's second moments (L²·H'W') and the kernel PMQᵀ (L²·I + O·L·I)."""
        if not self._gemm_form or self.blocks != 1 or self.mode == "featurewise":
            return False
        if isinstance(self.bn_q, nn.SyncBatchNorm) or isinstance(self.bn_phi, nn.SyncBatchNorm):
            return False  # cross-process statistics: the released computation with SyncBatchNorm itself
        if self.mode == "synthesis":
            return True
        o, i, lat = self.out_channels, self.in_channels, self.latent
        h, w = self._out_hw(x)
        return lat * lat * h * w + lat * (lat + o) * i < o * lat * h * w

    def _forward_train_synthesis(self, x: Tensor, lam: Tensor | None, phi: Tensor) -> Tensor:
        """The stabilised form in training, y = Λ⊙(W0x + b) + P(BN1d(Φ·BN2d(z)) + BN2d(z)), z = Qx, computed by
        per-sample kernel synthesis (1×1 layers, B = 1).

        Both BNs normalise with batch statistics, which follow from z's per-sample moments: m_b = E_hw[z_b] and the
        centred C_b = Cov_hw(z_b) give BN2d's mean E_b[m_b] and variance E_b[diag C_b] + Var_b(m_b) (a₁, c₁); then
        ẑ = a₁⊙z + c₁ has mean a₁⊙m_b + c₁ and covariance D C_b D (D = diag a₁), so Φ_bẑ has mean Φ_b(a₁⊙m_b + c₁)
        and variance diag(Φ_b D C_b D Φ_bᵀ) per sample, which give BN1d's (a₂, c₂) the same way. Then
        u = (diag(a₂)Φ_b + I)(D z + c₁) + c₂ = M_b z + v_b and y_b = (Λ_b⊙W0 + P M_b Q) x_b + Λ_b⊙b + P v_b: one
        (C_out × C_in) kernel per sample applied as a batched GEMM.
        The per-pixel P·u of the released computation (C_out·L·H'W') is never formed. Outputs, gradients and the BN
        running statistics equal :meth:`forward_released` (tests)."""
        if self.stride > 1:
            x = x[:, :, :: self.stride, :: self.stride]
        n, c, h, w = x.shape
        xf = x.reshape(n, c, h * w)
        q = self.q.flatten(1)  # (L, I)
        z = torch.matmul(q, xf)  # (n, L, HW)
        # Centred moments (law of total variance): no E[z²] − E[z]² cancellation when |mean| ≫ std (post-ReLU inputs).
        m = z.mean(2)  # (n, L) per-sample means
        zc = z - m[:, :, None]
        cov = torch.bmm(zc, zc.transpose(1, 2)) / (h * w)  # (n, L, L) per-sample covariance over pixels
        mean1 = m.mean(0)
        var1 = torch.diagonal(cov, dim1=1, dim2=2).mean(0) + (m - mean1).square().mean(0)
        a1, c1 = self._batch_affine(self.bn_q, mean1, var1, n * h * w)
        mean_v = torch.bmm(phi, (a1 * m + c1)[:, :, None])[..., 0]  # per-sample mean of Φ_b ẑ_b
        within = (torch.bmm(phi, a1[:, None] * cov * a1[None, :]) * phi).sum(2)  # diag(Φ_b Cov(ẑ_b) Φ_bᵀ)
        mean2 = mean_v.mean(0)
        var2 = within.mean(0) + (mean_v - mean2).square().mean(0)
        a2, c2 = self._batch_affine(self.bn_phi, mean2, var2, n * h * w)
        eye = torch.eye(self.latent, dtype=x.dtype, device=x.device)
        gain = a2[None, :, None] * phi + eye  # diag(a₂)Φ_b + I
        v = torch.bmm(gain, c1.expand(n, -1)[:, :, None])[..., 0] + c2  # (n, L)
        p = self.p.flatten(1)  # (O, L)
        kernel = torch.matmul(p, torch.matmul(gain * a1[None, None, :], q))  # (n, O, I)
        w0 = self.weight.flatten(1)
        kernel = kernel + (w0 if lam is None else lam[:, :, None] * w0)
        bias = v @ p.t()
        if self.bias is not None:
            bias = bias + (self.bias if lam is None else lam * self.bias)
        return pointwise_per_sample(x, kernel, bias)

    @staticmethod
    def _batch_affine(
        bn: nn.modules.batchnorm._BatchNorm, mean: Tensor, var: Tensor, count: int
    ) -> tuple[Tensor, Tensor]:
        """A training-mode BN as y = a·x + c from batch statistics; updates its running statistics like BatchNorm."""
        if bn.training and bn.track_running_stats and bn.running_mean is not None and bn.running_var is not None:
            with torch.no_grad():
                assert bn.num_batches_tracked is not None
                bn.num_batches_tracked.add_(1)
                # momentum=None: cumulative average, factor 1/n as a tensor (no host sync, no graph break)
                dt = bn.running_mean.dtype  # (float32 buffers under bf16 autocast)
                f: Tensor | float = bn.num_batches_tracked.to(dt).reciprocal() if bn.momentum is None else bn.momentum
                unbiased = var.detach().to(dt) * (count / max(count - 1, 1))
                bn.running_mean.copy_(torch.lerp(bn.running_mean, mean.detach().to(dt), f))
                bn.running_var.copy_(torch.lerp(bn.running_var, unbiased, f))
        return bn_affine(bn, mean, var)

    # ------------------------------------------------------------------------------------------------------------------
    def branch_madds(self) -> int:
        """MAdds of the dynamic branch (its Linears) for one sample."""
        return sum(m.in_features * m.out_features for m in self.branch.modules() if isinstance(m, nn.Linear))

    def madds(self, inputs: tuple[Tensor, ...], output: Tensor, convention: Any) -> int:
        """MAdds for one sample (static W0 at every output pixel and the branch in both conventions).

        per_pixel (the released feature-wise computation): Q, Φ and P at every output pixel, Σ_b (L_b·I_b + L_b² +
        O_b·L_b)·H'W'. per_sample (kernel synthesis): Λ·W0 (O·I·k²) and ⊕_b P_b Φ_b Q_bᵀ once per sample, in the cheaper
        association order, Σ_b (min(L_b²·I_b, O_b·L_b²) + O_b·L_b·I_b); the synthesised 1×1 kernel is added to W0's
        centre tap, so its per-pixel cost is already W0's."""
        h, w = output.shape[-2:]
        pixels = h * w
        total = self.out_channels * self.in_channels * self.kernel_size**2 * pixels + self.branch_madds()
        per_sample = dynamic_per_sample(convention)
        if per_sample and self.use_lambda and self.use_residual:
            total += self.out_channels * self.in_channels * self.kernel_size**2
        if not self.use_residual:
            return total
        nb, lb = self.blocks, self.block_latent
        ib, ob = self.in_channels // nb, self.out_channels // nb
        if per_sample:
            return total + nb * (min(lb * lb * ib, ob * lb * lb) + ob * lb * ib)
        return total + nb * low_rank_madds(out_channels=ob, in_channels=ib, rank=lb, out_hw=(h, w), mode="featurewise")

    # ------------------------------------------------------------------------------------------------------------------
    def reparameterize(self, bn: nn.BatchNorm2d | None = None, form: ApplyMode | None = None) -> nn.Module:
        """The explicit fast inference form of this layer (eval statistics), optionally with a following eval-mode
        BatchNorm2d folded in: a :class:`dcd.layers.fast.DCDInference` (standard Linear/Conv2d modules).

        ``form``: "featurewise" or "synthesis" (1×1 layers without padding only); default: the form chosen by
        :func:`dcd.reparameterize` from an example input, else feature-wise."""
        from dcd.layers.fast import DCDInference

        return DCDInference.from_layer(self, bn=bn, form=form or getattr(self, "fast_form", None) or "featurewise")
