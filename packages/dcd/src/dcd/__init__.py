"""dcd: Dynamic Convolution Decomposition (thesis Chapter 3).

W(x) = Λ(x)·W0 + P·Φ(x)·Qᵀ — a static kernel with channel-wise attention plus dynamic channel fusion in a small
latent space. Layers (:mod:`dcd.layers`), L/S rules (:mod:`dcd.rules`), models registered with timm on import
(:mod:`dcd.models`), conversion of existing models (:func:`convert`), the explicit fast inference form
(:func:`reparameterize`) and
the Φ-variance analysis (:mod:`dcd.analysis`).
"""

from dcd import rules
from dcd.convert import convert
from dcd.inference import choose_forms, reparameterize, set_apply_mode
from dcd.layers import (
    ChannelFusionDCD,
    CondConv2d,
    DCDClassifier,
    DCDInference,
    DepthwiseDCD,
    DynamicConv2d,
    DynamicConvDecomposition,
    JointFusionDCD,
    dyconv_temperature,
    set_temperature,
)
from dcd.models import MODEL_NAMES, DynamicConfig, MobileNetV2, ResNet, create, mobilenetv2, resnet
from dcd.released import load_released, rename_released

__version__ = "0.1.0"

__all__ = [
    "MODEL_NAMES",
    "ChannelFusionDCD",
    "CondConv2d",
    "DCDClassifier",
    "DCDInference",
    "DepthwiseDCD",
    "DynamicConfig",
    "DynamicConv2d",
    "DynamicConvDecomposition",
    "JointFusionDCD",
    "MobileNetV2",
    "ResNet",
    "choose_forms",
    "convert",
    "create",
    "dyconv_temperature",
    "load_released",
    "mobilenetv2",
    "rename_released",
    "reparameterize",
    "resnet",
    "rules",
    "set_apply_mode",
    "set_temperature",
]
