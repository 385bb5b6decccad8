"""Latent size L and squeeze width S of DCD layers as pure functions (thesis Sec. 3.3–3.4, released models).

L is the latent (fused) dimension of Φ(x) (L×L), S the hidden width of the dynamic branch
(pool → Linear(→S) → gate → heads). Every rule is a small function of the layer's channel numbers so that the
published parameter counts follow from data, not from branching model code.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

__all__ = [
    "LatentRule",
    "check_latent",
    "classifier_rule",
    "depthwise_latent",
    "joint_fusion_latent",
    "mobilenetv2_rule",
    "paper_latent",
    "resnet_basic_rule",
    "resnet_bottleneck_rule",
    "scale_latent",
    "squeeze_width",
]


@dataclass(frozen=True)
class LatentRule:
    """Sizes of one DCD layer: latent L (Φ is L×L), squeeze S (hidden width of the branch), pool (1 global, 2 → 2×2)."""

    latent: int
    squeeze: int
    pool: int = 1


def check_latent(latent: int, who: str = "latent") -> int:
    """Raise a ValueError unless ``latent`` is a positive integer."""
    if not isinstance(latent, int) or isinstance(latent, bool) or latent <= 0:
        raise ValueError(f"{who}: the latent dimension L must be a positive integer, got {latent!r}")
    return latent


def _check_channels(channels: int, who: str) -> None:
    if not isinstance(channels, int) or channels <= 0:
        raise ValueError(f"{who}: channels must be a positive integer, got {channels!r}")


def paper_latent(channels: int) -> int:
    """Paper default L = ⌊C / 2^⌊log2 √C⌋⌋ (Sec. 3.5.3): halve C until it falls below √C, so that L² < C·(…)."""
    _check_channels(channels, "paper_latent")
    return max(1, channels // 2 ** math.floor(math.log2(math.sqrt(channels))))


def scale_latent(latent: int, multiplier: float) -> int:
    """L × multiplier (Table 3.2: ×0.25, ×0.5, ×0.75, ×1.0), at least 1."""
    check_latent(latent, "scale_latent")
    if not multiplier > 0:
        raise ValueError(f"scale_latent: the latent multiplier must be positive, got {multiplier!r}")
    return max(1, int(latent * multiplier))


def squeeze_width(features: int, latent: int, divisor: int, minimum: int = 4) -> int:
    """S = max(features, L²) // divisor, at least ``minimum`` (released rule, ``features`` = pooled width)."""
    if divisor <= 0:
        raise ValueError(f"squeeze_width: divisor must be positive, got {divisor}")
    return max(max(features, latent * latent) // divisor, minimum)


def mobilenetv2_rule(in_channels: int, out_channels: int, *, fc_squeeze: int = 8) -> LatentRule:
    """L and S of a MobileNetV2 1×1 DCD layer as released.

    Expanding layers (C_in < C_out): mul 4 (2×2 pooling → 4·C_in features), reduction 8; otherwise mul 1, reduction 2.
    L = min(C_in·mul // red, C_out // red); while L² > 2·C_in·mul: red ×= 2 and recompute; L = max(L, 4);
    S = max(C_in·mul, L²) // fc_squeeze, at least 4 (fc_squeeze 16 for ×1.0, 8 for ×0.5/×0.35).
    """
    _check_channels(in_channels, "mobilenetv2_rule(in_channels)")
    _check_channels(out_channels, "mobilenetv2_rule(out_channels)")
    mul, red = (4, 8) if in_channels < out_channels else (1, 2)
    latent = min(in_channels * mul // red, out_channels // red)
    while latent * latent > 2 * in_channels * mul:
        red *= 2
        latent = min(in_channels * mul // red, out_channels // red)
    latent = max(latent, 4)
    return LatentRule(latent, squeeze_width(in_channels * mul, latent, fc_squeeze), pool=2 if mul == 4 else 1)


def resnet_bottleneck_rule(in_channels: int) -> LatentRule:
    """ResNet-50 bottleneck convs: L = ⌊√C_in⌋, S = max(C_in, L²) // 16, global pooling."""
    _check_channels(in_channels, "resnet_bottleneck_rule")
    latent = math.isqrt(in_channels)
    return LatentRule(latent, squeeze_width(in_channels, latent, 16), pool=1)


def resnet_basic_rule(in_channels: int) -> LatentRule:
    """ResNet BasicBlock 3×3 convs: 2×2 pooling, L = ⌊√(4·C_in)⌋, S = max(4·C_in, L²) // 16 (≥ 4)."""
    _check_channels(in_channels, "resnet_basic_rule")
    latent = math.isqrt(4 * in_channels)
    return LatentRule(latent, squeeze_width(4 * in_channels, latent, 16), pool=2)


def classifier_rule() -> LatentRule:
    """DCD classifier (fully connected case) as released: L = 32, S = 32, global features."""
    return LatentRule(32, 32, pool=1)


def depthwise_latent(kernel_size: int) -> int:
    """L_k = ⌊k²/2⌋ latent kernel elements for depthwise DCD (Eq. 3.8)."""
    if kernel_size <= 1:
        raise ValueError(f"depthwise_latent: kernel_size must be > 1 to fuse kernel elements, got {kernel_size}")
    return kernel_size * kernel_size // 2


def joint_fusion_latent(channels: int, kernel_size: int) -> tuple[int, int]:
    """(L, L_k) for the joint channel/kernel fusion of Eq. 3.9: L_k = ⌊k²/2⌋,
    L = ⌊(C/L_k) / 2^⌊log2 √(C/L_k)⌋⌋ (≥ 1), satisfying L_k < k² and L²·L_k ≤ C."""
    _check_channels(channels, "joint_fusion_latent")
    lk = depthwise_latent(kernel_size)
    ratio = channels / lk
    if ratio < 1:
        return 1, lk
    latent = max(1, int(ratio / 2 ** math.floor(math.log2(math.sqrt(ratio)))))
    return latent, lk
