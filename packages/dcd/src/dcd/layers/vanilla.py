"""Vanilla dynamic convolution baselines (Eq. 3.1): W(x) = Σ_k π_k(x) W_k.

* :class:`CondConv2d` — CondConv (Yang et al. 2019): K = 8 experts, π = sigmoid(Linear(GAP(x))).
* :class:`DynamicConv2d` — DY-Conv (Chen et al. 2020): K = 4 experts, π = softmax(FC(ReLU(FC(GAP(x)))) / τ), with τ
  annealed from 30 to 1 over the first epochs (:func:`dyconv_temperature`, :func:`set_temperature`).

Both apply the per-sample kernel through :func:`dyncore.nn.expert_mixture_conv2d` (feature-wise or by synthesis).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn

from dcd.layers.dcd import dynamic_per_sample
from dyncore.nn import (
    CoefficientBranch,
    check_channels,
    check_mode,
    check_rank,
    expert_mixture_conv2d,
    expert_mixture_madds,
)

__all__ = ["CondConv2d", "DynamicConv2d", "dyconv_temperature", "set_temperature"]


class _ExpertConv2d(nn.Module):
    """Shared body: K expert kernels (K, C_out, C_in/groups, k, k) mixed by a coefficient branch."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        *,
        stride: int,
        padding: int | None,
        dilation: int,
        groups: int,
        bias: bool,
        experts: int,
        mode: str,
    ) -> None:
        super().__init__()
        who = type(self).__name__
        if in_channels <= 0 or out_channels <= 0:
            raise ValueError(f"{who}: channels must be positive, got in={in_channels}, out={out_channels}")
        if groups <= 0 or in_channels % groups or out_channels % groups:
            raise ValueError(
                f"{who}: groups={groups} must divide in_channels={in_channels} and out_channels={out_channels}"
            )
        if experts <= 0:
            raise ValueError(f"{who}: experts (K) must be positive, got {experts}")
        self.in_channels, self.out_channels, self.kernel_size = in_channels, out_channels, kernel_size
        self.stride, self.dilation, self.groups = stride, dilation, groups
        self.padding = kernel_size // 2 * dilation if padding is None else padding
        self.num_experts = experts
        self.mode = check_mode(mode)
        self.weight = nn.Parameter(torch.empty(experts, out_channels, in_channels // groups, kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.zeros(out_channels)) if bias else None
        for w in self.weight:
            nn.init.kaiming_uniform_(w, a=math.sqrt(5))
        self.branch: CoefficientBranch

    def conv_weights(self) -> list[Tensor]:
        return [self.weight]

    def forward(self, x: Tensor) -> Tensor:
        check_rank(x, (4,), type(self).__name__)
        check_channels(x, self.in_channels, type(self).__name__)
        coeffs = self.branch(x)
        assert isinstance(coeffs, Tensor)
        return expert_mixture_conv2d(
            x, self.weight, coeffs, bias=self.bias, stride=self.stride, padding=self.padding,
            dilation=self.dilation, groups=self.groups, mode=self.mode,
        )  # fmt: skip

    def madds(self, inputs: tuple[Tensor, ...], output: Tensor, convention: Any) -> int:
        """per_sample: mix K kernels once, one conv; per_pixel: K convs and the weighted sum at every pixel."""
        branch = sum(m.in_features * m.out_features for m in self.branch.modules() if isinstance(m, nn.Linear))
        return branch + expert_mixture_madds(
            experts=self.num_experts, out_channels=self.out_channels, in_per_group=self.in_channels // self.groups,
            kernel=self.kernel_size, out_hw=tuple(output.shape[-2:]),
            mode="synthesis" if dynamic_per_sample(convention) else "featurewise",
        )  # fmt: skip

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
            f"groups={self.groups}, K={self.num_experts}, mode={self.mode}"
        )


class CondConv2d(_ExpertConv2d):
    """CondConv: K experts (default 8) routed by sigmoid(Linear(GAP(x)) + bias). Shapes as nn.Conv2d."""

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
        experts: int = 8,
        mode: str = "synthesis",
    ) -> None:
        super().__init__(
            in_channels, out_channels, kernel_size, stride=stride, padding=padding, dilation=dilation,
            groups=groups, bias=bias, experts=experts, mode=mode,
        )  # fmt: skip
        self.branch = CoefficientBranch(in_channels, experts, hidden=None, output="sigmoid", bias=True)


class DynamicConv2d(_ExpertConv2d):
    """DY-Conv: K experts (default 4), π = softmax(FC(ReLU(FC(GAP(x)))) / τ), hidden = max(C_in // reduction, 4).

    ``temperature`` (default 30) is the branch's mutable ``.temperature``; anneal it with :func:`set_temperature`.
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
        experts: int = 4,
        reduction: int = 4,
        temperature: float = 30.0,
        mode: str = "synthesis",
    ) -> None:
        super().__init__(
            in_channels, out_channels, kernel_size, stride=stride, padding=padding, dilation=dilation,
            groups=groups, bias=bias, experts=experts, mode=mode,
        )  # fmt: skip
        self.branch = CoefficientBranch(
            in_channels, experts, hidden=max(in_channels // reduction, 4), hidden_activation="relu",
            output="softmax", temperature=temperature, bias=True, hidden_bias=False,
        )  # fmt: skip


def dyconv_temperature(epoch: float, *, start: float = 30.0, end: float = 1.0, anneal_epochs: float = 10.0) -> float:
    """DY-Conv's softmax temperature: linear from ``start`` to ``end`` over the first ``anneal_epochs`` (fractional
    epochs allowed), then ``end``."""
    if anneal_epochs <= 0:
        return end
    t = min(max(epoch / anneal_epochs, 0.0), 1.0)
    return start + (end - start) * t


def set_temperature(model: nn.Module, temperature: float) -> int:
    """Set τ of every :class:`DynamicConv2d` in ``model``; returns how many layers were updated."""
    if temperature <= 0:
        raise ValueError(f"set_temperature: temperature must be positive, got {temperature}")
    n = 0
    for m in model.modules():
        if isinstance(m, DynamicConv2d):
            m.branch.temperature = temperature
            n += 1
    return n
