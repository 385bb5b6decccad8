"""DCD model families, registered with timm on import (``timm.create_model("dcd_mobilenetv2_050")``).

Names: ``dcd_<arch>`` (DCD as released), ``dcd_<arch>_static``, ``dcd_<arch>_dyconv``, ``dcd_<arch>_condconv`` for
<arch> in mobilenetv2_100 / _050 / _035, resnet10 / resnet18 / resnet50.
"""

from dcd.models.common import KINDS, ConvBNAct, DynamicConfig, dynamic_layers
from dcd.models.mobilenetv2 import MBV2_SETTINGS, BlockSetting, InvertedResidual, MobileNetV2, mobilenetv2
from dcd.models.registry import MODEL_NAMES, create
from dcd.models.resnet import BasicBlock, Bottleneck, ResNet, resnet

__all__ = [
    "KINDS",
    "MBV2_SETTINGS",
    "MODEL_NAMES",
    "BasicBlock",
    "BlockSetting",
    "Bottleneck",
    "ConvBNAct",
    "DynamicConfig",
    "InvertedResidual",
    "MobileNetV2",
    "ResNet",
    "create",
    "dynamic_layers",
    "mobilenetv2",
    "resnet",
]
