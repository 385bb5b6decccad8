"""MicroNet: Micro-Factorized convolution and Dynamic Shift-Max (thesis Chapter 4).

``import micronet`` registers ``micronet_m0`` … ``micronet_m3`` (and the '#' variants ``micronet_m{1,2,3}_sharp``)
with timm. ``micronet.load_released(model_or_name, path)`` loads the authors' released checkpoints;
``micronet.reparameterize(model)`` returns the explicit, eval-only fast form.
"""

from micronet.config import CONFIGS, ActSpec, BlockRow, HeadSpec, MicroNetConfig, StemSpec, get_config
from micronet.deploy import reparameterize
from micronet.layers import (
    ChannelShuffle,
    DynamicReLU,
    DynamicShiftMax,
    LiteCombination,
    MicroFactorizedDepthwise,
    MicroFactorizedPointwise,
    SEReLU,
    StaticShiftMax,
)
from micronet.model import (
    MicroBlock,
    MicroNet,
    micronet,
    micronet_m0,
    micronet_m1,
    micronet_m1_sharp,
    micronet_m2,
    micronet_m2_sharp,
    micronet_m3,
    micronet_m3_sharp,
)
from micronet.released import load_released

__version__ = "0.1.0"

__all__ = [
    "CONFIGS",
    "ActSpec",
    "BlockRow",
    "ChannelShuffle",
    "DynamicReLU",
    "DynamicShiftMax",
    "HeadSpec",
    "LiteCombination",
    "MicroBlock",
    "MicroFactorizedDepthwise",
    "MicroFactorizedPointwise",
    "MicroNet",
    "MicroNetConfig",
    "SEReLU",
    "StaticShiftMax",
    "StemSpec",
    "get_config",
    "load_released",
    "micronet",
    "micronet_m0",
    "micronet_m1",
    "micronet_m1_sharp",
    "micronet_m2",
    "micronet_m2_sharp",
    "micronet_m3",
    "micronet_m3_sharp",
    "reparameterize",
]
