"""MicroNet M0–M3 (thesis Section 4.4, Table 4.1) built from the typed rows of :mod:`micronet.config`, registered
with timm (``timm.create_model("micronet_m0")`` after ``import micronet``)."""

from __future__ import annotations

import math
from typing import Any

import torch
from timm.models import register_model
from torch import Tensor, nn

from dyncore.nn import h_swish
from micronet.config import CONFIGS, ActSpec, BlockRow, HeadSpec, MicroNetConfig, StemSpec, get_config
from micronet.layers import (
    ChannelShuffle,
    ConvBN,
    DynamicReLU,
    DynamicShiftMax,
    MicroFactorizedDepthwise,
    SEReLU,
    StaticShiftMax,
)

__all__ = [
    "HSwish",
    "MicroBlock",
    "MicroNet",
    "MicroNetHead",
    "Stem",
    "build_activation",
    "micronet",
    "micronet_m0",
    "micronet_m1",
    "micronet_m1_sharp",
    "micronet_m2",
    "micronet_m2_sharp",
    "micronet_m3",
    "micronet_m3_sharp",
]


class HSwish(nn.Module):
    """h_swish(x) = x·ReLU6(x+3)/6 (:func:`dyncore.nn.h_swish`)."""

    def forward(self, x: Tensor) -> Tensor:
        return h_swish(x)


def build_activation(spec: ActSpec, channels: int, groups: int) -> nn.Module:
    """Instantiate the activation ``spec`` for ``channels`` channels in ``groups`` groups."""
    if spec.kind == "none":
        return nn.Identity()
    if spec.kind == "relu":
        return nn.ReLU()
    if spec.kind == "relu6":
        return nn.ReLU6()
    if spec.kind == "dsm":
        return DynamicShiftMax(channels, groups=groups, k=spec.k, j=spec.j, squeeze=spec.squeeze, init=spec.init)
    if spec.kind == "static":
        return StaticShiftMax(channels, groups=groups, k=spec.k, j=spec.j, init=spec.init)
    if spec.kind == "dyrelu":
        return DynamicReLU(channels, k=spec.k, squeeze=spec.squeeze)
    if spec.kind == "se_relu":
        return SEReLU(channels, squeeze=spec.squeeze)
    raise ValueError(f"build_activation: unknown kind {spec.kind!r}")


class Stem(nn.Sequential):
    """conv 3×1 stride (2,1) → BN → conv 1×3 stride (1,2) groups s1 (→ s1·s2) → BN → shuf(s1) → ReLU6."""

    def __init__(self, spec: StemSpec) -> None:
        k, s, pad = spec.kernel, spec.stride, spec.kernel // 2
        super().__init__(
            ConvBN(spec.in_channels, spec.s1, (k, 1), stride=(s, 1), padding=(pad, 0)),
            ConvBN(spec.s1, spec.out_channels, (1, k), stride=(1, s), padding=(0, pad), groups=spec.s1),
            ChannelShuffle(spec.s1),
            nn.ReLU6(),
        )
        self.out_channels = spec.out_channels


def _perm2(channels: int, divisor: int) -> nn.Module:
    return ChannelShuffle(channels // divisor)


def _check_row(row: BlockRow) -> None:
    def need(value: int, groups: int, what: str) -> None:
        if groups <= 0 or value % groups:
            raise ValueError(
                f"MicroBlock ({row.kind}-row {row.cin}→{row.cout}): {what}={value} is not divisible by groups={groups}"
            )

    if row.kind == "A":
        need(row.hidden, row.g2, "hidden")
        need(row.hidden, row.g3, "hidden")
        need(row.cout, row.g3, "out channels")
        need(row.cout, row.g4, "out channels")
    elif row.kind == "C":
        need(row.cin, row.g1, "in channels")
        need(row.hidden, row.g1, "hidden")
        need(row.hidden, row.g2, "hidden")
        need(row.hidden, row.g3, "hidden")
        need(row.cout, row.g3, "out channels")
        need(row.cout, row.g4, "out channels")
    elif row.kind == "last":
        need(row.cin, row.g1, "in channels")
        need(row.cout, row.g1, "out channels")
    else:
        raise ValueError(f"MicroBlock: unknown row kind {row.kind!r} (A, C or last)")


class MicroBlock(nn.Module):
    """One row of the layer table (Micro-Block-A / -C / the last pointwise row); identity residual when
    stride 1 and Cin = Cout. Shapes: (B, Cin, H, W) → (B, Cout, H/s, W/s)."""

    def __init__(self, row: BlockRow) -> None:
        super().__init__()
        _check_row(row)
        self.row = row
        layers: list[nn.Module] = []
        if row.kind == "A":
            dw = MicroFactorizedDepthwise(row.cin, row.kernel, stride=row.stride, multipliers=row.dw_multipliers)
            if dw.out_channels != row.hidden:
                raise ValueError(f"MicroBlock: A-row hidden={row.hidden} but dw multipliers give {dw.out_channels}")
            layers += [dw, build_activation(row.act2, row.hidden, row.g2), ChannelShuffle(row.g2)]
            if row.act2.shifts:
                layers.append(_perm2(row.hidden, 2))
            layers += self._output(row)
        elif row.kind == "C":
            layers += [
                ConvBN(row.cin, row.hidden, groups=row.g1),
                build_activation(row.act1, row.hidden, row.g2),
                ChannelShuffle(row.g2),
                MicroFactorizedDepthwise(row.hidden, row.kernel, stride=row.stride)
                if row.factorized_dw
                else ConvBN(
                    row.hidden, row.hidden, row.kernel, stride=row.stride, padding=row.kernel // 2, groups=row.hidden
                ),
                build_activation(row.act2, row.hidden, row.hidden // row.g2),
            ]
            n_shift = int(row.act1.shifts) + int(row.act2.shifts)
            if n_shift:
                layers.append(_perm2(row.hidden, 2 * n_shift))
            layers += self._output(row)
        else:
            layers += [ConvBN(row.cin, row.cout, groups=row.g1), build_activation(row.act1, row.cout, row.g1)]
        self.body = nn.Sequential(*layers)
        self.residual = row.residual

    @staticmethod
    def _output(row: BlockRow) -> list[nn.Module]:
        out: list[nn.Module] = [
            ConvBN(row.hidden, row.cout, groups=row.g3),
            build_activation(row.act3, row.cout, row.g4),
            ChannelShuffle(row.g4),
        ]
        if row.act3.shifts:
            out.append(_perm2(row.cout, 2))
        return out

    def forward(self, x: Tensor) -> Tensor:
        y = self.body(x)
        return x + y if self.residual else y


class MicroNetHead(nn.Module):
    """ReLU6 → GAP → h_swish → Linear(C_last→OUT) → BN1d → h_swish → Dropout(p) → Linear(OUT→classes) → BN1d →
    h_swish (the released head: the logits themselves pass BN1d + h_swish)."""

    def __init__(self, in_channels: int, spec: HeadSpec, num_classes: int, drop_rate: float | None = None) -> None:
        super().__init__()
        self.pool = nn.Sequential(nn.ReLU6(), nn.AdaptiveAvgPool2d(1), nn.Flatten(1), HSwish())
        self.fc1 = nn.Sequential(nn.Linear(in_channels, spec.out_channels), nn.BatchNorm1d(spec.out_channels), HSwish())
        self.dropout = nn.Dropout(spec.dropout if drop_rate is None else drop_rate)
        self.fc2 = nn.Sequential(nn.Linear(spec.out_channels, num_classes), nn.BatchNorm1d(num_classes), HSwish())

    def forward(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        x = self.dropout(self.fc1(self.pool(x)))
        return x if pre_logits else self.fc2(x)


class MicroNet(nn.Module):
    """MicroNet classifier: stem → Micro-Blocks (rows of ``config``) → head.

    Args:
        config: a :class:`MicroNetConfig` (``micronet.config.M0`` …) or its name.
        num_classes: classifier outputs.
        in_chans: input channels.
        drop_rate: overrides the config's dropout.

    Shapes: (B, in_chans, H, W) with H, W ≥ the total stride (32) → (B, num_classes).
    """

    def __init__(
        self,
        config: MicroNetConfig | str,
        *,
        num_classes: int = 1000,
        in_chans: int = 3,
        drop_rate: float | None = None,
    ) -> None:
        super().__init__()
        cfg = get_config(config) if isinstance(config, str) else config
        if num_classes <= 0:
            raise ValueError(f"MicroNet: num_classes must be positive, got {num_classes}")
        cfg = cfg if cfg.stem.in_channels == in_chans else _with_in_chans(cfg, in_chans)
        self.config = cfg
        self.num_classes = num_classes
        self.stem = Stem(cfg.stem)
        prev = cfg.stem.out_channels
        blocks = []
        for i, row in enumerate(cfg.blocks):
            if row.cin != prev:
                raise ValueError(f"MicroNet({cfg.name}): block {i + 1} expects {row.cin} input channels, got {prev}")
            blocks.append(MicroBlock(row))
            prev = row.cout
        self.blocks = nn.Sequential(*blocks)
        self.num_features = prev
        self.head = MicroNetHead(prev, cfg.head, num_classes, drop_rate)
        self.total_stride = cfg.total_stride
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Released init: conv N(0, √(2/(k_h·k_w·C_out))) (fan-out, not divided by groups); BN 1/0; Linear
        N(0, 0.01), bias 0."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                n = m.kernel_size[0] * m.kernel_size[1] * m.out_channels
                nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / n))
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, (nn.BatchNorm2d, nn.BatchNorm1d)):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0.0, 0.01)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def check_input(self, x: Tensor) -> None:
        if x.dim() != 4 or x.shape[1] != self.config.stem.in_channels:
            raise ValueError(
                f"MicroNet: expected input (B, {self.config.stem.in_channels}, H, W), got shape {tuple(x.shape)}"
            )
        if x.shape[-2] < self.total_stride or x.shape[-1] < self.total_stride:
            raise ValueError(
                f"MicroNet: input {x.shape[-2]}×{x.shape[-1]} is smaller than the network's total stride "
                f"{self.total_stride}; use at least {self.total_stride}×{self.total_stride}"
            )

    def forward_features(self, x: Tensor) -> Tensor:
        if not (torch.jit.is_scripting() or torch.jit.is_tracing()):
            self.check_input(x)
        return self.blocks(self.stem(x))

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        return self.head(x, pre_logits)

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(x))


def _with_in_chans(cfg: MicroNetConfig, in_chans: int) -> MicroNetConfig:
    from dataclasses import replace

    if in_chans <= 0:
        raise ValueError(f"MicroNet: in_chans must be positive, got {in_chans}")
    return replace(cfg, stem=replace(cfg.stem, in_channels=in_chans))


def micronet(config: MicroNetConfig | str, *, num_classes: int = 1000, **kwargs: Any) -> MicroNet:
    """Build a MicroNet from a config or config name (keyword-only options as :class:`MicroNet`)."""
    return MicroNet(config, num_classes=num_classes, **kwargs)


_TIMM_ONLY = ("pretrained_cfg", "pretrained_cfg_overlay", "cache_dir", "features_only", "drop_path_rate")


def _create(name: str, pretrained: bool, kwargs: dict[str, Any]) -> MicroNet:
    if pretrained:
        raise ValueError(f"{name}: no pretrained weights are distributed (use pretrained=False)")
    for key in _TIMM_ONLY:
        kwargs.pop(key, None)
    return MicroNet(CONFIGS[name], **kwargs)


@register_model
def micronet_m0(pretrained: bool = False, **kwargs: Any) -> MicroNet:
    """MicroNet-M0 (1.0M params, 4M MAdds; released config msnx_dy6_exp4_4M_221)."""
    return _create("micronet_m0", pretrained, kwargs)


@register_model
def micronet_m1(pretrained: bool = False, **kwargs: Any) -> MicroNet:
    """MicroNet-M1 (1.8M params, 6M MAdds; msnx_dy6_exp6_6M_221)."""
    return _create("micronet_m1", pretrained, kwargs)


@register_model
def micronet_m2(pretrained: bool = False, **kwargs: Any) -> MicroNet:
    """MicroNet-M2 (2.4M params, 12M MAdds; msnx_dy9_exp6_12M_221)."""
    return _create("micronet_m2", pretrained, kwargs)


@register_model
def micronet_m3(pretrained: bool = False, **kwargs: Any) -> MicroNet:
    """MicroNet-M3 (2.6M params, 21M MAdds; msnx_dy12_exp6_20M_020)."""
    return _create("micronet_m3", pretrained, kwargs)


@register_model
def micronet_m1_sharp(pretrained: bool = False, **kwargs: Any) -> MicroNet:
    """MicroNet-M1# (≈1.2M params; see :func:`micronet.config.sharp_variant`)."""
    return _create("micronet_m1_sharp", pretrained, kwargs)


@register_model
def micronet_m2_sharp(pretrained: bool = False, **kwargs: Any) -> MicroNet:
    """MicroNet-M2# (≈1.4M params)."""
    return _create("micronet_m2_sharp", pretrained, kwargs)


@register_model
def micronet_m3_sharp(pretrained: bool = False, **kwargs: Any) -> MicroNet:
    """MicroNet-M3# (≈1.6M params)."""
    return _create("micronet_m3_sharp", pretrained, kwargs)
