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
from timm.layers import DropPath
from torch import Tensor, nn

from dcd.models.common import ConvBNAct, DynamicConfig, conv_weight_init, drop_rate_arg, static_conv
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

    def __init__(
        self, inp: int, oup: int, stride: int, expand: int, cfg: DynamicConfig, drop_path: float = 0.0
    ) -> None:
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
        # stochastic depth on the residual branch (timm's DropPath; identity in eval and at rate 0)
        self.drop_path = DropPath(drop_path) if drop_path > 0 and self.use_res else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        return x + self.drop_path(self.conv(x)) if self.use_res else self.conv(x)


class MobileNetV2(nn.Module):
    """MobileNetV2 with a configurable dynamic layer. Input (B, in_chans, H, W) → logits (B, num_classes).

    timm interface: ``forward_features`` (B, C, H/32, W/32), ``forward_head(x, pre_logits)``, ``get_classifier``,
    ``reset_classifier``, ``feature_info`` (the last block of every stride, for ``features_only=True``).

    Args:
        width_mult: channel multiplier (torchvision's make_divisible(c·wm, 8); last channel 1280 for wm ≤ 1).
        num_classes: outputs (0: no classifier, ``forward`` returns the pooled features).
        in_chans: input channels of the stem.
        drop_rate: dropout before the classifier (alias ``dropout``); drop_path_rate: stochastic depth of the
            residual blocks, rising linearly to this rate over the blocks.
        cfg: :class:`DynamicConfig` (kind static/dcd/dyconv/condconv, DCD variant, L multiplier, B, …).
        settings: the stage table (default :data:`MBV2_SETTINGS`).
        small_input: 32×32 variant (stem and first stride-2 stage at stride 1).
    """

    def __init__(
        self,
        *,
        width_mult: float = 1.0,
        num_classes: int = 1000,
        in_chans: int = 3,
        drop_rate: float | None = None,
        drop_path_rate: float = 0.0,
        dropout: float | None = None,
        cfg: DynamicConfig | None = None,
        settings: Sequence[BlockSetting] = MBV2_SETTINGS,
        small_input: bool = False,
        last_channel: int = 1280,
    ) -> None:
        super().__init__()
        cfg = cfg or DynamicConfig()
        if width_mult <= 0:
            raise ValueError(f"MobileNetV2: width_mult must be positive, got {width_mult}")
        if not isinstance(in_chans, int) or in_chans <= 0:
            raise ValueError(f"MobileNetV2: in_chans must be a positive integer, got {in_chans!r}")
        self.cfg = cfg
        self.drop_rate = drop_rate_arg(drop_rate, dropout, default=0.2, who="MobileNetV2")
        inp = make_divisible(32 * width_mult, 8)
        self.last_channel = make_divisible(last_channel * max(1.0, width_mult), 8)
        stride = 1 if small_input else 2
        features: list[nn.Module] = [ConvBNAct(static_conv(in_chans, inp, 3, stride), inp)]
        reductions = [stride]
        channels = [inp]
        blocks = sum(st.n for st in settings)
        first_stride_two = True
        index = 0
        for st in settings:
            oup = make_divisible(st.c * width_mult, 8)
            for i in range(st.n):
                s = st.s if i == 0 else 1
                if small_input and s == 2 and first_stride_two:
                    s, first_stride_two = 1, False
                dpr = drop_path_rate * index / max(blocks - 1, 1)
                features.append(InvertedResidual(inp, oup, s, st.t, cfg, drop_path=dpr))
                reductions.append(reductions[-1] * s)
                channels.append(oup)
                inp = oup
                index += 1
        last = cfg.vanilla(inp, self.last_channel, 1) if cfg.kind in ("dyconv", "condconv") else None
        features.append(ConvBNAct(last or static_conv(inp, self.last_channel, 1), self.last_channel))
        reductions.append(reductions[-1])
        channels.append(self.last_channel)
        self.features = nn.Sequential(*features)
        # the last module of every reduction level (timm feature_info; names as in ``features_only``)
        self.feature_info = [
            {"num_chs": channels[i], "reduction": reductions[i], "module": f"features.{i}"}
            for i in range(len(reductions))
            if i == len(reductions) - 1 or reductions[i + 1] != reductions[i]
        ]
        self.num_features = self.head_hidden_size = self.last_channel
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(self.drop_rate)
        self.num_classes = num_classes
        self.classifier: nn.Module = self._make_classifier(num_classes)
        conv_weight_init(self, linear_std=0.01)

    def _make_classifier(self, num_classes: int) -> nn.Module:
        if num_classes <= 0:
            return nn.Identity()
        if self.cfg.kind == "dcd" and self.cfg.classifier:
            return self.cfg.dcd_classifier(self.last_channel, num_classes)
        return nn.Linear(self.last_channel, num_classes)

    def get_classifier(self) -> nn.Module:
        return self.classifier

    def reset_classifier(self, num_classes: int, global_pool: str = "avg") -> None:
        """A new (freshly initialised) classifier with ``num_classes`` outputs (0: none)."""
        if global_pool != "avg":
            raise ValueError(f"MobileNetV2.reset_classifier: only global_pool='avg' is supported, got {global_pool!r}")
        self.num_classes = num_classes
        head = self._make_classifier(num_classes)
        conv_weight_init(head, linear_std=0.01)
        self.classifier = head.to(next(self.features.parameters()).device)

    def forward_features(self, x: Tensor) -> Tensor:
        return self.features(x)

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        x = torch.flatten(self.pool(x), 1)
        return x if pre_logits else self.classifier(self.dropout(x))

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(x))


def mobilenetv2(*, width_mult: float = 1.0, kind: str = "dcd", num_classes: int = 1000, **kwargs: Any) -> MobileNetV2:
    """Build MobileNetV2 ×width_mult with dynamic layers of ``kind``. DCD's fc_squeeze defaults to 16 for ×1.0 and
    8 below (the released counts); extra DynamicConfig fields (variant, latent_mult, blocks, …) may be passed."""
    cfg_fields = set(DynamicConfig.__dataclass_fields__)
    cfg_kw = {k: kwargs.pop(k) for k in list(kwargs) if k in cfg_fields}
    cfg_kw.setdefault("fc_squeeze", 16 if width_mult >= 1.0 else 8)
    cfg = kwargs.pop("cfg", None) or DynamicConfig(kind=kind, **cfg_kw)
    if kwargs.get("drop_rate") is None and kwargs.get("dropout") is None:
        kwargs["drop_rate"] = 0.2 if width_mult >= 1.0 else 0.1
    return MobileNetV2(width_mult=width_mult, num_classes=num_classes, cfg=cfg, **kwargs)
