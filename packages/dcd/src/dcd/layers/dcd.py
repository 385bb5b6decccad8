"""The DCD layer: W(x) = Λ(x)·W0 + ⊕_b P_b Φ_b(x) Q_bᵀ  (Eq. 3.6; Eq. 3.7 for B > 1 blocks).

On a k×k static kernel the low-rank residual is a 1×1 conv on the centre tap ("channel fusion alone", Sec. 3.4.3).
Forms:

* **stabilised** (default, the released implementation): the kernel is never built; with z = BN2d(Q ∗ x)
  ``y = Λ(x) ⊙ (W0 ∗ x + b) + P( BN1d(Φ(x)·z) + z )`` — effectively P(Φ + I)Qᵀ with BNs "for stability".
* **plain**: ``y = (Λ(x)·W0 + P Φ(x) Qᵀ) ∗ x + Λ(x) ⊙ b``, exactly Eq. 3.6.

Application (``mode``): "featurewise" runs every term on the features (per pixel); "synthesis" builds one kernel per
sample through :func:`dyncore.nn.low_rank_conv2d`. In eval mode the BNs are affine, so the stabilised form folds into
Φ_eff = diag(a₂)·Φ·diag(a₁) + diag(a₁) and a per-sample bias, and both forms give the same output. In training the
stabilised form needs the batch statistics of the latent features, so it always runs feature-wise.

Inference (eval mode, no autograd): everything that does not depend on x is folded once into an
:class:`InferencePlan` — the BNs of the stabilised form, hsig2's affine part, the per-sample bias P·vec(x) (one more
head of the branch, as it is linear in the branch's hidden features), a following BN folded by :meth:`fold_bn` — so a
layer costs the pooling, three small Linears and the convolution(s). The plan is rebuilt whenever a parameter or
buffer changes (tensor version counters), so it is never stale.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dcd.rules import check_latent, paper_latent, scale_latent, squeeze_width
from dyncore.nn import (
    ApplyMode,
    CoefficientBranch,
    FoldedForward,
    check_channels,
    check_mode,
    check_rank,
    conv2d_per_sample,
    low_rank_conv2d,
    low_rank_madds,
    pointwise_per_sample,
)

__all__ = ["VARIANTS", "DynamicConvDecomposition", "InferencePlan", "bn_affine", "dynamic_per_sample"]

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


def _no_grad(*tensors: Tensor) -> bool:
    """True when no autograd graph is being built through ``tensors`` (in-place accumulation is safe)."""
    return not torch.is_grad_enabled() or not any(t.requires_grad for t in tensors)


def _block_diag(blocks: Tensor) -> Tensor:
    """(..., nb, r, c) → (..., nb·r, nb·c) block-diagonal."""
    *lead, nb, r, c = blocks.shape
    eye = torch.eye(nb, dtype=blocks.dtype, device=blocks.device)
    out = blocks.unsqueeze(-2) * eye[:, None, :, None]  # (..., nb, r, nb, c)
    return out.reshape(*lead, nb * r, nb * c)


@dataclass(frozen=True)
class InferencePlan:
    """x-independent constants of a DCD layer's eval/no-grad forward (see the module docstring).

    The branch becomes ``h = FC(pool(x))``, ``h = h ⊙ clamp(G'h + 1, 0, 2)`` (hsig2 with its 1/3 folded into G') and
    one Linear to ``[Λ logits' | vec Φ_eff | per-sample bias]`` (rows ``splits``), with Λ = clamp(·, 0, 2).

    Attributes:
        fc_w, fc_b: first branch FC, (S, F) and (S,) or None.
        gate_w, gate_b: the gate FC with hsig2's affine part folded in, or None when the branch has no gate.
        head_w, head_b: fused heads, (n, S) and (n,).
        splits: sizes of the Λ, Φ_eff and bias blocks of the fused head output (0 when absent).
        w0: W0 (C_out, C_in, k, k); w0q: cat(W0, Q) for a 1×1 layer whose W0 and Q read the same pixels, else None.
        p, q: P (C_out, L) and Qᵀ (L, C_in), or None without the low-rank residual.
    """

    fc_w: Tensor
    fc_b: Tensor | None
    gate_w: Tensor | None
    gate_b: Tensor | None
    head_w: Tensor
    head_b: Tensor
    splits: tuple[int, int, int]
    w0: Tensor
    w0q: Tensor | None
    p: Tensor | None
    q: Tensor | None


class DynamicConvDecomposition(FoldedForward):
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
        mode: "featurewise", "synthesis" or "auto" (default): in training the feature-wise form (the stabilised BNs
            need batch statistics); in eval, per call, kernel synthesis for a single sample when it costs fewer MAdds
            than the feature-wise residual (large maps, few channels), else feature-wise — see :meth:`apply_mode`.

    Shapes: x (B, C_in, H, W) → (B, C_out, H', W').
    """

    shift: Tensor | None

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
        self.register_buffer("shift", None)
        self._modes: dict[tuple[str, int, int, int], ApplyMode] = {}  # (mode, batch, H, W) → resolved form
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
        """The application form for a batch of ``batch`` samples with output grid ``out_hw``.

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
        """Λ(x) (B, C_out) or None, and block-diagonal Φ(x) (B, L, L) or None."""
        out = self.branch(x)
        assert isinstance(out, dict)
        lam = out.get("scale")
        phi = out.get("phi")
        if phi is not None:
            phi = phi.reshape(x.shape[0], self.blocks, self.block_latent, self.block_latent)
            phi = phi[:, 0] if self.blocks == 1 else _block_diag(phi)
        return lam, phi

    def _full_pq(self) -> tuple[Tensor, Tensor]:
        """P (C_out, L) and Qᵀ (L, C_in), block-diagonal when B > 1."""
        p = self.p.flatten(1)
        q = self.q.flatten(1)
        if self.blocks > 1:
            p = _block_diag(p.reshape(self.blocks, self.out_channels // self.blocks, self.block_latent))
            q = _block_diag(q.reshape(self.blocks, self.block_latent, self.in_channels // self.blocks))
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
        if self.use_folded() and self.blocks == 1:
            check_rank(x, (4,), type(self).__name__)
            check_channels(x, self.in_channels, type(self).__name__)
            return self._inference_forward(x)
        y = self._forward(x)
        if self.shift is None:
            return y
        return y.add_(self.shift[None, :, None, None]) if _no_grad(x, y) else y + self.shift[None, :, None, None]

    def _forward(self, x: Tensor) -> Tensor:
        check_rank(x, (4,), type(self).__name__)
        check_channels(x, self.in_channels, type(self).__name__)
        lam, phi = self.coefficients(x)
        if phi is None:
            return self._static(x, lam)
        if self.training and self.stabilised:
            if self._train_by_synthesis(x):
                return self._forward_train_synthesis(x, lam, phi)
            return self.forward_released(x, lam, phi)
        mode = "featurewise" if self.training else self.apply_mode(x.shape[0], self._out_hw(x))
        if mode == "featurewise" and self.blocks > 1:
            return self.forward_released(x, lam, phi)
        phi_eff, bias = self.effective(lam, phi)
        p, q = self._full_pq()
        if mode == "featurewise" and _no_grad(x, phi_eff):
            return self._featurewise_inference(x, lam, phi_eff, bias, p, q)
        return low_rank_conv2d(
            x, p, phi_eff, q, static_weight=self.weight, static_scale=lam, bias=bias,
            stride=self.stride, padding=self.padding, dilation=self.dilation, mode=mode,
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
                f = 1.0 / float(bn.num_batches_tracked) if bn.momentum is None else bn.momentum
                bn.running_mean.mul_(1 - f).add_(mean.detach(), alpha=f)
                bn.running_var.mul_(1 - f).add_(var.detach() * (count / max(count - 1, 1)), alpha=f)
        return bn_affine(bn, mean, var)

    def _featurewise_inference(
        self, x: Tensor, lam: Tensor | None, phi_eff: Tensor, bias: Tensor | None, p: Tensor, q: Tensor
    ) -> Tensor:
        """Folded feature-wise form without autograd: the same sums as :func:`low_rank_conv2d` (feature-wise), but
        accumulated in place into W0's output (no full-size temporaries: at batch 1 on large maps the allocations,
        not the arithmetic, dominate)."""
        y = F.conv2d(x, self.weight, None, self.stride, self.padding, self.dilation)
        if lam is not None:
            y.mul_(lam[:, :, None, None])
        z = F.conv2d(x, q[:, :, None, None], None, self.stride, self.inner_padding, self.dilation)
        u = torch.bmm(phi_eff, z.flatten(2))  # (B, L, H'W')
        y.flatten(2).baddbmm_(p.expand(x.shape[0], -1, -1), u)
        return y if bias is None else y.add_(bias[:, :, None, None])

    # ------------------------------------------------------------------------------------------------------------------
    def inference_plan(self) -> InferencePlan:
        """The folded constants of the no-grad eval forward (:class:`dyncore.nn.FoldedForward`: rebuilt when any
        parameter or buffer has changed in place, been replaced, or moved)."""
        plan: InferencePlan = self.folded()
        return plan

    def build_folded(self) -> InferencePlan:
        br = self.branch
        if br.fc is None:
            raise RuntimeError(f"{type(self).__name__}: the dynamic branch has no hidden layer")
        w0 = self.weight.detach().clone()
        dt, dev = w0.dtype, w0.device
        hidden = br.fc.out_features
        gate_w = gate_b = None
        if br.gate is not None:  # hsig2(t) = clamp(t/3 + 1, 0, 2)
            gate_w = br.gate.weight / 3.0
            gate_b = (0.0 if br.gate.bias is None else br.gate.bias / 3.0) + torch.ones(hidden, dtype=dt, device=dev)
        rows_w: list[Tensor] = []
        rows_b: list[Tensor] = []
        n_lam = n_phi = 0
        if self.use_lambda:
            head = br.heads["scale"]
            rows_w.append(head.weight / 3.0)
            rows_b.append(
                (0.0 if head.bias is None else head.bias / 3.0) + torch.ones(self.out_channels, dtype=dt, device=dev)
            )
            n_lam = self.out_channels
        bias_w = torch.zeros(self.out_channels, hidden, dtype=dt, device=dev)
        bias_b = (
            torch.zeros(self.out_channels, dtype=dt, device=dev) if self.shift is None else self.shift.detach().clone()
        )
        if self.bias is not None and not self.use_lambda:
            bias_b = bias_b + self.bias
        p = q = None
        if self.use_residual:
            lat = self.latent
            head = br.heads["phi"]
            wp = head.weight.reshape(lat, lat, hidden)
            bp = torch.zeros(lat, lat, dtype=dt, device=dev) if head.bias is None else head.bias.reshape(lat, lat)
            p, q = self.p.detach().flatten(1).clone(), self.q.detach().flatten(1).clone()
            if self.stabilised:  # Φ_eff = diag(a₂)Φdiag(a₁) + diag(a₁); bias P(a₂⊙(Φc₁) + c₂ + c₁) (see effective)
                a1, c1 = bn_affine(self.bn_q)
                a2, c2 = bn_affine(self.bn_phi)
                scale = a2[:, None] * a1[None, :]
                rows_w.append((wp * scale[:, :, None]).reshape(lat * lat, hidden))
                rows_b.append((bp * scale + torch.diag(a1)).reshape(-1))
                m_w = (wp * c1[None, :, None]).sum(1)  # Φ(x)c₁ = m_w·h + m_b
                m_b = (bp * c1).sum(1)
                bias_w = p @ (a2[:, None] * m_w)
                bias_b = bias_b + p @ (a2 * m_b + c2 + c1)
            else:
                rows_w.append(wp.reshape(lat * lat, hidden))
                rows_b.append(bp.reshape(-1))
            n_phi = lat * lat
        rows_w.append(bias_w)
        rows_b.append(bias_b)
        w0q = None
        if self.use_residual and self.kernel_size == 1 and self.inner_padding == self.padding:
            w0q = torch.cat([w0, self.q.detach()]).contiguous()
        fc_b = None if br.fc.bias is None else br.fc.bias.detach().clone()
        return InferencePlan(
            fc_w=br.fc.weight.detach().clone(), fc_b=fc_b, gate_w=gate_w, gate_b=gate_b,
            head_w=torch.cat(rows_w).contiguous(), head_b=torch.cat(rows_b).contiguous(),
            splits=(n_lam, n_phi, self.out_channels), w0=w0, w0q=w0q, p=p, q=q,
        )  # fmt: skip

    def _inference_forward(self, x: Tensor) -> Tensor:
        """Eval/no-grad forward through :meth:`inference_plan`; equals the stabilised/plain forms (tests)."""
        plan = self.inference_plan()
        n, _, h, w = x.shape
        if self.branch.pool == 1:
            pooled = x.mean((2, 3))
        elif h >= 2 and w >= 2:  # the 2×2 regions of dyncore's CoefficientBranch, without its checks
            pooled = F.avg_pool2d(x, ((h + 1) // 2, (w + 1) // 2), (h // 2, w // 2)).flatten(1)
        else:
            pooled = self.branch.pooled(x)
        hidden = F.linear(pooled, plan.fc_w, plan.fc_b)
        if plan.gate_w is not None:
            hidden = hidden * F.linear(hidden, plan.gate_w, plan.gate_b).clamp_(0.0, 2.0)
        elif self.branch.hidden_activation == "relu":
            hidden = hidden.relu_()
        coeffs = F.linear(hidden, plan.head_w, plan.head_b)
        n_lam, n_phi, _ = plan.splits
        lam = coeffs[:, :n_lam].clamp_(0.0, 2.0) if n_lam else None
        bias = coeffs[:, n_lam + n_phi :]
        if lam is not None and self.bias is not None:
            bias = torch.addcmul(bias, lam, self.bias)
        lat = self.latent
        phi = coeffs[:, n_lam : n_lam + n_phi].reshape(n, lat, lat) if n_phi else None
        form = self._modes.get((self.mode, n, h, w))
        if form is None:
            form = self._modes[(self.mode, n, h, w)] = self.apply_mode(n, self._out_hw(x))
        if form == "synthesis":
            return self._synthesis_inference(x, plan, lam, phi, bias)
        if plan.w0q is not None:
            y, z = F.conv2d(x, plan.w0q, None, self.stride, self.padding, self.dilation).split(
                [self.out_channels, lat], dim=1
            )
        else:
            y = F.conv2d(x, plan.w0, None, self.stride, self.padding, self.dilation)
            z = None
        if lam is not None:
            y.mul_(lam[:, :, None, None])
        if phi is not None:
            assert plan.p is not None and plan.q is not None
            if z is None:
                z = F.conv2d(x, plan.q[:, :, None, None], None, self.stride, self.inner_padding, self.dilation)
            if n == 1:  # y += P·(Φ_eff·z) as two plain GEMMs
                y.view(self.out_channels, -1).addmm_(plan.p, phi[0] @ z.reshape(lat, -1))
            else:
                y.flatten(2).baddbmm_(plan.p.expand(n, -1, -1), torch.bmm(phi, z.flatten(2)))
        return y.add_(bias[:, :, None, None])

    def _synthesis_inference(
        self, x: Tensor, plan: InferencePlan, lam: Tensor | None, phi: Tensor | None, bias: Tensor
    ) -> Tensor:
        """One kernel per sample, Λ·W0 + PΦ_effQᵀ on the centre tap; a single sample runs a plain conv."""
        n, k = x.shape[0], self.kernel_size
        c = k // 2
        if n == 1:
            w = plan.w0 if lam is None else plan.w0 * lam.reshape(-1, 1, 1, 1)
            if phi is not None:
                assert plan.p is not None and plan.q is not None
                pphi = plan.p @ phi[0]
                if k == 1:
                    w = torch.addmm(w.flatten(1), pphi, plan.q)
                    if self.stride == 1 and self.padding == 0:  # a 1×1 conv of one sample is one GEMM
                        y = torch.addmm(bias[0, :, None], w, x.reshape(x.shape[1], -1))
                        return y.reshape(1, self.out_channels, *x.shape[2:])
                    w = w[:, :, None, None]
                else:
                    w = w.clone() if lam is None else w
                    w[:, :, c, c] += pphi @ plan.q
            return F.conv2d(x, w, bias[0], self.stride, self.padding, self.dilation)
        if k == 1 and self.padding == 0:  # the batch of 1×1 kernels as one batched GEMM
            w2 = plan.w0.flatten(1)
            w = w2.expand(n, *w2.shape) if lam is None else lam[:, :, None] * w2
            if phi is not None:
                assert plan.p is not None and plan.q is not None
                w = w + torch.matmul(plan.p, phi) @ plan.q
            return pointwise_per_sample(x, w, bias, stride=self.stride)
        w = plan.w0.expand(n, *plan.w0.shape) if lam is None else plan.w0 * lam[:, :, None, None, None]
        if phi is not None:
            assert plan.p is not None and plan.q is not None
            w = w.clone() if lam is None else w
            w[:, :, :, c, c] += torch.matmul(plan.p, phi) @ plan.q
        return conv2d_per_sample(x, w, bias, stride=self.stride, padding=self.padding, dilation=self.dilation)

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
    @torch.no_grad()
    def fold_bn(self, bn: nn.BatchNorm2d) -> None:
        """Fold a following eval-mode BatchNorm2d into W0, b and P (inference form; replace the BN by Identity).

        s⊙(Λ⊙(W0∗x + b) + P(…)) + t = Λ⊙((s·W0)∗x + s·b) + (s·P)(…) + t, so t becomes a bias outside Λ."""
        s, t = bn_affine(bn)
        self.weight.mul_(s[:, None, None, None])
        if self.bias is not None:
            self.bias.mul_(s)
        if self.use_residual:
            self.p.mul_(s[:, None, None, None])
        # t must not be scaled by Λ: it goes to a Λ-free shift added after everything.
        self.shift = t.clone() if self.shift is None else s * self.shift + t
