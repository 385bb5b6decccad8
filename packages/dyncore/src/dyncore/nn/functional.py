"""Small element-wise maps and helpers shared by every dynamic layer."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["channel_shuffle", "check_channels", "check_rank", "h_sigmoid", "h_swish", "hsig2", "make_divisible"]


def h_sigmoid(x: Tensor) -> Tensor:
    """Hard sigmoid ReLU6(x + 3) / 6 ∈ [0, 1] (MobileNetV3; MicroNet's Dynamic Shift-Max coefficients)."""
    return F.relu6(x + 3.0) / 6.0


def hsig2(x: Tensor) -> Tensor:
    """Twice the hard sigmoid, ReLU6(x + 3) / 3 ∈ [0, 2]: ≈ 1 at initialisation (DCD's Λ(x) and gate)."""
    return F.relu6(x + 3.0) / 3.0


def h_swish(x: Tensor) -> Tensor:
    """Hard swish x · ReLU6(x + 3) / 6."""
    return x * h_sigmoid(x)


def make_divisible(value: float, divisor: int = 8, min_value: int | None = None) -> int:
    """Round ``value`` to the nearest multiple of ``divisor`` (at least ``min_value``), never dropping below 90 % of
    ``value`` (the rule of torchvision's MobileNetV2 and timm)."""
    if divisor <= 0:
        raise ValueError(f"make_divisible: divisor must be positive, got {divisor}")
    floor = divisor if min_value is None else min_value
    rounded = max(floor, int(value + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * value:
        rounded += divisor
    return rounded


def _symbolic(x: Tensor) -> bool:
    """True while ``torch.fx.symbolic_trace`` traces (``x`` is a Proxy: its shape is unknown, checks are skipped)."""
    return isinstance(x, torch.fx.Proxy)


def channel_shuffle(x: Tensor, groups: int) -> Tensor:
    """ShuffleNet channel shuffle: view the C channels as (groups, C/groups), transpose, flatten.

    Args:
        x: (B, C, ...) with C divisible by ``groups``.
    """
    if groups <= 0 or (not _symbolic(x) and x.shape[1] % groups):
        raise ValueError(f"channel_shuffle: {x.shape[1]} channels cannot be split into {groups} groups")
    if groups == 1:
        return x
    if _symbolic(x):  # fx: no concrete shape to read; unflatten/flatten need none
        return x.unflatten(1, (groups, -1)).transpose(1, 2).flatten(1, 2)
    # reads the shape at run time, so the legacy ONNX exporter keeps the batch axis dynamic
    return x.reshape(x.shape[0], groups, x.shape[1] // groups, *x.shape[2:]).transpose(1, 2).reshape(x.shape)


def check_rank(x: Tensor, ranks: tuple[int, ...], who: str) -> None:
    """Raise a ValueError naming ``who`` when ``x`` does not have one of the ranks ``ranks``."""
    if not _symbolic(x) and x.dim() not in ranks:
        want = " or ".join(str(r) for r in ranks)
        raise ValueError(f"{who}: expected a tensor of rank {want}, got shape {tuple(x.shape)}")


def check_channels(x: Tensor, channels: int, who: str) -> None:
    """Raise a ValueError naming ``who`` when dimension 1 of ``x`` is not ``channels``."""
    if not _symbolic(x) and x.shape[1] != channels:
        raise ValueError(f"{who}: expected {channels} input channels, got {x.shape[1]} (input shape {tuple(x.shape)})")
