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
from timm.layers import DropPath
from torch import Tensor, nn

from dcd.models.common import ConvBNAct, DynamicConfig, conv_weight_init, drop_rate_arg, static_conv
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

    def __init__(self, inp: int, planes: int, stride: int, cfg: DynamicConfig, drop_path: float = 0.0) -> None:
        super().__init__()
        self.conv1 = ConvBNAct(_conv(cfg, inp, planes, 3, stride, True), planes, act=nn.ReLU)
        self.conv2 = ConvBNAct(_conv(cfg, planes, planes, 3, 1, True), planes, act=None)
        self.shortcut = _shortcut(inp, planes, stride)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()  # stochastic depth
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        return self.act(self.drop_path(self.conv2(self.conv1(x))) + self.shortcut(x))


class Bottleneck(nn.Module):
    """1×1 → 3×3 (stride) → 1×1 (×4), each with BN, + shortcut, ReLU. (B, C, H, W)."""

    expansion = 4

    def __init__(self, inp: int, planes: int, stride: int, cfg: DynamicConfig, drop_path: float = 0.0) -> None:
        super().__init__()
        out = planes * 4
        self.conv1 = ConvBNAct(_conv(cfg, inp, planes, 1, 1, False), planes, act=nn.ReLU)
        self.conv2 = ConvBNAct(_conv(cfg, planes, planes, 3, stride, False), planes, act=nn.ReLU)
        self.conv3 = ConvBNAct(_conv(cfg, planes, out, 1, 1, False), out, act=None)
        self.shortcut = _shortcut(inp, out, stride)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()  # stochastic depth
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        return self.act(self.drop_path(self.conv3(self.conv2(self.conv1(x)))) + self.shortcut(x))


class ResNet(nn.Module):
    """ResNet with a configurable dynamic layer. Input (B, in_chans, H, W) → logits (B, num_classes).

    timm interface: ``forward_features``, ``forward_head(x, pre_logits)``, ``get_classifier``, ``reset_classifier``,
    ``feature_info`` (stem conv, then the last block of each stage).

    Args:
        block: "basic" or "bottleneck"; layers: blocks per stage (e.g. [2, 2, 2, 2] for ResNet-18).
        num_classes: outputs (0: no classifier); in_chans: input channels.
        drop_rate: dropout before the classifier (alias ``dropout``); drop_path_rate: stochastic depth of the
            residual blocks, rising linearly to this rate.
        cfg: :class:`DynamicConfig`.
        small_input: 32×32 variant (3×3 stride-1 stem, no max-pool).
        zero_init_last: start each block's last BN at γ = 0 (timm's default; every residual branch starts at zero, so
            a fresh model is finite and O(1) in eval — the authors' init gives NaN for DCD ResNet-18/50). ``False``
            keeps γ = 1 as released.
    """

    def __init__(
        self,
        *,
        block: str = "basic",
        layers: Sequence[int] = (2, 2, 2, 2),
        num_classes: int = 1000,
        in_chans: int = 3,
        drop_rate: float | None = None,
        drop_path_rate: float = 0.0,
        dropout: float | None = None,
        cfg: DynamicConfig | None = None,
        small_input: bool = False,
        width: int = 64,
        zero_init_last: bool = True,
    ) -> None:
        super().__init__()
        if block not in ("basic", "bottleneck"):
            raise ValueError(f"ResNet: block must be 'basic' or 'bottleneck', got {block!r}")
        if not isinstance(in_chans, int) or in_chans <= 0:
            raise ValueError(f"ResNet: in_chans must be a positive integer, got {in_chans!r}")
        cfg = cfg or DynamicConfig()
        self.cfg = cfg
        self.drop_rate = drop_rate_arg(drop_rate, dropout, default=0.0, who="ResNet")
        block_cls: type[BasicBlock] | type[Bottleneck] = BasicBlock if block == "basic" else Bottleneck
        if small_input:
            stem: list[nn.Module] = [ConvBNAct(static_conv(in_chans, width, 3, 1), width, act=nn.ReLU)]
            reduction = 1
        else:
            stem_conv = nn.Conv2d(in_chans, width, 7, 2, 3, bias=False)
            stem = [ConvBNAct(stem_conv, width, act=nn.ReLU), nn.MaxPool2d(3, 2, 1)]
            reduction = 2
        self.stem = nn.Sequential(*stem)
        self.feature_info = [{"num_chs": width, "reduction": reduction, "module": "stem.0"}]
        if not small_input:
            reduction *= 2
        inp = width
        total = sum(layers)
        index = 0
        stages: list[nn.Module] = []
        for i, n in enumerate(layers):
            planes = width * 2**i
            blocks = []
            for j in range(n):
                stride = 2 if (j == 0 and i > 0) else 1
                dpr = drop_path_rate * index / max(total - 1, 1)
                blocks.append(block_cls(inp, planes, stride, cfg, drop_path=dpr))
                inp = planes * block_cls.expansion
                index += 1
            reduction *= 2 if i > 0 else 1
            stages.append(nn.Sequential(*blocks))
            self.feature_info.append({"num_chs": inp, "reduction": reduction, "module": f"layer{i + 1}.{n - 1}"})
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.num_features = self.head_hidden_size = inp
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(self.drop_rate)
        self.num_classes = num_classes
        self.fc: nn.Module = self._make_classifier(num_classes)
        conv_weight_init(self, linear_std=None)
        if zero_init_last:
            for m in self.modules():
                if isinstance(m, (BasicBlock, Bottleneck)):
                    last = m.conv2 if isinstance(m, BasicBlock) else m.conv3
                    nn.init.zeros_(last.bn.weight)

    def _make_classifier(self, num_classes: int) -> nn.Module:
        if num_classes <= 0:
            return nn.Identity()
        if self.cfg.kind == "dcd" and self.cfg.classifier:
            return self.cfg.dcd_classifier(self.num_features, num_classes)
        return nn.Linear(self.num_features, num_classes)

    def get_classifier(self) -> nn.Module:
        return self.fc

    def reset_classifier(self, num_classes: int, global_pool: str = "avg") -> None:
        """A new (freshly initialised) classifier with ``num_classes`` outputs (0: none)."""
        if global_pool != "avg":
            raise ValueError(f"ResNet.reset_classifier: only global_pool='avg' is supported, got {global_pool!r}")
        self.num_classes = num_classes
        self.fc = self._make_classifier(num_classes).to(next(self.stem.parameters()).device)

    def forward_features(self, x: Tensor) -> Tensor:
        x = self.stem(x)
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        x = torch.flatten(self.pool(x), 1)
        return x if pre_logits else self.fc(self.dropout(x))

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(x))


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
