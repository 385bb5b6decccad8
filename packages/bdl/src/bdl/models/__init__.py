"""Segmentation adaptation models M: DeepLab-V2 (ASPP-sum), FCN-8s (VGG16) and smp models, built by name."""

from bdl.models.builder import (
    build_segmenter,
    check_encoder,
    input_requirements,
    known_encoders,
    list_segmenters,
    load_pretrained,
    register_segmenter,
)
from bdl.models.deeplabv2 import ASPPSum, DeepLabV2
from bdl.models.fcn8s import FCN8s

__all__ = [
    "ASPPSum",
    "DeepLabV2",
    "FCN8s",
    "build_segmenter",
    "check_encoder",
    "input_requirements",
    "known_encoders",
    "list_segmenters",
    "load_pretrained",
    "register_segmenter",
]
