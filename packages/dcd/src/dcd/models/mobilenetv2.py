"""MobileNetV2 (Sandler et al. 2018) — static, DCD, DY-Conv and CondConv (thesis Sec. 3.5.1, Table 3.4).

DCD placement as released: both 1×1 convs of every t = 6 block (expand: DCD → BN → ReLU6; depthwise static;
project: DCD → BN); the first block (t = 1), the stem and the last 1×1 conv (→ 1280) stay static; head
conv → GAP → Dropout → DCD classifier. L/S per layer from :func:`dcd.rules.mobilenetv2_rule`.
DY-Conv / CondConv: every conv of every inverted-residual block and the last 1×1 conv (stem and classifier static).

``small_input=True`` adapts the network to 32×32 images (CIFAR convention): the stem and the first stride-2 block
(24 channels) use stride 1, so the total stride is 8 and the last feature map is 4×4.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from dcd.models.common import ConvBNAct, DynamicConfig, conv_weight_init, static_conv
from dcd.rules import mobilenetv2_rule
from dyncore.nn import make_divisible

__all__ = ["MBV2_SETTINGS", "BlockSetting", "InvertedResidual", "MobileNetV2", "mobilenetv2"]


@dataclass(frozen=True)
class BlockSetting:
    """One stage of MobileNetV2: expansion t, output channels c, repeats n, first stride s."""

    t: int
    c: int
    n: int
    s: int


MBV2_SETTINGS: tuple[BlockSetting, ...] = (
    BlockSetting(1, 16, 1, 1),
    BlockSetting(6, 24, 2, 2),
    BlockSetting(6, 32, 3, 2),
    BlockSetting(6, 64, 4, 2),
    BlockSetting(6, 96, 3, 1),
    BlockSetting(6, 160, 3, 2),
    BlockSetting(6, 320, 1, 1),
)


class InvertedResidual(nn.Module):
    """1×1 expand → 3×3 depthwise → 1×1 project (+ identity when stride 1 and C_in = C_out). (B, C, H, W)."""

    def __init__(self, inp: int, oup: int, stride: int, expand: int, cfg: DynamicConfig) -> None:
        super().__init__()
        hidden = round(inp * expand)
        self.use_res = stride == 1 and inp == oup
        dynamic = cfg.kind != "static"
        dcd_pw = cfg.kind == "dcd" and cfg.pointwise and expand != 1
        layers: list[nn.Module] = []
        if expand != 1:
            if dcd_pw:
                conv: nn.Module = cfg.dcd(inp, hidden, mobilenetv2_rule(inp, hidden, fc_squeeze=cfg.fc_squeeze))
            elif dynamic and cfg.kind != "dcd":
                conv = cfg.vanilla(inp, hidden, 1)
            else:
                conv = static_conv(inp, hidden, 1)
            layers.append(ConvBNAct(conv, hidden))
        if cfg.kind == "dcd" and cfg.depthwise:
            dw: nn.Module = cfg.depthwise_dcd(hidden, 3, stride)
        elif dynamic and cfg.kind != "dcd":
            dw = cfg.vanilla(hidden, hidden, 3, stride, groups=hidden)
        else:
            dw = static_conv(hidden, hidden, 3, stride, groups=hidden)
        layers.append(ConvBNAct(dw, hidden))
        if dcd_pw:
            proj: nn.Module = cfg.dcd(hidden, oup, mobilenetv2_rule(hidden, oup, fc_squeeze=cfg.fc_squeeze))
        elif dynamic and cfg.kind != "dcd":
            proj = cfg.vanilla(hidden, oup, 1)
        else:
            proj = static_conv(hidden, oup, 1)
        layers.append(ConvBNAct(proj, oup, act=None))
        self.conv = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.conv(x) if self.use_res else self.conv(x)


class MobileNetV2(nn.Module):
    """MobileNetV2 with a configurable dynamic layer. Input (B, 3, H, W) → logits (B, num_classes).

    Args:
        width_mult: channel multiplier (torchvision's make_divisible(c·wm, 8); last channel 1280 for wm ≤ 1).
        num_classes, dropout: head.
        cfg: :class:`DynamicConfig` (kind static/dcd/dyconv/condconv, DCD variant, L multiplier, B, …).
        settings: the stage table (default :data:`MBV2_SETTINGS`).
        small_input: 32×32 variant (stem and first stride-2 stage at stride 1).
    """

    def __init__(
        self,
        *,
        width_mult: float = 1.0,
        num_classes: int = 1000,
        dropout: float = 0.2,
        cfg: DynamicConfig | None = None,
        settings: Sequence[BlockSetting] = MBV2_SETTINGS,
        small_input: bool = False,
        last_channel: int = 1280,
    ) -> None:
        super().__init__()
        cfg = cfg or DynamicConfig()
        if width_mult <= 0:
            raise ValueError(f"MobileNetV2: width_mult must be positive, got {width_mult}")
        self.cfg = cfg
        inp = make_divisible(32 * width_mult, 8)
        self.last_channel = make_divisible(last_channel * max(1.0, width_mult), 8)
        features: list[nn.Module] = [ConvBNAct(static_conv(3, inp, 3, 1 if small_input else 2), inp)]
        first_stride_two = True
        for st in settings:
            oup = make_divisible(st.c * width_mult, 8)
            for i in range(st.n):
                stride = st.s if i == 0 else 1
                if small_input and stride == 2 and first_stride_two:
                    stride, first_stride_two = 1, False
                features.append(InvertedResidual(inp, oup, stride, st.t, cfg))
                inp = oup
        last = cfg.vanilla(inp, self.last_channel, 1) if cfg.kind in ("dyconv", "condconv") else None
        features.append(ConvBNAct(last or static_conv(inp, self.last_channel, 1), self.last_channel))
        self.features = nn.Sequential(*features)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(dropout)
        if cfg.kind == "dcd" and cfg.classifier:
            self.classifier: nn.Module = cfg.dcd_classifier(self.last_channel, num_classes)
        else:
            self.classifier = nn.Linear(self.last_channel, num_classes)
        self.num_classes = num_classes
        conv_weight_init(self, linear_std=0.01)

    def forward_features(self, x: Tensor) -> Tensor:
        return self.features(x)

    def forward_head(self, x: Tensor) -> Tensor:
        return self.classifier(self.dropout(torch.flatten(self.pool(x), 1)))

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(x))


def mobilenetv2(*, width_mult: float = 1.0, kind: str = "dcd", num_classes: int = 1000, **kwargs: Any) -> MobileNetV2:
    """Build MobileNetV2 ×width_mult with dynamic layers of ``kind``. DCD's fc_squeeze defaults to 16 for ×1.0 and
    8 below (the released counts); extra DynamicConfig fields (variant, latent_mult, blocks, …) may be passed."""
    cfg_fields = set(DynamicConfig.__dataclass_fields__)
    cfg_kw = {k: kwargs.pop(k) for k in list(kwargs) if k in cfg_fields}
    cfg_kw.setdefault("fc_squeeze", 16 if width_mult >= 1.0 else 8)
    cfg = kwargs.pop("cfg", None) or DynamicConfig(kind=kind, **cfg_kw)
    kwargs.setdefault("dropout", 0.2 if width_mult >= 1.0 else 0.1)
    return MobileNetV2(width_mult=width_mult, num_classes=num_classes, cfg=cfg, **kwargs)
