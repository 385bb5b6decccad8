"""Building blocks shared by the dynamic layers of all five methods."""

from dyncore.nn.coefficients import HIDDEN_ACTIVATIONS, OUTPUT_MAPS, CoefficientBranch, apply_output_map
from dyncore.nn.dynamic_conv import (
    APPLY_MODES,
    ApplyMode,
    center_tap,
    check_mode,
    conv2d_per_sample,
    expert_mixture_conv2d,
    expert_mixture_madds,
    fastest_mode,
    low_rank_conv2d,
    low_rank_kernel,
    low_rank_madds,
    mix_experts,
    pointwise_per_sample,
)
from dyncore.nn.functional import (
    channel_shuffle,
    check_channels,
    check_rank,
    h_sigmoid,
    h_swish,
    hsig2,
    make_divisible,
)
from dyncore.nn.reparam import Reparameterizable, fold_batchnorm, reparameterize_model

__all__ = [
    "APPLY_MODES",
    "HIDDEN_ACTIVATIONS",
    "OUTPUT_MAPS",
    "ApplyMode",
    "CoefficientBranch",
    "Reparameterizable",
    "apply_output_map",
    "center_tap",
    "channel_shuffle",
    "check_channels",
    "check_mode",
    "check_rank",
    "conv2d_per_sample",
    "expert_mixture_conv2d",
    "expert_mixture_madds",
    "fastest_mode",
    "fold_batchnorm",
    "h_sigmoid",
    "h_swish",
    "hsig2",
    "low_rank_conv2d",
    "low_rank_kernel",
    "low_rank_madds",
    "make_divisible",
    "mix_experts",
    "pointwise_per_sample",
    "reparameterize_model",
]
