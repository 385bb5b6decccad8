"""What every model family shares: the dynamic-layer configuration (as data) and the layer factories."""

from __future__ import annotations

import copy
import math
from collections import OrderedDict
from dataclasses import dataclass, replace
from typing import Any

from torch import Tensor, nn

from dcd.layers import (
    CondConv2d,
    DCDClassifier,
    DepthwiseDCD,
    DynamicConv2d,
    DynamicConvDecomposition,
    JointFusionDCD,
)
from dcd.layers.dcd import VARIANTS
from dcd.rules import LatentRule, scale_latent
from dyncore.nn import fold_batchnorm

__all__ = ["KINDS", "ConvBNAct", "DynamicConfig", "conv_weight_init", "drop_rate_arg", "dynamic_layers"]

KINDS = ("static", "dcd", "dyconv", "condconv")


@dataclass(frozen=True)
class DynamicConfig:
    """Which dynamic layer a model uses and where.

    Attributes:
        kind: "static", "dcd", "dyconv" (K=4, softmax/τ) or "condconv" (K=8, sigmoid).
        variant: DCD formulation, Table 3.1 ("full", "lambda", "residual").
        latent_mult: multiplier on every rule's L (Table 3.2).
        blocks: B diagonal blocks of the dynamic residual (Eq. 3.7).
        stabilised: released BN-stabilised form (True) or the plain Eq. 3.6.
        mode: "auto" (default), "featurewise" or "synthesis" for every dynamic layer (see :func:`dcd.set_apply_mode`);
            "auto" lets each DCD layer pick per call (:meth:`DynamicConvDecomposition.apply_mode`) and means
            "featurewise" for the other dynamic layers.
        pointwise, depthwise, classifier: DCD at PW / DW (Eq. 3.8) / CLS layers (Table 3.3b; default PW + CLS).
        kxk: ResNet k×k form: "channel" (channel fusion alone, released) or "joint" (Eq. 3.9).
        fc_squeeze: MobileNetV2 S divisor (16 for ×1.0, 8 for ×0.5/×0.35).
        temperature: initial DY-Conv softmax temperature.
        fusion_bn_init: initial γ of BN(Φ·z) in DCD layers (1 as released; 0 starts each layer as ΛW0 + PQᵀ).
    """

    kind: str = "dcd"
    variant: str = "full"
    latent_mult: float = 1.0
    blocks: int = 1
    stabilised: bool = True
    mode: str = "auto"
    pointwise: bool = True
    depthwise: bool = False
    classifier: bool = True
    kxk: str = "channel"
    fc_squeeze: int = 8
    temperature: float = 30.0
    fusion_bn_init: float = 1.0

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"DynamicConfig.kind must be one of {KINDS}, got {self.kind!r}")
        if self.variant not in VARIANTS:
            raise ValueError(f"DynamicConfig.variant must be one of {VARIANTS}, got {self.variant!r}")
        if self.kxk not in ("channel", "joint"):
            raise ValueError(f"DynamicConfig.kxk must be 'channel' or 'joint', got {self.kxk!r}")
        if self.mode not in ("auto", "featurewise", "synthesis"):
            raise ValueError(f"DynamicConfig.mode must be 'auto', 'featurewise' or 'synthesis', got {self.mode!r}")
        if not self.latent_mult > 0:
            raise ValueError(f"DynamicConfig.latent_mult must be positive, got {self.latent_mult}")

    @property
    def fixed_mode(self) -> str:
        """The mode of layers without an "auto" rule (depthwise/joint DCD, DY-Conv, CondConv)."""
        return "featurewise" if self.mode == "auto" else self.mode

    def with_(self, **changes: Any) -> DynamicConfig:
        return replace(self, **changes)

    def dcd(self, in_ch: int, out_ch: int, rule: LatentRule, kernel_size: int = 1, stride: int = 1) -> nn.Module:
        """A DCD conv with the sizes of ``rule``."""
        return DynamicConvDecomposition(
            in_ch, out_ch, kernel_size, stride=stride, latent=scale_latent(rule.latent, self.latent_mult),
            squeeze=rule.squeeze, pool=rule.pool, variant=self.variant, blocks=self.blocks,
            stabilised=self.stabilised, fusion_bn_init=self.fusion_bn_init, mode=self.mode,
        )  # fmt: skip

    def vanilla(self, in_ch: int, out_ch: int, kernel_size: int, stride: int = 1, groups: int = 1) -> nn.Module:
        """A DY-Conv or CondConv layer (``kind`` must be one of them)."""
        if self.kind == "dyconv":
            return DynamicConv2d(
                in_ch,
                out_ch,
                kernel_size,
                stride=stride,
                groups=groups,
                temperature=self.temperature,
                mode=self.fixed_mode,
            )
        return CondConv2d(in_ch, out_ch, kernel_size, stride=stride, groups=groups, mode=self.fixed_mode)

    def depthwise_dcd(self, channels: int, kernel_size: int, stride: int) -> nn.Module:
        return DepthwiseDCD(
            channels, kernel_size, stride=stride, use_lambda=self.variant != "residual", mode=self.fixed_mode
        )

    def joint_dcd(self, in_ch: int, out_ch: int, kernel_size: int, stride: int) -> nn.Module:
        return JointFusionDCD(
            in_ch, out_ch, kernel_size, stride=stride, use_lambda=self.variant != "residual", mode=self.fixed_mode
        )

    def dcd_classifier(self, in_features: int, num_classes: int) -> nn.Module:
        return DCDClassifier(
            in_features, num_classes, variant=self.variant, stabilised=self.stabilised,
            fusion_bn_init=self.fusion_bn_init, mode=self.mode,
        )  # fmt: skip


def static_conv(in_ch: int, out_ch: int, kernel_size: int, stride: int = 1, groups: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_ch, out_ch, kernel_size, stride, kernel_size // 2, groups=groups, bias=False)


class ConvBNAct(nn.Sequential):
    """conv → BN → activation (children named ``conv``, ``bn``, ``act``). :meth:`reparameterize` folds the BN."""

    def __init__(self, conv: nn.Module, out_ch: int, act: type[nn.Module] | None = nn.ReLU6) -> None:
        layers: OrderedDict[str, nn.Module] = OrderedDict(conv=conv, bn=nn.BatchNorm2d(out_ch))
        if act is not None:
            layers["act"] = act(inplace=True)
        super().__init__(layers)

    def reparameterize(self) -> nn.Module:
        """Eval-only copy with the BN folded into the conv (a static conv by :func:`dyncore.nn.fold_batchnorm`, a DCD
        layer by :meth:`DynamicConvDecomposition.reparameterize`); other dynamic layers keep their BN."""
        conv, bn = self._modules["conv"], self._modules["bn"]
        assert conv is not None and isinstance(bn, nn.BatchNorm2d)
        act = self._modules.get("act")
        tail = [] if act is None else [copy.deepcopy(act)]
        if isinstance(conv, nn.Conv2d):
            fused: nn.Module = fold_batchnorm(conv, bn)
        elif isinstance(conv, DynamicConvDecomposition):
            fused = conv.reparameterize(bn=bn)
        else:
            return nn.Sequential(copy.deepcopy(conv), copy.deepcopy(bn), *tail)
        return nn.Sequential(fused, *tail) if tail else fused


DYNAMIC_TYPES = (DynamicConvDecomposition, DepthwiseDCD, JointFusionDCD, CondConv2d, DynamicConv2d)


def dynamic_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """All dynamic layers (DCD, depthwise/joint DCD, DY-Conv, CondConv) of ``model`` with their names."""
    return [(n, m) for n, m in model.named_modules() if isinstance(m, DYNAMIC_TYPES)]


def _fan_out_normal(w: Tensor, kernel_size: int, groups: int = 1, gain: float = 1.0) -> None:
    """N(0, gain·√(2/fan_out)) with fan_out = k²·C_out/groups (per group, as timm initialises depthwise convs)."""
    fan_out = max(kernel_size * kernel_size * w.shape[-4] // groups, 1)
    nn.init.normal_(w, 0.0, gain * math.sqrt(2.0 / fan_out))


def _groups(m: nn.Module) -> int:
    if isinstance(m, DepthwiseDCD):
        return m.channels
    return int(getattr(m, "groups", 1))


def _expert_gain(m: nn.Module) -> float:
    """Scale of each expert so that the mixed kernel Σ π_k W_k has the fan-out variance at initialisation, where the
    routing is close to uniform: DY-Conv π_k ≈ 1/K (softmax at τ = 30) → √K; CondConv π_k ≈ ½ (sigmoid) → 2/√K."""
    k = int(getattr(m, "num_experts", 1))
    return math.sqrt(k) if isinstance(m, DynamicConv2d) else 2.0 / math.sqrt(k)


def conv_weight_init(model: nn.Module, *, linear_std: float | None = 0.01) -> None:
    """Initialisation (paper, with three departures that keep a fresh model's eval outputs finite and O(1)).

    Paper: convs N(0, √(2/(k²·C_out))) (every conv-like weight of the dynamic layers too), BN 1/0, Linear
    N(0, linear_std) with zero bias (``linear_std=None`` keeps PyTorch's Linear default, as for ResNet).
    Departures (README, "Initialisation"): (1) grouped/depthwise convs count fan-out per group, k²·C_out/groups
    (timm's rule; with k²·C_out every depthwise conv shrinks the signal by ~C, and a fresh MobileNetV2 outputs ~1e-9);
    (2) ResNets start every residual branch at zero (γ = 0 in each block's last BN: timm's ``zero_init_last``,
    Goyal et al. 2017; :class:`dcd.models.ResNet`): with the authors' init Φ(x)·z is quadratic in x and z = Qx has
    variance 2·C_in/L·Var(x) (fan-out of Q is L); with fresh BN statistics (0, 1) in eval nothing renormalises
    them, so the scale grows layer after layer (NaN for ResNet-18/50, 1e34 for ResNet-10, as in the authors' code);
    (3) DY-Conv/CondConv experts
    are scaled so the mixed kernel has the fan-out variance (:func:`_expert_gain`)."""
    for m in model.modules():
        if isinstance(m, DCDClassifier):
            if linear_std is not None:
                for w in m.conv_weights():
                    nn.init.normal_(w, 0.0, linear_std)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Conv2d):
            _fan_out_normal(m.weight, m.kernel_size[0], m.groups)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, DYNAMIC_TYPES):
            for w in m.conv_weights():
                if w.dim() == 5:
                    for e in w:
                        _fan_out_normal(e, e.shape[-1], _groups(m), _expert_gain(m))
                elif w is getattr(m, "weight", None):
                    _fan_out_normal(w, w.shape[-1], _groups(m))
                else:
                    _fan_out_normal(w, w.shape[-1])
        elif isinstance(m, nn.modules.batchnorm._BatchNorm) and m.affine:
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear) and linear_std is not None:
            nn.init.normal_(m.weight, 0.0, linear_std)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
    for m in model.modules():
        if isinstance(m, DynamicConvDecomposition) and m.use_residual and m.stabilised:
            nn.init.constant_(m.bn_phi.weight, m.fusion_bn_init)  # the BN loop above reset every γ to 1


def drop_rate_arg(drop_rate: float | None, dropout: float | None, *, default: float, who: str) -> float:
    """The dropout before the classifier from timm's ``drop_rate`` or its alias ``dropout`` (not both)."""
    if drop_rate is not None and dropout is not None and drop_rate != dropout:
        raise TypeError(f"{who}: pass drop_rate or its alias dropout, not both (got {drop_rate} and {dropout})")
    rate = drop_rate if drop_rate is not None else dropout if dropout is not None else default
    if not 0.0 <= rate < 1.0:
        raise ValueError(f"{who}: drop_rate must be in [0, 1), got {rate}")
    return float(rate)
