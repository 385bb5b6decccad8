"""DeepLab-V2 (Chen et al., TPAMI 2018) as used by BDL (thesis Section 5.5.1; spec/bdl.md "Models").

An encoder at output stride 8 followed by the ASPP-v2 classifier: four parallel 3×3 convolutions with dilation
6/12/18/24, each mapping the last feature map straight to class scores, whose outputs are SUMMED (not concatenated as in
DeepLab-V3). Logits are upsampled bilinearly to the input size.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class ASPPSum(nn.Module):
    """ASPP-v2 head: Σ_r Conv3×3_{dilation=r}(x), r ∈ ``rates``.  (B, C_in, h, w) → (B, num_classes, h, w)."""

    def __init__(self, in_channels: int, num_classes: int, *, rates: tuple[int, ...] = (6, 12, 18, 24)) -> None:
        super().__init__()
        if not rates:
            raise ValueError("rates must name at least one dilation")
        self.rates = tuple(rates)
        convs = [nn.Conv2d(in_channels, num_classes, 3, padding=r, dilation=r, bias=True) for r in self.rates]
        for conv in convs:  # released init: N(0, 0.01)
            nn.init.normal_(conv.weight, 0.0, 0.01)
            nn.init.zeros_(conv.bias)  # type: ignore[arg-type]
        self.branches = nn.ModuleList(convs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.branches[0](x)
        for conv in self.branches[1:]:
            out = out + conv(x)
        return out


class DeepLabV2(nn.Module):
    """DeepLab-V2: ``encoder`` (an smp encoder, deepest feature at output stride 8) + :class:`ASPPSum`.

    forward: (B, 3, H, W) → logits (B, num_classes, H, W) (bilinear upsampling of the stride-8 scores).
    """

    backbone_prefixes = ("encoder.",)
    default_head_lr_mult = 10.0  # released DeepLab-V2: the ASPP classifier at 10× the backbone lr
    requires_divisible_input_shape = False  # the scores are interpolated back to any input size

    def __init__(self, encoder: nn.Module, num_classes: int, *, rates: tuple[int, ...] = (6, 12, 18, 24)) -> None:
        super().__init__()
        self.encoder = encoder
        self.num_classes = num_classes
        out_channels: list[int] = list(encoder.out_channels)  # type: ignore[arg-type]  # smp encoder attribute
        self.classifier = ASPPSum(out_channels[-1], num_classes, rates=rates)

    @property
    def input_stride(self) -> int:
        """The encoder's output stride (8): smaller inputs leave no feature map."""
        return int(getattr(self.encoder, "output_stride", 8))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feats = self.encoder(x)
        scores = self.classifier(feats[-1])
        return F.interpolate(scores, size=x.shape[-2:], mode="bilinear", align_corners=False)
