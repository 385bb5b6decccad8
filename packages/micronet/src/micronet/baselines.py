"""MobileNetV3-Small baselines of Table 4.7 built with timm's MobileNetV3 generator.

×0.35 and ×0.5 are timm's own ``_gen_mobilenet_v3`` (stem fixed at 16, channels rounded to multiples of 8): they
reproduce the published 1.36M/16.0M and 1.59M/24.2M. The thesis' ×0.15 and ×0.2 (its own implementation, "†") are
not reachable with a fixed stem and ÷8 rounding (timm gives 11.9M/13.2M MAdds); here they scale the stem too and round
channels to multiples of 4, giving 1.15M/5.5M and 1.20M/6.9M (thesis: 1.0M/4M and 1.2M/6M).
"""

from __future__ import annotations

from functools import partial
from typing import Any

from timm.models._efficientnet_blocks import SqueezeExcite
from timm.models._efficientnet_builder import decode_arch_def, round_channels
from timm.models.mobilenetv3 import MobileNetV3, _gen_mobilenet_v3
from torch import nn

__all__ = ["MOBILENETV3_SMALL_WIDTHS", "mobilenetv3_small"]

MOBILENETV3_SMALL_WIDTHS: tuple[float, ...] = (0.15, 0.2, 0.35, 0.5, 0.75, 1.0)

# MobileNetV3-Small (Howard et al. 2019, Table 2) in timm's block-string notation.
_SMALL_ARCH = [
    ["ds_r1_k3_s2_e1_c16_se0.25_nre"],
    ["ir_r1_k3_s2_e4.5_c24_nre", "ir_r1_k3_s1_e3.67_c24_nre"],
    ["ir_r1_k5_s2_e4_c40_se0.25", "ir_r2_k5_s1_e6_c40_se0.25"],
    ["ir_r2_k5_s1_e3_c48_se0.25"],
    ["ir_r3_k5_s2_e6_c96_se0.25"],
    ["cn_r1_k1_s1_c576"],
]


def mobilenetv3_small(width: float, *, num_classes: int = 1000, **kwargs: Any) -> nn.Module:
    """MobileNetV3-Small at width multiplier ``width`` (randomly initialised; see module doc for ×0.15/×0.2)."""
    if width <= 0:
        raise ValueError(f"mobilenetv3_small: width must be positive, got {width}")
    if width >= 0.35:
        variant = f"mobilenetv3_small_{round(width * 100):03d}"
        if variant not in ("mobilenetv3_small_050", "mobilenetv3_small_075", "mobilenetv3_small_100"):
            variant = "mobilenetv3_small_050"  # the name only selects timm's (unused) pretrained config
        return _gen_mobilenet_v3(variant, width, pretrained=False, num_classes=num_classes, **kwargs)
    divisor = 4
    se = partial(
        SqueezeExcite,
        gate_layer="hard_sigmoid",
        force_act_layer=nn.ReLU,
        rd_round_fn=partial(round_channels, divisor=divisor),
    )
    return MobileNetV3(
        block_args=decode_arch_def(_SMALL_ARCH),
        num_classes=num_classes,
        num_features=1024,
        stem_size=round_channels(16, width, divisor),
        fix_stem=True,
        round_chs_fn=partial(round_channels, multiplier=width, divisor=divisor),
        act_layer=nn.Hardswish,
        se_layer=se,
        **kwargs,
    )
