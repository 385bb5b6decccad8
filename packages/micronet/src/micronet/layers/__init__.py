"""MicroNet operators: Micro-Factorized convolutions and Shift-Max activations (thesis Sections 4.2–4.3)."""

from micronet.layers.micro_factorized import (
    ChannelShuffle,
    ConvBN,
    GroupPointwiseConv2d,
    LiteCombination,
    MicroFactorizedDepthwise,
    MicroFactorizedPointwise,
    adaptive_groups,
)
from micronet.layers.shift_max import (
    DynamicReLU,
    DynamicShiftMax,
    SEReLU,
    StaticShiftMax,
    default_init,
    shift_index,
)

__all__ = [
    "ChannelShuffle",
    "ConvBN",
    "DynamicReLU",
    "DynamicShiftMax",
    "GroupPointwiseConv2d",
    "LiteCombination",
    "MicroFactorizedDepthwise",
    "MicroFactorizedPointwise",
    "SEReLU",
    "StaticShiftMax",
    "adaptive_groups",
    "default_init",
    "shift_index",
]
