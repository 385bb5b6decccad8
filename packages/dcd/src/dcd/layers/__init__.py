"""DCD layers (thesis Chapter 3) and the vanilla dynamic convolution baselines."""

from dcd.layers.classifier import DCDClassifier
from dcd.layers.dcd import VARIANTS, DynamicConvDecomposition, bn_affine
from dcd.layers.depthwise import DepthwiseDCD
from dcd.layers.fast import DCDInference
from dcd.layers.joint import JointFusionDCD
from dcd.layers.vanilla import CondConv2d, DynamicConv2d, dyconv_temperature, set_temperature

ChannelFusionDCD = DynamicConvDecomposition
"""k×k DCD with channel fusion alone (Sec. 3.4.3): a static k×k W0 scaled by Λ plus a dynamic 1×1 residual on the
centre tap — :class:`DynamicConvDecomposition` with ``kernel_size=k``."""

__all__ = [
    "VARIANTS",
    "ChannelFusionDCD",
    "CondConv2d",
    "DCDClassifier",
    "DCDInference",
    "DepthwiseDCD",
    "DynamicConv2d",
    "DynamicConvDecomposition",
    "JointFusionDCD",
    "bn_affine",
    "dyconv_temperature",
    "set_temperature",
]
