"""Micro-Factorized convolutions (thesis Section 4.2, Figure 4.2).

* pointwise (Eq. 4.3): a C×C 1×1 conv ≈ P·Φ·Qᵀ = group conv C→C/R (G groups) → channel shuffle Φ → group conv
  C/R→C (G groups), with G = round(λ·√(C/R)). Connectivity E = C²/(R·G²): at G = √(C/R) every output reaches every
  input through exactly one path.
* depthwise: a k×k depthwise conv → k×1 then 1×k depthwise convs, BN after each, no activation between; the stride
  is split ((s, 1) on the k×1 conv, (1, s) on the 1×k conv). Channel multipliers (c1, c2) let it EXPAND channels.
* lite combination: the expanding factorised depthwise conv followed by one group conv that compresses.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dyncore.nn import channel_shuffle, fold_batchnorm

__all__ = [
    "ChannelShuffle",
    "ComposedFactorizedConv",
    "ConvBN",
    "GroupPointwiseConv2d",
    "LiteCombination",
    "MicroFactorizedDepthwise",
    "MicroFactorizedPointwise",
    "adaptive_groups",
    "composable",
    "fold_bn",
]


class ChannelShuffle(nn.Module):
    """shuf(g): view C channels as (g, C/g), transpose, flatten (:func:`dyncore.nn.channel_shuffle`).

    ``perm2(n)`` of the spec is ``ChannelShuffle(n)``. Shapes: (B, C, H, W) → (B, C, H, W).
    """

    def __init__(self, groups: int) -> None:
        super().__init__()
        if not isinstance(groups, int) or groups <= 0:
            raise ValueError(f"ChannelShuffle: groups must be a positive int, got {groups!r}")
        self.groups = groups

    def forward(self, x: Tensor) -> Tensor:
        if isinstance(x, torch.fx.Proxy):  # symbolic tracing: the same view/transpose without the shape checks
            b, c, h, w = x.shape
            return x.view(b, self.groups, c // self.groups, h, w).transpose(1, 2).reshape(b, c, h, w)
        return channel_shuffle(x, self.groups)

    def extra_repr(self) -> str:
        return f"groups={self.groups}"


class GroupPointwiseConv2d(nn.Conv2d):
    """A 1×1 group convolution computed as one batched matmul: (G, O/G, I/G) @ (B, G, I/G, H·W).

    Same parameters and state_dict as ``nn.Conv2d(I, O, 1, groups=G)``; on CPU PyTorch runs small-group 1×1 convs as
    one slow conv per group (forward and backward), the matmul form is 3–7× faster for MicroNet's shapes.
    Shapes: (B, I, H, W) → (B, O, H, W) (stride 1, no padding).
    """

    def __init__(self, in_channels: int, out_channels: int, *, groups: int, bias: bool = False) -> None:
        super().__init__(in_channels, out_channels, 1, groups=groups, bias=bias)

    def forward(self, x: Tensor) -> Tensor:
        if torch.onnx.is_in_onnx_export():
            return super().forward(x)  # a grouped Conv node: ONNX Runtime's own kernel is the fast one
        b, _, h, w = x.shape
        g = self.groups
        weight = self.weight.view(g, self.out_channels // g, self.in_channels // g)
        y = torch.matmul(weight, x.reshape(b, g, self.in_channels // g, h * w))
        if self.bias is not None:
            y = y + self.bias.view(1, g, self.out_channels // g, 1)
        return y.reshape(b, self.out_channels, h, w)


def fold_bn(layer: nn.Conv2d | nn.Linear, bn: nn.BatchNorm2d | nn.BatchNorm1d) -> nn.Conv2d | nn.Linear:
    """A copy of ``layer`` (same class: a :class:`GroupPointwiseConv2d` stays one) with the eval-mode ``bn`` that
    follows it folded in: :func:`dyncore.nn.fold_batchnorm`."""
    return fold_batchnorm(layer, bn)


class ComposedFactorizedConv(nn.Module):
    """Inference form of a (k_h×1) conv with bias b1 followed by a (1×k_w) depthwise conv with bias b2.

    conv2(conv1(x) + b1) + b2 = K ∗ x + B with K[o] = W1[o // c2] ⊗ W2[o] (c2 = C_out / C_mid, the depthwise
    multiplier), strides (s_h, s_w), paddings (p_h, p_w) and dilations (d_h, d_w) taken from the two convs (a dilated
    backbone, e.g. a segmentation encoder at output stride 16, composes too), and the groups of conv1. The bias
    B = conv2(b1) + b2 is constant over rows but not over the p_w border columns (conv2 zero-pads its input, and b1
    is not zero there), so it is a (1, C_out, 1, W') map, built once per input width. Exact (tests).

    Shapes: (B, C_in, H, W) → (B, C_out, H', W').
    """

    def __init__(self, first: nn.Conv2d, second: nn.Conv2d) -> None:
        super().__init__()
        if not composable(first, second):
            raise ValueError("ComposedFactorizedConv: expects a (k×1) conv followed by a (1×k) depthwise conv")
        c_mid, c_out = second.in_channels, second.out_channels
        kh, kw = first.kernel_size[0], second.kernel_size[1]
        mid_of_out = torch.arange(c_out) // (c_out // c_mid)
        w1 = first.weight.detach()[:, :, :, 0]  # (C_mid, C_in/g, kh)
        w2 = second.weight.detach()[:, 0, 0, :]  # (C_out, kw)
        self.register_buffer("weight", (w1[mid_of_out][:, :, :, None] * w2[:, None, None, :]).contiguous())
        b1 = first.bias.detach() if first.bias is not None else torch.zeros(c_mid)
        b2 = second.bias.detach() if second.bias is not None else torch.zeros(c_out)
        self.register_buffer("b1", b1.clone())
        self.register_buffer("b2", b2.clone())
        self.register_buffer("w2", second.weight.detach().clone())
        self.stride = (first.stride[0], second.stride[1])
        self.padding = (first.padding[0], second.padding[1])  # type: ignore[index]
        self.dilation = (first.dilation[0], second.dilation[1])
        self.groups = first.groups
        self.kernel_size = (kh, kw)
        self._bias_maps: dict[tuple[int, torch.dtype, torch.device], Tensor] = {}

    def _bias_map(self, width: int | Tensor) -> Tensor:
        b1 = self.b1.view(1, -1, 1, 1).expand(1, -1, 1, width)
        return F.conv2d(
            b1, self.w2, self.b2, (1, self.stride[1]), (0, self.padding[1]), (1, self.dilation[1]), self.b1.shape[0]
        )

    def bias_map(self, width: int) -> Tensor:
        """B = conv2(b1) + b2 for an input of ``width`` columns: (1, C_out, 1, W'), cached per width in eager mode."""
        key = (width, self.b1.dtype, self.b1.device)
        if key not in self._bias_maps:
            self._bias_maps[key] = self._bias_map(width)
        return self._bias_maps[key]

    def forward(self, x: Tensor) -> Tensor:
        y = F.conv2d(x, self.weight, None, self.stride, self.padding, self.dilation, self.groups)
        if _tracing(x):  # compilers and tracers see the (tiny) bias-map conv itself, not a Python-side cache
            return y + self._bias_map(x.shape[-1])
        return y + self.bias_map(x.shape[-1])


def _tracing(x: Tensor) -> bool:
    # torch.jit tracing (legacy ONNX), dynamo (torch.compile, torch.export, dynamo ONNX) or torch.fx; the cheap
    # checks only (≈0.2 µs: this runs in every eager call of the fast form)
    return torch.jit.is_tracing() or torch.compiler.is_compiling() or isinstance(x, torch.fx.Proxy)


def composable(first: nn.Module, second: nn.Module) -> bool:
    """Whether ``first`` (k×1 conv) and ``second`` (1×k depthwise conv) can be composed into one k×k conv."""
    if type(first) is not nn.Conv2d or type(second) is not nn.Conv2d:
        return False
    return (
        first.kernel_size[1] == 1
        and second.kernel_size[0] == 1
        and first.stride[1] == 1
        and second.stride[0] == 1
        and first.padding[1] == 0  # type: ignore[index]
        and second.padding[0] == 0  # type: ignore[index]
        and isinstance(first.padding, tuple)
        and second.groups == second.in_channels == first.out_channels
        and second.out_channels % second.in_channels == 0
        and first.padding_mode == second.padding_mode == "zeros"
    )


class ConvBN(nn.Sequential):
    """Conv2d (no bias) + BatchNorm2d. ``kernel``/``stride``/``padding`` may be (h, w) pairs.

    The forward always runs both modules; :meth:`reparameterize` returns the BN-folded conv (eval only)."""

    def reparameterize(self) -> nn.Module:
        """The conv with this BN's eval statistics folded in (:func:`dyncore.nn.fold_batchnorm`)."""
        return fold_bn(self[0], self[1])

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel: int | tuple[int, int] = 1,
        *,
        stride: int | tuple[int, int] = 1,
        padding: int | tuple[int, int] = 0,
        groups: int = 1,
    ) -> None:
        for name, value in (("in_channels", in_channels), ("out_channels", out_channels)):
            if value % groups:
                raise ValueError(f"ConvBN: {name}={value} is not divisible by groups={groups}")
        pointwise = kernel in (1, (1, 1)) and stride in (1, (1, 1)) and padding in (0, (0, 0))
        conv = (
            GroupPointwiseConv2d(in_channels, out_channels, groups=groups)
            if pointwise and groups > 1
            else nn.Conv2d(in_channels, out_channels, kernel, stride, padding, groups=groups, bias=False)
        )
        super().__init__(conv, nn.BatchNorm2d(out_channels))


def adaptive_groups(channels: int, reduction: int, lam: float = 1.0) -> int:
    """G = round(λ·√(C/R)) (Eq. 4.3 with the multiplier of Table 4.3b), at least 1."""
    if channels <= 0 or reduction <= 0:
        raise ValueError(f"adaptive_groups: channels and reduction must be positive, got C={channels}, R={reduction}")
    if lam <= 0:
        raise ValueError(f"adaptive_groups: λ must be positive, got {lam}")
    return max(1, round(lam * math.sqrt(channels / reduction)))


class MicroFactorizedPointwise(nn.Module):
    """Micro-Factorized pointwise convolution: group conv C_in→C_in/R (G groups) + BN → [activation] → shuffle(G)
    → group conv C_in/R→C_out (G groups) + BN.

    Args:
        in_channels: C.
        out_channels: output channels (default C).
        reduction: R, the bottleneck ratio.
        lam: λ in G = λ·√(C/R) (Table 4.3b); ignored when ``groups`` is given.
        groups: explicit G (Table 4.3a, fixed group number).
        activation: optional module between the two group convs (the A1 position of a Micro-Block).

    Shapes: (B, C, H, W) → (B, C_out, H, W).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int | None = None,
        *,
        reduction: int = 4,
        lam: float = 1.0,
        groups: int | None = None,
        activation: nn.Module | None = None,
    ) -> None:
        super().__init__()
        out_channels = in_channels if out_channels is None else out_channels
        if reduction <= 0 or in_channels % reduction:
            raise ValueError(
                f"MicroFactorizedPointwise: in_channels={in_channels} is not divisible by reduction R={reduction}"
            )
        mid = in_channels // reduction
        g = adaptive_groups(in_channels, reduction, lam) if groups is None else groups
        if g <= 0:
            raise ValueError(f"MicroFactorizedPointwise: groups must be positive, got {g}")
        if mid < g:
            raise ValueError(
                f"MicroFactorizedPointwise: R={reduction} leaves C/R={mid} channels for G={g} groups: empty groups"
            )
        for name, value in (("in_channels", in_channels), ("C/R", mid), ("out_channels", out_channels)):
            if value % g:
                raise ValueError(f"MicroFactorizedPointwise: {name}={value} is not divisible by groups G={g}")
        self.in_channels, self.out_channels, self.mid_channels, self.groups = in_channels, out_channels, mid, g
        self.compress = ConvBN(in_channels, mid, groups=g)
        self.activation = activation if activation is not None else nn.Identity()
        self.shuffle = ChannelShuffle(g)
        self.expand = ConvBN(mid, out_channels, groups=g)

    @property
    def connectivity(self) -> float:
        """E = C²/(R·G²): paths per output node (C_in·C_mid/(G²·…) for the general C_in ≠ C_out case)."""
        return self.in_channels * self.mid_channels / self.groups**2

    def forward(self, x: Tensor) -> Tensor:
        return self.expand(self.shuffle(self.activation(self.compress(x))))


class MicroFactorizedDepthwise(nn.Sequential):
    """Micro-Factorized depthwise convolution: k×1 depthwise (C→C·c1, stride (s, 1)) + BN → 1×k depthwise
    (→C·c1·c2, stride (1, s)) + BN. No activation between the two.

    :meth:`reparameterize` returns both, BNs folded, as ONE k×k conv (:class:`ComposedFactorizedConv`), or as the two
    BN-folded convs when ``compose`` is False (TorchScript's MKLDNN path and ONNX Runtime run those faster).

    Shapes: (B, C, H, W) → (B, C·c1·c2, ⌈H/s⌉, ⌈W/s⌉).
    """

    def __init__(
        self, channels: int, kernel_size: int, *, stride: int = 1, multipliers: tuple[int, int] = (1, 1)
    ) -> None:
        if kernel_size % 2 == 0 or kernel_size <= 0:
            raise ValueError(f"MicroFactorizedDepthwise: kernel_size must be odd and positive, got {kernel_size}")
        if stride not in (1, 2):
            raise ValueError(f"MicroFactorizedDepthwise: stride must be 1 or 2, got {stride}")
        c1, c2 = multipliers
        if c1 <= 0 or c2 <= 0:
            raise ValueError(f"MicroFactorizedDepthwise: multipliers must be positive, got {multipliers}")
        pad = kernel_size // 2
        super().__init__(
            ConvBN(channels, channels * c1, (kernel_size, 1), stride=(stride, 1), padding=(pad, 0), groups=channels),
            ConvBN(
                channels * c1,
                channels * c1 * c2,
                (1, kernel_size),
                stride=(1, stride),
                padding=(0, pad),
                groups=channels * c1,
            ),
        )
        self.in_channels, self.out_channels = channels, channels * c1 * c2

    compose: bool = True  # reparameterize() into one k×k conv (True) or two BN-folded 1-D convs (False)

    def reparameterize(self) -> nn.Module:
        """Eval-only equivalent: the composed k×k conv (or the two BN-folded convs, see ``compose``)."""
        first, second = (fold_bn(pair[0], pair[1]) for pair in self)  # type: ignore[index]
        if self.compose and composable(first, second):
            return ComposedFactorizedConv(first, second)  # type: ignore[arg-type]
        return nn.Sequential(first, second)


class LiteCombination(nn.Module):
    """Lite combination (Figure 4.2, bottom): an expanding Micro-Factorized depthwise conv (C→C·c1·c2) →
    [activation] → shuffle(C) → one group conv compressing to ``out_channels`` with ``groups`` groups + BN.

    Shapes: (B, C, H, W) → (B, C_out, H/s, W/s).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        *,
        kernel_size: int = 3,
        stride: int = 1,
        multipliers: tuple[int, int] = (2, 2),
        groups: int | None = None,
        activation: nn.Module | None = None,
    ) -> None:
        super().__init__()
        self.depthwise = MicroFactorizedDepthwise(in_channels, kernel_size, stride=stride, multipliers=multipliers)
        hidden = self.depthwise.out_channels
        g = adaptive_groups(hidden, max(1, hidden // out_channels)) if groups is None else groups
        self.activation = activation if activation is not None else nn.ReLU6()
        self.shuffle = ChannelShuffle(in_channels)
        self.compress = ConvBN(hidden, out_channels, groups=g)

    def forward(self, x: Tensor) -> Tensor:
        return self.compress(self.shuffle(self.activation(self.depthwise(x))))
