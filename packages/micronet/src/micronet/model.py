"""MicroNet M0–M3 (thesis Section 4.4, Table 4.1) built from the typed rows of :mod:`micronet.config`, registered
with timm (``timm.create_model("micronet_m0")`` after ``import micronet``)."""

from __future__ import annotations

import math
from dataclasses import replace
from functools import partial
from typing import Any

import torch
from timm.layers import DropPath
from timm.models import generate_default_cfgs, register_model
from torch import Tensor, nn

from dyncore.models import build_timm_model, default_cfg
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
    "classifier",
    "init_weights",
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


class Stem(nn.Module):
    """conv 3×1 stride (s,1) → BN → conv 1×3 stride (1,s) groups s1 (→ s1·s2) → BN → shuf(s1) → ReLU6 (children
    ``0``–``3``; s = 2, or 1 for the 32×32-data variant).

    The stem stride is also kept as the int64 buffer ``stride`` of the state_dict, and loading a state_dict whose
    recorded stride differs raises a ValueError: a checkpoint trained with stride 1 cannot be loaded into a stride-2
    model (or back) without an error.
    """

    stride: Tensor
    compose: bool = True  # reparameterize() composes the 3×1 / 1×3 pair into one 3×3 conv

    def __init__(self, spec: StemSpec) -> None:
        super().__init__()
        k, s, pad = spec.kernel, spec.stride, spec.kernel // 2
        layers = (
            ConvBN(spec.in_channels, spec.s1, (k, 1), stride=(s, 1), padding=(pad, 0)),
            ConvBN(spec.s1, spec.out_channels, (1, k), stride=(1, s), padding=(0, pad), groups=spec.s1),
            ChannelShuffle(spec.s1),
            nn.ReLU6(),
        )
        for i, m in enumerate(layers):
            self.add_module(str(i), m)
        self.spec = spec
        self.out_channels = spec.out_channels
        self.register_buffer("stride", torch.tensor(spec.stride, dtype=torch.int64))

    def forward(self, x: Tensor) -> Tensor:
        for m in self.children():
            x = m(x)
        return x

    def _load_from_state_dict(  # type: ignore[no-untyped-def]
        self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
    ) -> None:
        key = prefix + "stride"
        saved = state_dict.get(key)
        if isinstance(saved, Tensor) and saved.device.type != "meta" and int(saved) != self.spec.stride:
            raise ValueError(
                f"the checkpoint's MicroNet stem has stride {int(saved)} but this model's has {self.spec.stride}: "
                f"rebuild the model with stem_stride={int(saved)} (e.g. timm.create_model(name, "
                f"stem_stride={int(saved)}, ...) or dyncore.models.create_from_spec(checkpoint['model_spec']))"
            )
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )

    def reparameterize(self) -> nn.Module:
        """Eval-only stem: BNs folded, the 3×1 / 1×3 pair composed into one 3×3 conv (:mod:`micronet.reparam`)."""
        from micronet.reparam import convert_sequence

        return convert_sequence(list(self.children()), compose_depthwise=self.compose)


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

    def __init__(self, row: BlockRow, *, drop_path: float = 0.0) -> None:
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
        if drop_path and not self.residual:
            raise ValueError(f"MicroBlock: drop_path={drop_path} needs an identity shortcut; this block has none")
        # stochastic depth (Huang et al. 2016) on the residual branch; timm's per-sample DropPath
        self.drop_path = DropPath(drop_path) if drop_path else nn.Identity()

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
        return x + self.drop_path(y) if self.residual else y

    def reparameterize(self) -> nn.Module:
        """Eval-only block: BNs folded, depthwise pairs composed, shuffles composed and fused into the Dynamic
        Shift-Max before them (:mod:`micronet.reparam`)."""
        from micronet.reparam import FusedMicroBlock, convert_sequence

        compose = all(m.compose for m in self.body.modules() if isinstance(m, MicroFactorizedDepthwise))
        return FusedMicroBlock(convert_sequence(list(self.body.children()), compose_depthwise=compose), self.residual)


class MicroNetHead(nn.Module):
    """ReLU6 → GAP → h_swish → Linear(C_last→OUT) → BN1d → h_swish → Dropout(p) → Linear(OUT→classes) → BN1d →
    h_swish (the released head: the logits themselves pass BN1d + h_swish). ``num_classes=0``: no classifier
    (``fc2`` is the identity and the head returns the OUT-dimensional pre-logits)."""

    def __init__(self, in_channels: int, spec: HeadSpec, num_classes: int, drop_rate: float | None = None) -> None:
        super().__init__()
        self.pool = nn.Sequential(nn.ReLU6(), nn.AdaptiveAvgPool2d(1), nn.Flatten(1), HSwish())
        self.fc1 = nn.Sequential(nn.Linear(in_channels, spec.out_channels), nn.BatchNorm1d(spec.out_channels), HSwish())
        self.dropout = nn.Dropout(spec.dropout if drop_rate is None else drop_rate)
        self.hidden_size = spec.out_channels
        self.fc2: nn.Module = classifier(spec.out_channels, num_classes)

    def forward(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        x = self.dropout(self.fc1(self.pool(x)))
        return x if pre_logits else self.fc2(x)

    def reparameterize(self) -> nn.Module:
        """Eval-only head with both BatchNorm1d folded into their Linear layers."""
        from micronet.layers import fold_bn
        from micronet.reparam import FusedHead

        fc1 = fold_bn(self.fc1[0], self.fc1[1])  # type: ignore[arg-type,index]
        fc2 = fold_bn(self.fc2[0], self.fc2[1]) if isinstance(self.fc2, nn.Sequential) else None  # type: ignore[arg-type]
        return FusedHead(fc1, fc2)  # type: ignore[arg-type]


def classifier(in_features: int, num_classes: int) -> nn.Module:
    """The released classifier Linear(in→classes) → BN1d → h_swish, or the identity for ``num_classes=0``."""
    if num_classes == 0:
        return nn.Identity()
    return nn.Sequential(nn.Linear(in_features, num_classes), nn.BatchNorm1d(num_classes), HSwish())


INITS = ("default", "released")


class MicroNet(nn.Module):
    """MicroNet classifier: stem → Micro-Blocks (rows of ``config``) → head.

    Args:
        config: a :class:`MicroNetConfig` (``micronet.config.M0`` …) or its name.
        num_classes: classifier outputs (0: no classifier, the model returns pre-logits).
        in_chans: input channels.
        drop_rate: overrides the config's dropout before the classifier.
        drop_path_rate: stochastic depth: the residual branch of residual block i (of n blocks) is dropped per sample
            with probability drop_path_rate·i/(n−1) in training (timm's rule). A model without residual blocks (M0,
            M1) rejects a non-zero rate.
        stem_stride: 2 (ImageNet) or 1 (the small-input variant for 32×32 images: total stride 16).
        init: "default" (scale-preserving, see :meth:`reset_parameters`) or "released" (the authors').

    Shapes: (B, in_chans, H, W) with H, W ≥ the total stride (32, or 16 with stem_stride=1) → (B, num_classes).
    """

    def __init__(
        self,
        config: MicroNetConfig | str,
        *,
        num_classes: int = 1000,
        in_chans: int = 3,
        drop_rate: float | None = None,
        drop_path_rate: float = 0.0,
        stem_stride: int | None = None,
        init: str = "default",
        global_pool: str = "avg",
    ) -> None:
        super().__init__()
        cfg = get_config(config) if isinstance(config, str) else config
        if not isinstance(num_classes, int) or num_classes < 0:
            raise ValueError(f"MicroNet: num_classes must be a non-negative int, got {num_classes!r}")
        if init not in INITS:
            raise ValueError(f"MicroNet: init must be one of {INITS}, got {init!r}")
        if not 0.0 <= drop_path_rate < 1.0:
            raise ValueError(f"MicroNet: drop_path_rate must be in [0, 1), got {drop_path_rate}")
        _check_pool(global_pool)
        cfg = cfg if cfg.stem.in_channels == in_chans else _with_in_chans(cfg, in_chans)
        if stem_stride is not None and stem_stride != cfg.stem.stride:
            if stem_stride not in (1, 2):
                raise ValueError(f"MicroNet: stem_stride must be 1 or 2, got {stem_stride!r}")
            cfg = replace(cfg, stem=replace(cfg.stem, stride=stem_stride))
        self.config = cfg
        self.num_classes = num_classes
        self.in_chans = cfg.stem.in_channels
        self.drop_rate = cfg.head.dropout if drop_rate is None else drop_rate
        self.stem = Stem(cfg.stem)
        residual = [i for i, row in enumerate(cfg.blocks) if row.residual]
        if drop_path_rate and not residual:
            raise ValueError(
                f"MicroNet({cfg.name}): drop_path_rate={drop_path_rate} given, but the model has no residual blocks "
                "(stochastic depth drops identity-shortcut branches)"
            )
        n = len(cfg.blocks)
        prev = cfg.stem.out_channels
        reduction = cfg.stem.stride
        self.feature_info: list[dict[str, Any]] = [dict(num_chs=prev, reduction=reduction, module="stem")]
        blocks = []
        for i, row in enumerate(cfg.blocks):
            if row.cin != prev:
                raise ValueError(f"MicroNet({cfg.name}): block {i + 1} expects {row.cin} input channels, got {prev}")
            rate = drop_path_rate * i / max(1, n - 1) if row.residual else 0.0
            blocks.append(MicroBlock(row, drop_path=rate))
            prev = row.cout
            if row.stride > 1:
                reduction *= row.stride
                self.feature_info.append(dict(num_chs=row.cout, reduction=reduction, module=f"blocks.{i}"))
            else:  # a stride-1 block extends the current level: its output is the level's last feature
                self.feature_info[-1] = dict(num_chs=row.cout, reduction=reduction, module=f"blocks.{i}")
        self.blocks = nn.Sequential(*blocks)
        self.num_features = prev
        self.head = MicroNetHead(prev, cfg.head, num_classes, self.drop_rate)
        self.head_hidden_size = self.head.hidden_size
        self.total_stride = cfg.total_stride
        self.init = init
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Re-initialise every parameter with this model's ``init`` (:func:`init_weights`)."""
        init_weights(self, self.init)

    def check_input(self, x: Tensor) -> None:
        if x.dim() != 4 or x.shape[1] != self.in_chans:
            raise ValueError(f"MicroNet: expected input (B, {self.in_chans}, H, W), got shape {tuple(x.shape)}")
        if x.shape[-2] < self.total_stride or x.shape[-1] < self.total_stride:
            raise ValueError(
                f"MicroNet: input {x.shape[-2]}×{x.shape[-1]} is smaller than the network's total stride "
                f"{self.total_stride}; use at least {self.total_stride}×{self.total_stride}"
            )

    def get_classifier(self) -> nn.Module:
        """The classifier: Linear → BN1d → h_swish (``head.fc2``; the identity when num_classes is 0)."""
        return self.head.fc2

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        """A freshly initialised classifier for ``num_classes`` outputs (0: none; the model returns pre-logits)."""
        if not isinstance(num_classes, int) or num_classes < 0:
            raise ValueError(f"MicroNet.reset_classifier: num_classes must be a non-negative int, got {num_classes!r}")
        if global_pool is not None:
            _check_pool(global_pool)
        self.num_classes = num_classes
        fc2 = classifier(self.head.hidden_size, num_classes)
        for m in fc2.modules():
            if isinstance(m, nn.Linear):
                nn.init.normal_(
                    m.weight, 0.0, 0.01 if self.init == "released" else _HEAD_GAIN / math.sqrt(m.in_features)
                )
                nn.init.zeros_(m.bias)
        device = self.head.fc1[0].weight.device  # type: ignore[index]
        dtype = self.head.fc1[0].weight.dtype  # type: ignore[index]
        self.head.fc2 = fc2.to(device=device, dtype=dtype)

    def forward_features(self, x: Tensor) -> Tensor:
        """(B, in_chans, H, W) → (B, C_last, H/s, W/s) with s the total stride."""
        if not (torch.jit.is_scripting() or torch.jit.is_tracing() or isinstance(x, torch.fx.Proxy)):
            self.check_input(x)
        return self.blocks(self.stem(x))

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        """(B, C_last, h, w) → logits (B, num_classes), or the (B, OUT_CH) pre-logits with ``pre_logits``."""
        return self.head(x, pre_logits)  # type: ignore[no-any-return]

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(x))


_HEAD_GAIN = 2.0


def init_weights(module: nn.Module, init: str = "default") -> None:
    """Initialise every parameter of ``module`` (a MicroNet or any part of one).

    ``init="released"`` (the authors'): conv N(0, √(2/(k_h·k_w·C_out))) (fan-out, not divided by groups); BN 1/0;
    every Linear N(0, 0.01), bias 0. Because the group convs' fan-out ignores the groups and every Dynamic
    Shift-Max starts as (nearly) the identity, activations shrink at every layer: a fresh M0 outputs ≈1e-14 in
    eval (M3 ≈1e-22), where BatchNorm uses its initial statistics.

    ``init="default"`` departs from it only in the scale of the convs and of the two head Linears, chosen so that
    activations keep their scale in eval: conv N(0, g/√fan_in) with fan_in = (C_in/groups)·k_h·k_w and g = √2 for
    a conv followed by ReLU6 (He), else 1 (LeCun: the Shift-Max layers are nearly linear at their init); head
    Linears N(0, 2/√in_features) (h_swish has slope 1/2 at 0), bias 0. The Dynamic Shift-Max coefficient FCs
    keep the authors' N(0, 0.01) (every coefficient starts at its init value). A fresh model's logits then have
    std ≈ 1e-2–1e-1 (tests).
    """
    if init not in INITS:
        raise ValueError(f"init_weights: init must be one of {INITS}, got {init!r}")
    coefficient_fcs = {
        id(m)
        for act in module.modules()
        if isinstance(act, (DynamicShiftMax, StaticShiftMax))
        for m in act.modules()
        if isinstance(m, nn.Linear)
    }
    before_relu = _convs_before_relu(module)
    released = init == "released"
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            if released:
                std = math.sqrt(2.0 / (m.kernel_size[0] * m.kernel_size[1] * m.out_channels))
            else:
                std = (math.sqrt(2.0) if id(m) in before_relu else 1.0) / math.sqrt(m.weight[0].numel())
            nn.init.normal_(m.weight, 0.0, std)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm2d, nn.BatchNorm1d)):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            std = 0.01 if released or id(m) in coefficient_fcs else _HEAD_GAIN / math.sqrt(m.in_features)
            nn.init.normal_(m.weight, 0.0, std)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


def _convs_before_relu(model: nn.Module) -> set[int]:
    """ids of the convs whose output (through BN and channel permutations only) enters a ReLU/ReLU6."""
    out: set[int] = set()
    for seq in model.modules():
        if not isinstance(seq, (nn.Sequential, Stem)) or isinstance(seq, (ConvBN, MicroFactorizedDepthwise)):
            continue
        last_conv: nn.Conv2d | None = None
        for m in seq.children():
            if isinstance(m, (ConvBN, MicroFactorizedDepthwise)):
                convs = [c for c in m.modules() if isinstance(c, nn.Conv2d)]
                last_conv = convs[-1] if convs else None
            elif isinstance(m, (nn.ReLU, nn.ReLU6)) and last_conv is not None:
                out.add(id(last_conv))
                last_conv = None
            elif not isinstance(m, ChannelShuffle):
                last_conv = None
    return out


def _check_pool(global_pool: str) -> None:
    if global_pool != "avg":
        raise ValueError(f"MicroNet: only global_pool='avg' is supported (the released head), got {global_pool!r}")


def _with_in_chans(cfg: MicroNetConfig, in_chans: int) -> MicroNetConfig:
    if not isinstance(in_chans, int) or in_chans <= 0:
        raise ValueError(f"MicroNet: in_chans must be a positive int, got {in_chans!r}")
    return replace(cfg, stem=replace(cfg.stem, in_channels=in_chans))


def micronet(config: MicroNetConfig | str, *, num_classes: int = 1000, **kwargs: Any) -> MicroNet:
    """Build a MicroNet from a config or config name (keyword-only options as :class:`MicroNet`)."""
    return MicroNet(config, num_classes=num_classes, **kwargs)


# --- timm registration ------------------------------------------------------------------------------------------

MODEL_KWARGS = ("num_classes", "in_chans", "drop_rate", "drop_path_rate", "stem_stride", "init", "global_pool")
FEATURE_CFG: dict[str, Any] = {"flatten_sequential": True, "out_indices": (0, 1, 2, 3, 4)}


def _cfg(name: str) -> dict[str, Any]:
    """The pretrained_cfg: exactly micronet's own eval transform (:mod:`micronet.data`) and the head's names."""
    from micronet.data import CROP_PCT, IMAGENET_MEAN, IMAGENET_STD, INTERPOLATION

    return default_cfg(
        input_size=(3, 224, 224),
        pool_size=(7, 7),
        crop_pct=CROP_PCT,
        interpolation=INTERPOLATION,
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        first_conv="stem.0.0",
        classifier="head.fc2.0",
        num_classes=1000,
        license="mit",
        notes=(
            f"{name}: weights are not downloaded; pass the authors' released file with "
            "pretrained=True, pretrained_cfg_overlay=dict(file=PATH)"
        ),
    )


default_cfgs = generate_default_cfgs({name: _cfg(name) for name in CONFIGS})


def _create(name: str, pretrained: bool, kwargs: dict[str, Any]) -> MicroNet:
    from micronet.released import checkpoint_filter_fn

    return build_timm_model(  # type: ignore[no-any-return]
        partial(MicroNet, CONFIGS[name]),
        name,
        pretrained,
        feature_cfg=dict(FEATURE_CFG),
        pretrained_filter_fn=checkpoint_filter_fn,
        model_kwargs_allowed=MODEL_KWARGS,
        **kwargs,
    )


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
