"""ResNet-10/18/50 (He et al. 2016, torchvision v1.5 layout) — static, DCD, DY-Conv and CondConv (Table 3.4b).

DCD placement as released: both 3×3 convs of every BasicBlock as "channel fusion alone" (static 3×3 scaled by Λ +
dynamic 1×1 residual; 2×2 pooled branch, :func:`dcd.rules.resnet_basic_rule`), all three convs of every Bottleneck
(:func:`dcd.rules.resnet_bottleneck_rule`); stem and downsample shortcuts static; DCD classifier.
``cfg.kxk="joint"`` swaps the BasicBlock 3×3s for the joint channel/kernel fusion of Eq. 3.9.
DY-Conv / CondConv: every conv of every block (stem, shortcuts and classifier static).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from dcd.models.common import ConvBNAct, DynamicConfig, conv_weight_init, static_conv
from dcd.rules import resnet_basic_rule, resnet_bottleneck_rule

__all__ = ["BasicBlock", "Bottleneck", "ResNet", "resnet"]


def _conv(cfg: DynamicConfig, in_ch: int, out_ch: int, k: int, stride: int, basic: bool) -> nn.Module:
    if cfg.kind == "static":
        return static_conv(in_ch, out_ch, k, stride)
    if cfg.kind in ("dyconv", "condconv"):
        return cfg.vanilla(in_ch, out_ch, k, stride)
    if basic and cfg.kxk == "joint":
        return cfg.joint_dcd(in_ch, out_ch, k, stride)
    rule = resnet_basic_rule(in_ch) if basic else resnet_bottleneck_rule(in_ch)
    return cfg.dcd(in_ch, out_ch, rule, k, stride)


def _shortcut(in_ch: int, out_ch: int, stride: int) -> nn.Module:
    if stride == 1 and in_ch == out_ch:
        return nn.Identity()
    return ConvBNAct(static_conv(in_ch, out_ch, 1, stride), out_ch, act=None)


class BasicBlock(nn.Module):
    """3×3 → BN → ReLU → 3×3 → BN, + shortcut, ReLU. (B, C, H, W)."""

    expansion = 1

    def __init__(self, inp: int, planes: int, stride: int, cfg: DynamicConfig) -> None:
        super().__init__()
        self.conv1 = ConvBNAct(_conv(cfg, inp, planes, 3, stride, True), planes, act=nn.ReLU)
        self.conv2 = ConvBNAct(_conv(cfg, planes, planes, 3, 1, True), planes, act=None)
        self.shortcut = _shortcut(inp, planes, stride)
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        return self.act(self.conv2(self.conv1(x)) + self.shortcut(x))


class Bottleneck(nn.Module):
    """1×1 → 3×3 (stride) → 1×1 (×4), each with BN, + shortcut, ReLU. (B, C, H, W)."""

    expansion = 4

    def __init__(self, inp: int, planes: int, stride: int, cfg: DynamicConfig) -> None:
        super().__init__()
        out = planes * 4
        self.conv1 = ConvBNAct(_conv(cfg, inp, planes, 1, 1, False), planes, act=nn.ReLU)
        self.conv2 = ConvBNAct(_conv(cfg, planes, planes, 3, stride, False), planes, act=nn.ReLU)
        self.conv3 = ConvBNAct(_conv(cfg, planes, out, 1, 1, False), out, act=None)
        self.shortcut = _shortcut(inp, out, stride)
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        return self.act(self.conv3(self.conv2(self.conv1(x))) + self.shortcut(x))


class ResNet(nn.Module):
    """ResNet with a configurable dynamic layer. Input (B, 3, H, W) → logits (B, num_classes).

    Args:
        block: "basic" or "bottleneck"; layers: blocks per stage (e.g. [2, 2, 2, 2] for ResNet-18).
        num_classes, dropout: head (dropout before the classifier).
        cfg: :class:`DynamicConfig`.
        small_input: 32×32 variant (3×3 stride-1 stem, no max-pool).
    """

    def __init__(
        self,
        *,
        block: str = "basic",
        layers: Sequence[int] = (2, 2, 2, 2),
        num_classes: int = 1000,
        dropout: float = 0.0,
        cfg: DynamicConfig | None = None,
        small_input: bool = False,
        width: int = 64,
    ) -> None:
        super().__init__()
        if block not in ("basic", "bottleneck"):
            raise ValueError(f"ResNet: block must be 'basic' or 'bottleneck', got {block!r}")
        cfg = cfg or DynamicConfig()
        self.cfg = cfg
        block_cls: type[BasicBlock] | type[Bottleneck] = BasicBlock if block == "basic" else Bottleneck
        if small_input:
            stem: list[nn.Module] = [ConvBNAct(static_conv(3, width, 3, 1), width, act=nn.ReLU)]
        else:
            stem_conv = nn.Conv2d(3, width, 7, 2, 3, bias=False)
            stem = [ConvBNAct(stem_conv, width, act=nn.ReLU), nn.MaxPool2d(3, 2, 1)]
        self.stem = nn.Sequential(*stem)
        inp = width
        stages: list[nn.Module] = []
        for i, n in enumerate(layers):
            planes = width * 2**i
            blocks = []
            for j in range(n):
                blocks.append(block_cls(inp, planes, 2 if (j == 0 and i > 0) else 1, cfg))
                inp = planes * block_cls.expansion
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.num_features = inp
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(dropout)
        if cfg.kind == "dcd" and cfg.classifier:
            self.fc: nn.Module = cfg.dcd_classifier(inp, num_classes)
        else:
            self.fc = nn.Linear(inp, num_classes)
        self.num_classes = num_classes
        conv_weight_init(self, linear_std=None)

    def forward_features(self, x: Tensor) -> Tensor:
        x = self.stem(x)
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.dropout(torch.flatten(self.pool(self.forward_features(x)), 1)))


RESNET_DEPTHS: dict[int, tuple[str, tuple[int, ...]]] = {
    10: ("basic", (1, 1, 1, 1)),
    18: ("basic", (2, 2, 2, 2)),
    34: ("basic", (3, 4, 6, 3)),
    50: ("bottleneck", (3, 4, 6, 3)),
}


def resnet(*, depth: int = 18, kind: str = "dcd", num_classes: int = 1000, **kwargs: Any) -> ResNet:
    """Build ResNet-``depth`` (10/18/34/50) with dynamic layers of ``kind``; DynamicConfig fields may be passed."""
    if depth not in RESNET_DEPTHS:
        raise ValueError(f"resnet: depth must be one of {sorted(RESNET_DEPTHS)}, got {depth}")
    block, layers = RESNET_DEPTHS[depth]
    cfg_fields = set(DynamicConfig.__dataclass_fields__)
    cfg_kw = {k: kwargs.pop(k) for k in list(kwargs) if k in cfg_fields}
    cfg = kwargs.pop("cfg", None) or DynamicConfig(kind=kind, **cfg_kw)
    return ResNet(block=block, layers=layers, num_classes=num_classes, cfg=cfg, **kwargs)
