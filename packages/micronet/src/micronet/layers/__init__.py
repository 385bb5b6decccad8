"""MicroNet operators: Micro-Factorized convolutions and Shift-Max activations (thesis Sections 4.2–4.3)."""

from micronet.layers.micro_factorized import (
    ChannelShuffle,
    ComposedFactorizedConv,
    ConvBN,
    GroupPointwiseConv2d,
    LiteCombination,
    MicroFactorizedDepthwise,
    MicroFactorizedPointwise,
    adaptive_groups,
    composable,
    fold_bn,
)
from micronet.layers.shift_max import (
    DynamicReLU,
    DynamicShiftMax,
    FusedShiftMax,
    SEReLU,
    StaticShiftMax,
    default_init,
    shift_index,
)

__all__ = [
    "ChannelShuffle",
    "ComposedFactorizedConv",
    "ConvBN",
    "DynamicReLU",
    "DynamicShiftMax",
    "FusedShiftMax",
    "GroupPointwiseConv2d",
    "LiteCombination",
    "MicroFactorizedDepthwise",
    "MicroFactorizedPointwise",
    "SEReLU",
    "StaticShiftMax",
    "adaptive_groups",
    "composable",
    "default_init",
    "fold_bn",
    "shift_index",
]
