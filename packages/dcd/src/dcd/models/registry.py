"""timm registration: one entrypoint per (architecture, kind), built through timm's ``build_model_with_cfg``.

Every entrypoint goes through :func:`dyncore.models.build_timm_model`, so the models behave as timm's own:
``pretrained_cfg`` (mean/std/input size/interpolation/crop equal to ``dcd``'s eval transform,
:func:`dcd.data.eval_transform_cfg`), ``features_only=True`` + ``out_indices`` (from ``feature_info``),
``pretrained=True`` with ``pretrained_cfg_overlay=dict(file=PATH)`` — the authors' released files are renamed by
:func:`dcd.released.filter_released` — and a ``model_spec`` recorded on the model. An unsupported keyword is a
TypeError naming it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from timm.models import generate_default_cfgs, register_model
from torch import nn

from dcd.data import eval_transform_cfg
from dcd.models.common import DynamicConfig
from dcd.models.mobilenetv2 import mobilenetv2
from dcd.models.resnet import resnet
from dcd.released import filter_released
from dyncore.models import build_timm_model, default_cfg

__all__ = ["ARCHS", "MODEL_NAMES", "create"]

ARCHS: dict[str, tuple[Callable[..., nn.Module], dict[str, Any]]] = {
    "mobilenetv2_100": (mobilenetv2, {"width_mult": 1.0}),
    "mobilenetv2_050": (mobilenetv2, {"width_mult": 0.5}),
    "mobilenetv2_035": (mobilenetv2, {"width_mult": 0.35}),
    "resnet10": (resnet, {"depth": 10}),
    "resnet18": (resnet, {"depth": 18}),
    "resnet50": (resnet, {"depth": 50, "drop_rate": 0.1}),
}
SUFFIX = {"dcd": "", "static": "_static", "dyconv": "_dyconv", "condconv": "_condconv"}
_CFG_FIELDS = frozenset(DynamicConfig.__dataclass_fields__) - {"kind"}
_COMMON = frozenset({"num_classes", "in_chans", "drop_rate", "drop_path_rate", "dropout", "small_input"}) | _CFG_FIELDS
ALLOWED: dict[str, frozenset[str]] = {
    "mobilenetv2": _COMMON | {"last_channel"},
    "resnet": _COMMON | {"width", "zero_init_last"},
}
MODEL_NAMES: list[str] = [f"dcd_{arch}{suffix}" for arch in ARCHS for suffix in SUFFIX.values()]


def _cfg(arch: str) -> dict[str, Any]:
    head = ("features.0.conv", "classifier") if arch.startswith("mobilenetv2") else ("stem.0.conv", "fc")
    return default_cfg(**eval_transform_cfg(224), pool_size=(7, 7), first_conv=head[0], classifier=head[1],
                       license="mit")  # fmt: skip


default_cfgs = generate_default_cfgs({name: _cfg(name[4:].split("_static")[0]) for name in MODEL_NAMES})


def _entrypoint(name: str, arch: str, kind: str) -> Callable[..., nn.Module]:
    builder, defaults = ARCHS[arch]
    family = "mobilenetv2" if arch.startswith("mobilenetv2") else "resnet"

    def model_cls(**kwargs: Any) -> nn.Module:
        return builder(**{**defaults, "kind": kind, **kwargs})

    def entry(pretrained: bool = False, **kwargs: Any) -> nn.Module:
        return build_timm_model(
            model_cls, name, pretrained, model_kwargs_allowed=ALLOWED[family],
            feature_cfg={"flatten_sequential": True}, pretrained_filter_fn=filter_released, **kwargs,
        )  # fmt: skip

    entry.__name__ = entry.__qualname__ = name
    entry.__module__ = __name__
    entry.__doc__ = (
        f"{arch} with {kind} layers (thesis Chapter 3). Weights: pretrained=True with "
        "pretrained_cfg_overlay=dict(file=PATH) (the authors' released file or a dcd checkpoint; never downloaded)."
    )
    return entry


for _name in MODEL_NAMES:
    _arch, _kind = next((a, k) for a in ARCHS for k, s in SUFFIX.items() if _name == f"dcd_{a}{s}")
    globals()[_name] = register_model(_entrypoint(_name, _arch, _kind))


def create(name: str, **kwargs: Any) -> nn.Module:
    """``timm.create_model(name, **kwargs)`` for a registered dcd model (a clear error for another name)."""
    import timm

    if name not in MODEL_NAMES:
        raise ValueError(f"unknown dcd model {name!r}; choose one of {MODEL_NAMES}")
    return timm.create_model(name, **kwargs)
