"""Inference form of a dynamic model: BNs folded, and each dynamic layer applied in its measured-fastest form.

* :func:`set_apply_mode` sets "featurewise" / "synthesis" on every dynamic layer.
* :func:`fold_batchnorm` folds every eval BN that directly follows a conv-like layer in an ``nn.Sequential`` (our
  ConvBNAct, torchvision's Conv2dNormActivation) into it: static convs via ``fuse_conv_bn_eval``, DCD layers via
  :meth:`DynamicConvDecomposition.fold_bn`; the BN becomes ``nn.Identity``.
* :func:`choose_modes` records each dynamic layer's input on an example and picks its form with
  :func:`dyncore.nn.fastest_mode` (kernel synthesis pays the dynamic part once per sample but a per-sample grouped conv
  is slower per MAdd; which wins depends on H·W, channels, batch and back-end).
"""

from __future__ import annotations

import copy
import itertools

import torch
from torch import Tensor, nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from dcd.layers import DynamicConvDecomposition
from dcd.models.common import dynamic_layers
from dyncore.nn import ApplyMode, check_mode, fastest_mode

__all__ = ["choose_modes", "fold_batchnorm", "inference_form", "set_apply_mode"]


def set_apply_mode(model: nn.Module, mode: str) -> int:
    """Set the application form of every dynamic layer; returns how many were set.

    ``"auto"`` lets every DCD layer choose per call (:meth:`DynamicConvDecomposition.apply_mode`) and sets the other
    dynamic layers, which have no such rule, to "featurewise"."""
    if mode != "auto":
        mode = check_mode(mode)
    layers = dynamic_layers(model)
    for _, m in layers:
        chosen = "featurewise" if mode == "auto" and not isinstance(m, DynamicConvDecomposition) else mode
        setattr(m, "mode", chosen)  # noqa: B010 — every dynamic layer has a mutable .mode
    return len(layers)


@torch.no_grad()
def fold_batchnorm(model: nn.Module) -> int:
    """Fold BN layers that follow a conv / DCD layer inside an nn.Sequential (eval only). Returns the number folded."""
    if model.training:
        raise ValueError("fold_batchnorm: call model.eval() first (folding uses the running statistics)")
    folded = 0
    for seq in [m for m in model.modules() if isinstance(m, nn.Sequential)]:
        names = list(seq._modules)
        for a, b in itertools.pairwise(names):
            conv, bn = seq._modules[a], seq._modules[b]
            if not isinstance(bn, nn.BatchNorm2d):
                continue
            if isinstance(conv, nn.Conv2d):
                seq._modules[a] = fuse_conv_bn_eval(conv, bn)
            elif isinstance(conv, DynamicConvDecomposition):
                conv.fold_bn(bn)
            else:
                continue
            seq._modules[b] = nn.Identity()
            folded += 1
    return folded


@torch.no_grad()
def choose_modes(model: nn.Module, example: Tensor, *, repeats: int = 5) -> dict[str, ApplyMode]:
    """Measure both application forms for every dynamic layer on its input from ``example`` and keep the faster one.

    Returns name → chosen mode (also set on the layers)."""
    inputs: dict[str, Tensor] = {}
    hooks = [
        m.register_forward_hook(lambda mod, inp, out, name=name: inputs.__setitem__(name, inp[0].detach()))
        for name, m in dynamic_layers(model)
    ]
    try:
        model(example)
    finally:
        for h in hooks:
            h.remove()
    chosen: dict[str, ApplyMode] = {}
    for name, layer in dynamic_layers(model):
        if name not in inputs:
            continue
        x = inputs[name]

        def run(mode: ApplyMode, layer: nn.Module = layer, x: Tensor = x) -> Tensor:
            layer.mode = mode
            return layer(x)

        chosen[name] = fastest_mode(run, repeats=repeats)
        layer.mode = chosen[name]
    return chosen


def inference_form(model: nn.Module, example: Tensor, *, repeats: int = 5) -> tuple[nn.Module, dict[str, ApplyMode]]:
    """A deep copy of ``model`` in eval mode with BNs folded and per-layer measured application forms."""
    fast = copy.deepcopy(model).eval()
    fold_batchnorm(fast)
    return fast, choose_modes(fast, example, repeats=repeats)
