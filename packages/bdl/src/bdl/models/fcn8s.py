"""FCN-8s on VGG16 (Long et al., CVPR 2015), BDL's second segmentation model (thesis Section 5.5.1).

VGG16 convolutional layers (torchvision, ``weights=None``), fc6/fc7 as convolutions (7×7 and 1×1, 4096 channels), score
layers on pool3/pool4/fc7 and the 8s skip fusion: score_fr ×2 + score_pool4 → ×2 + score_pool3 → ×8. Deviation from the
Caffe original: instead of the 100-pixel input padding and crop offsets, fc6 uses padding 3 and every upsampling is
bilinear interpolation to the skip's exact size (the same fusion, valid for any input size).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models import vgg16


class FCN8s(nn.Module):
    """FCN-8s.  (B, 3, H, W) → logits (B, num_classes, H, W).

    Args:
        num_classes: output classes.
        fc_channels: width of fc6/fc7 (4096 in the paper; smaller for tests).
    """

    #: ImageNet-initialised layers (the optimiser's backbone group): the VGG16 convolutions and fc6/fc7
    backbone_prefixes = ("to_pool3.", "to_pool4.", "to_pool5.", "fc.")
    #: the released FCN-8s optimiser has a single lr (no DeepLab ×10 head)
    default_head_lr_mult = 1.0
    #: pool5 is at 1/32: smaller inputs leave an empty feature map; any size ≥ 32 works (skips are interpolated)
    input_stride = 32
    requires_divisible_input_shape = False

    def __init__(self, num_classes: int, *, fc_channels: int = 4096) -> None:
        super().__init__()
        features = vgg16(weights=None).features
        self.num_classes = num_classes
        self.to_pool3 = features[:17]  # conv1_1 … pool3 (stride 8, 256 channels)
        self.to_pool4 = features[17:24]  # … pool4 (stride 16, 512 channels)
        self.to_pool5 = features[24:]  # … pool5 (stride 32, 512 channels)
        self.fc = nn.Sequential(
            nn.Conv2d(512, fc_channels, 7, padding=3),
            nn.ReLU(inplace=True),
            nn.Dropout2d(0.5),
            nn.Conv2d(fc_channels, fc_channels, 1),
            nn.ReLU(inplace=True),
            nn.Dropout2d(0.5),
        )
        self.score_fr = nn.Conv2d(fc_channels, num_classes, 1)
        self.score_pool4 = nn.Conv2d(512, num_classes, 1)
        self.score_pool3 = nn.Conv2d(256, num_classes, 1)
        for conv in (self.score_pool4, self.score_pool3):  # FCN: skip scores start at zero
            nn.init.zeros_(conv.weight)
            if conv.bias is not None:
                nn.init.zeros_(conv.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p3 = self.to_pool3(x)
        p4 = self.to_pool4(p3)
        p5 = self.to_pool5(p4)
        s = self.score_fr(self.fc(p5))
        s = F.interpolate(s, size=p4.shape[-2:], mode="bilinear", align_corners=False) + self.score_pool4(p4)
        s = F.interpolate(s, size=p3.shape[-2:], mode="bilinear", align_corners=False) + self.score_pool3(p3)
        return F.interpolate(s, size=x.shape[-2:], mode="bilinear", align_corners=False)
