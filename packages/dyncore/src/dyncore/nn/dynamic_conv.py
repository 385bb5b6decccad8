"""Two ways to apply a dynamic kernel W(x) = Λ(x)·W0 + ΔW(x), with equal outputs and gradients.

* **feature-wise**: run the static conv and the dynamic parts on the features and add the results
  (Λ ⊙ (W0∗x) + Σ_k π_k (W_k∗x), or P·Φ(x)·(Q∗x) for a low-rank residual). Cost grows with H·W for every term.
* **kernel synthesis**: build one kernel per sample (W0 scaled + Σ_k π_k W_k, or + P Φ(x) Qᵀ), then run a single
  grouped conv over the batch with ``groups·B`` groups (the CondConv trick). The dynamic part is paid once per sample
  instead of once per pixel, but a grouped conv over B kernels is slower per MAdd on most back-ends.

Which one is cheaper depends on batch size and shape: :func:`expert_mixture_madds` / :func:`low_rank_madds` give the
MAdds of each form and :func:`fastest_mode` measures them on an example, so a layer can choose explicitly.

Dynamic kernels may be smaller than the static one (a 1×1 residual on a 3×3 conv, DRT and DCD's "channel fusion
alone"): in synthesis they are placed on the centre tap (:func:`center_tap`); feature-wise they run with the padding
that keeps the output grid identical.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from typing import Literal, get_args

import torch
import torch.nn.functional as F
from torch import Tensor

from dyncore.nn.functional import check_rank

__all__ = [
    "ApplyMode",
    "center_tap",
    "check_mode",
    "conv2d_per_sample",
    "expert_mixture_conv2d",
    "expert_mixture_madds",
    "fastest_mode",
    "low_rank_conv2d",
    "low_rank_kernel",
    "low_rank_madds",
    "mix_experts",
]

ApplyMode = Literal["featurewise", "synthesis"]
APPLY_MODES: tuple[str, ...] = get_args(ApplyMode)

IntPair = int | tuple[int, int]


def _pair(v: IntPair) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else (int(v[0]), int(v[1]))


def check_mode(mode: str) -> ApplyMode:
    """Validate an application form name."""
    if mode not in APPLY_MODES:
        raise ValueError(f"unknown application mode {mode!r}; choose one of {APPLY_MODES}")
    return mode  # type: ignore[return-value]


def conv2d_per_sample(
    x: Tensor,
    weight: Tensor,
    bias: Tensor | None = None,
    *,
    stride: IntPair = 1,
    padding: IntPair = 0,
    dilation: IntPair = 1,
    groups: int = 1,
) -> Tensor:
    """Convolve every sample with its own kernel in one grouped conv (groups·B groups).

    Args:
        x: (B, C, H, W).
        weight: (B, O, C/groups, kh, kw), one kernel per sample.
        bias: optional (B, O).
    Returns:
        (B, O, H', W').
    """
    check_rank(x, (4,), "conv2d_per_sample(x)")
    check_rank(weight, (5,), "conv2d_per_sample(weight)")
    b, c, h, w = x.shape
    if weight.shape[0] != b:
        raise ValueError(f"conv2d_per_sample: {weight.shape[0]} kernels for a batch of {b}")
    if c % groups or weight.shape[2] * groups != c:
        raise ValueError(f"conv2d_per_sample: kernel expects {weight.shape[2]}×{groups} input channels, input has {c}")
    out_channels = weight.shape[1]
    y = F.conv2d(
        x.reshape(1, b * c, h, w),
        weight.reshape(b * out_channels, *weight.shape[2:]),
        None if bias is None else bias.reshape(b * out_channels),
        stride=stride,
        padding=padding,
        dilation=dilation,
        groups=groups * b,
    )
    return y.reshape(b, out_channels, *y.shape[2:])


def pointwise_per_sample(x: Tensor, weight: Tensor, bias: Tensor | None = None, *, stride: int = 1) -> Tensor:
    """A 1×1 convolution with one kernel per sample as ONE batched GEMM, y_b = W_b · x_b (+ bias_b).

    On CPU this is much faster than a per-sample grouped conv (:func:`conv2d_per_sample`) forward and backward.

    Args:
        x: (B, I, H, W).
        weight: (B, O, I).
        bias: optional (B, O) or (O,).
        stride: subsampling of x (the pixels a strided 1×1 conv reads).
    Returns:
        (B, O, ⌈H/stride⌉, ⌈W/stride⌉).
    """
    check_rank(x, (4,), "pointwise_per_sample(x)")
    check_rank(weight, (3,), "pointwise_per_sample(weight)")
    if weight.shape[0] != x.shape[0] or weight.shape[2] != x.shape[1]:
        raise ValueError(
            f"pointwise_per_sample: kernels {tuple(weight.shape)} do not fit an input of shape {tuple(x.shape)}"
        )
    if stride > 1:
        x = x[:, :, ::stride, ::stride]
    b, i, h, w = x.shape
    xf = x.reshape(b, i, h * w)
    if bias is None:
        y = torch.bmm(weight, xf)
    else:
        y = torch.baddbmm((bias if bias.dim() == 2 else bias.expand(b, -1))[:, :, None], weight, xf)
    return y.reshape(b, weight.shape[1], h, w)


def mix_experts(experts: Tensor, coeffs: Tensor) -> Tensor:
    """Per-sample kernels Σ_k π_k(x) W_k.

    Args:
        experts: (K, O, I, kh, kw).
        coeffs: (B, K).
    Returns:
        (B, O, I, kh, kw).
    """
    check_rank(experts, (5,), "mix_experts(experts)")
    check_rank(coeffs, (2,), "mix_experts(coeffs)")
    if coeffs.shape[1] != experts.shape[0]:
        raise ValueError(f"mix_experts: {coeffs.shape[1]} coefficients for {experts.shape[0]} experts")
    return (coeffs @ experts.flatten(1)).reshape(coeffs.shape[0], *experts.shape[1:])


def center_tap(kernel: Tensor, size: IntPair) -> Tensor:
    """Zero-pad a (..., kh, kw) kernel to (..., size) around its centre (a 1×1 kernel becomes a k×k centre tap)."""
    th, tw = _pair(size)
    kh, kw = kernel.shape[-2:]
    if kh > th or kw > tw or (th - kh) % 2 or (tw - kw) % 2:
        raise ValueError(f"center_tap: cannot centre a {kh}×{kw} kernel in {th}×{tw}")
    if (kh, kw) == (th, tw):
        return kernel
    ph, pw = (th - kh) // 2, (tw - kw) // 2
    return F.pad(kernel, (pw, pw, ph, ph))


def _inner_padding(
    padding: IntPair, dilation: IntPair, outer: tuple[int, int], inner: tuple[int, int]
) -> tuple[int, int]:
    """Padding that gives a smaller centred kernel the output grid of the outer kernel."""
    p, d = _pair(padding), _pair(dilation)
    res = tuple(p[i] - d[i] * (outer[i] - inner[i]) // 2 for i in range(2))
    if min(res) < 0:
        raise ValueError(f"a {inner} kernel cannot reproduce the output grid of a {outer} kernel with padding {p}")
    return res[0], res[1]


def _scaled_static(static_weight: Tensor | None, static_scale: Tensor | None, batch: int) -> Tensor | None:
    """Per-sample copies of W0, scaled per output channel by Λ(x) when given: (B, O, I, kh, kw)."""
    if static_weight is None:
        return None
    w0 = static_weight.unsqueeze(0)
    if static_scale is None:
        return w0.expand(batch, *static_weight.shape).clone()
    return static_scale[:, :, None, None, None] * w0


def _add_centred(kernel: Tensor | None, dynamic: Tensor, outer: tuple[int, int]) -> Tensor:
    """kernel + dynamic; a smaller dynamic kernel is added in place on the centre taps (no zero-padded copy)."""
    if kernel is None:
        return center_tap(dynamic, outer)
    dh, dw = dynamic.shape[-2:]
    if (dh, dw) == outer:
        return kernel + dynamic
    if dh > outer[0] or dw > outer[1] or (outer[0] - dh) % 2 or (outer[1] - dw) % 2:
        raise ValueError(f"cannot centre a {dh}×{dw} dynamic kernel in a {outer[0]}×{outer[1]} static kernel")
    ph, pw = (outer[0] - dh) // 2, (outer[1] - dw) // 2
    kernel[..., ph : ph + dh, pw : pw + dw] += dynamic
    return kernel


def _scale(y: Tensor, scale: Tensor | None) -> Tensor:
    return y if scale is None else y * scale[:, :, None, None]


def expert_mixture_conv2d(
    x: Tensor,
    experts: Tensor,
    coeffs: Tensor,
    *,
    static_weight: Tensor | None = None,
    static_scale: Tensor | None = None,
    bias: Tensor | None = None,
    stride: IntPair = 1,
    padding: IntPair = 0,
    dilation: IntPair = 1,
    groups: int = 1,
    mode: ApplyMode = "synthesis",
) -> Tensor:
    """y = (Λ(x)·W0 + Σ_k π_k(x) W_k) ∗ x + b  (Eq. 3.1 / 6.2 / 6.5).

    Args:
        x: (B, C, H, W).
        experts: (K, O, C/groups, ke_h, ke_w); may be smaller than W0 (centred, see module docstring).
        coeffs: π, (B, K).
        static_weight: optional W0, (O, C/groups, kh, kw).
        static_scale: optional Λ, (B, O), scaling W0's output channels.
        bias: optional (O,) or (B, O).
        mode: "featurewise" or "synthesis" (equal results).
    Returns:
        (B, O, H', W').
    """
    mode = check_mode(mode)
    check_rank(x, (4,), "expert_mixture_conv2d(x)")
    batch = x.shape[0]
    if experts.dim() != 5 or experts.shape[0] == 0:
        raise ValueError(
            f"expert_mixture_conv2d: experts must be (K ≥ 1, O, C/groups, kh, kw), got {tuple(experts.shape)}"
        )
    if coeffs.shape != (batch, experts.shape[0]):
        raise ValueError(
            f"expert_mixture_conv2d: coeffs must be (B={batch}, K={experts.shape[0]}), got {tuple(coeffs.shape)}"
        )
    if static_scale is not None and static_weight is None:
        raise ValueError("expert_mixture_conv2d: static_scale (Λ) needs a static_weight (W0)")
    outer = _pair(static_weight.shape[-2:] if static_weight is not None else experts.shape[-2:])  # type: ignore[arg-type]
    bias_b = None if bias is None else (bias.expand(batch, -1) if bias.dim() == 1 else bias)
    if mode == "synthesis":
        kernel = _add_centred(_scaled_static(static_weight, static_scale, batch), mix_experts(experts, coeffs), outer)
        return conv2d_per_sample(x, kernel, bias_b, stride=stride, padding=padding, dilation=dilation, groups=groups)
    k, out_channels = experts.shape[:2]
    if out_channels % groups:
        raise ValueError(f"expert_mixture_conv2d: {out_channels} output channels not divisible by groups={groups}")
    # Stack the K experts along output channels, keeping each group's outputs contiguous: (g, K, O/g, ...).
    stacked = experts.reshape(k, groups, out_channels // groups, *experts.shape[2:]).transpose(0, 1)
    inner_pad = _inner_padding(padding, dilation, outer, _pair(experts.shape[-2:]))  # type: ignore[arg-type]
    y_k = F.conv2d(x, stacked.reshape(k * out_channels, *experts.shape[2:]), None, stride, inner_pad, dilation, groups)
    hw = y_k.shape[2:]
    y_k = y_k.reshape(batch, groups, k, out_channels // groups, *hw)
    y = torch.einsum("bgkohw,bk->bgohw", y_k, coeffs).reshape(batch, out_channels, *hw)
    if static_weight is not None:
        y = y + _scale(F.conv2d(x, static_weight, None, stride, padding, dilation, groups), static_scale)
    return y if bias_b is None else y + bias_b[:, :, None, None]


def low_rank_kernel(p: Tensor, phi: Tensor, q: Tensor) -> Tensor:
    """Per-sample low-rank kernel P·Φ(x)·Qᵀ (Eq. 3.6's dynamic residual).

    Args:
        p: P, (O, L) — expansion from the latent space.
        phi: Φ(x), (B, L, L) — dynamic channel fusion.
        q: Qᵀ as applied to x, (L, I) — compression to the latent space.
    Returns:
        (B, O, I).
    """
    check_rank(phi, (3,), "low_rank_kernel(phi)")
    if p.shape[1] != phi.shape[1] or phi.shape[2] != q.shape[0]:
        raise ValueError(
            f"low_rank_kernel: shapes P {tuple(p.shape)}, Φ {tuple(phi.shape)}, Qᵀ {tuple(q.shape)} do not chain"
        )
    return p @ (phi @ q)


def low_rank_conv2d(
    x: Tensor,
    p: Tensor,
    phi: Tensor,
    q: Tensor,
    *,
    static_weight: Tensor | None = None,
    static_scale: Tensor | None = None,
    bias: Tensor | None = None,
    stride: IntPair = 1,
    padding: IntPair = 0,
    dilation: IntPair = 1,
    mode: ApplyMode = "synthesis",
) -> Tensor:
    """y = (Λ(x)·W0 + P·Φ(x)·Qᵀ) ∗ x + b with a 1×1 low-rank residual (Eq. 3.6; on a k×k W0: channel fusion alone).

    Args:
        x: (B, I, H, W).
        p, phi, q: P (O, L), Φ(x) (B, L, L), Qᵀ (L, I); the residual is a 1×1 conv (centre tap of W0).
        static_weight: optional W0 (O, I, kh, kw) (ungrouped).
        static_scale: optional Λ(x), (B, O).
        bias: optional (O,) or (B, O).
    Returns:
        (B, O, H', W').
    """
    mode = check_mode(mode)
    check_rank(x, (4,), "low_rank_conv2d(x)")
    if q.shape[1] != x.shape[1]:
        raise ValueError(f"low_rank_conv2d: Qᵀ expects {q.shape[1]} input channels, input has {x.shape[1]}")
    if static_scale is not None and static_weight is None:
        raise ValueError("low_rank_conv2d: static_scale (Λ) needs a static_weight (W0)")
    batch = x.shape[0]
    outer = _pair(static_weight.shape[-2:] if static_weight is not None else (1, 1))  # type: ignore[arg-type]
    bias_b = None if bias is None else (bias.expand(batch, -1) if bias.dim() == 1 else bias)
    if mode == "synthesis":
        dynamic = low_rank_kernel(p, phi, q)[..., None, None]
        kernel = _add_centred(_scaled_static(static_weight, static_scale, batch), dynamic, outer)
        return conv2d_per_sample(x, kernel, bias_b, stride=stride, padding=padding, dilation=dilation)
    inner_pad = _inner_padding(padding, dilation, outer, (1, 1))
    z = F.conv2d(x, q[:, :, None, None], None, stride, inner_pad, dilation)  # (B, L, H', W')
    z = torch.bmm(phi, z.flatten(2)).reshape(z.shape)
    y = F.conv2d(z, p[:, :, None, None])
    if static_weight is not None:
        y = y + _scale(F.conv2d(x, static_weight, None, stride, padding, dilation), static_scale)
    return y if bias_b is None else y + bias_b[:, :, None, None]


def expert_mixture_madds(
    *, experts: int, out_channels: int, in_per_group: int, kernel: IntPair, out_hw: IntPair, mode: ApplyMode
) -> int:
    """MAdds for one sample of the dynamic part Σ_k π_k W_k ∗ x (the static conv and the routing branch excluded).

    feature-wise: K convolutions plus the weighted sum per pixel; synthesis: mixing K kernels once, then one conv."""
    kh, kw = _pair(kernel)
    oh, ow = _pair(out_hw)
    kernel_size = out_channels * in_per_group * kh * kw
    if check_mode(mode) == "featurewise":
        return experts * kernel_size * oh * ow + experts * out_channels * oh * ow
    return experts * kernel_size + kernel_size * oh * ow


def low_rank_madds(*, out_channels: int, in_channels: int, rank: int, out_hw: IntPair, mode: ApplyMode) -> int:
    """MAdds for one sample of the low-rank residual P·Φ(x)·Qᵀ ∗ x (1×1), static conv and branch excluded.

    feature-wise: (L·I + L² + O·L) per output pixel; synthesis: the kernel P(ΦQᵀ) once (L²·I + O·L·I), then O·I per
    pixel (if W0 exists the synthesised kernel is folded into it and the per-pixel term is already paid by W0)."""
    oh, ow = _pair(out_hw)
    pixels = oh * ow
    if check_mode(mode) == "featurewise":
        return (rank * in_channels + rank * rank + out_channels * rank) * pixels
    return rank * rank * in_channels + out_channels * rank * in_channels + out_channels * in_channels * pixels


def fastest_mode(
    run: Callable[[ApplyMode], object],
    modes: Sequence[ApplyMode] = ("featurewise", "synthesis"),
    *,
    repeats: int = 5,
) -> ApplyMode:
    """Measure ``run(mode)`` for each mode (interleaved, median of ``repeats``) and return the fastest mode."""
    if not modes:
        raise ValueError("fastest_mode: no modes to choose from")
    times: dict[ApplyMode, list[float]] = {m: [] for m in modes}
    with torch.inference_mode():
        for m in modes:
            run(m)  # warm-up
        for _ in range(repeats):
            for m in modes:
                t0 = time.perf_counter()
                run(m)
                times[m].append(time.perf_counter() - t0)
    return min(modes, key=lambda m: statistics.median(times[m]))
