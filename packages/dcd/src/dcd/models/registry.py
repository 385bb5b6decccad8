"""timm registration: one keyword-only entrypoint per (architecture, kind), created from data."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from timm.models import register_model
from torch import nn

from dcd.models.common import pop_timm_kwargs
from dcd.models.mobilenetv2 import mobilenetv2
from dcd.models.resnet import resnet

__all__ = ["ARCHS", "MODEL_NAMES", "create"]

ARCHS: dict[str, tuple[Callable[..., nn.Module], dict[str, Any]]] = {
    "mobilenetv2_100": (mobilenetv2, {"width_mult": 1.0}),
    "mobilenetv2_050": (mobilenetv2, {"width_mult": 0.5}),
    "mobilenetv2_035": (mobilenetv2, {"width_mult": 0.35}),
    "resnet10": (resnet, {"depth": 10}),
    "resnet18": (resnet, {"depth": 18}),
    "resnet50": (resnet, {"depth": 50, "dropout": 0.1}),
}
SUFFIX = {"dcd": "", "static": "_static", "dyconv": "_dyconv", "condconv": "_condconv"}
MODEL_NAMES: list[str] = []


def _entrypoint(name: str, arch: str, kind: str) -> Callable[..., nn.Module]:
    builder, defaults = ARCHS[arch]

    def entry(**kwargs: Any) -> nn.Module:
        pop_timm_kwargs(kwargs)
        return builder(**{**defaults, "kind": kind, **kwargs})

    entry.__name__ = entry.__qualname__ = name
    entry.__module__ = __name__
    entry.__doc__ = f"{arch} with {kind} layers (thesis Chapter 3). Keyword-only; no pretrained weights."
    return entry


for _arch in ARCHS:
    for _kind, _suffix in SUFFIX.items():
        _name = f"dcd_{_arch}{_suffix}"
        globals()[_name] = register_model(_entrypoint(_name, _arch, _kind))
        MODEL_NAMES.append(_name)


def create(name: str, **kwargs: Any) -> nn.Module:
    """Build a registered model by name without going through timm (same keyword arguments)."""
    if name not in MODEL_NAMES:
        raise ValueError(f"unknown dcd model {name!r}; choose one of {MODEL_NAMES}")
    return globals()[name](**kwargs)
