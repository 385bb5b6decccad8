"""The explicit fast inference form of a DCD model: :func:`reparameterize` (eval only, a new model).

A DCD model's own forward always runs its defining modules. The fast form folds everything that does not depend on
the input — the BNs of the stabilised form, hsig2's affine part, the per-sample bias, the BN after every conv — into
standard modules (:class:`dcd.layers.DCDInference`, ``nn.Conv2d`` via :func:`dyncore.nn.fold_batchnorm`), through
:func:`dyncore.nn.reparameterize_model` (each ``ConvBNAct`` and DCD layer defines ``reparameterize()``).

With an ``example`` input the application form of every 1×1 DCD layer is fixed from its output size: kernel
synthesis (one Λ⊙W0 + PΦQᵀ per sample, a batched GEMM) where it costs fewer MAdds than the feature-wise residual
(:meth:`DynamicConvDecomposition.apply_mode`); k×k layers stay feature-wise.
"""

from __future__ import annotations

import copy

import torch
from torch import Tensor, nn

from dcd.layers import DynamicConvDecomposition
from dcd.models.common import dynamic_layers
from dyncore.nn import ApplyMode, check_mode, reparameterize_model

__all__ = ["choose_forms", "reparameterize", "set_apply_mode"]


def set_apply_mode(model: nn.Module, mode: str) -> int:
    """Set the application form of every dynamic layer; returns how many were set.

    ``"auto"`` lets every DCD layer choose in training (:meth:`DynamicConvDecomposition._train_by_synthesis`) and
    sets the other dynamic layers, which have no such rule, to "featurewise"."""
    if mode != "auto":
        mode = check_mode(mode)
    layers = dynamic_layers(model)
    for _, m in layers:
        chosen = "featurewise" if mode == "auto" and not isinstance(m, DynamicConvDecomposition) else mode
        setattr(m, "mode", chosen)  # noqa: B010 — every dynamic layer has a mutable .mode
    return len(layers)


@torch.no_grad()
def choose_forms(model: nn.Module, example: Tensor) -> dict[str, ApplyMode]:
    """Record every DCD layer's output size on ``example`` and set its ``fast_form`` (name → form).

    The form is the cheaper one in MAdds for the example's batch size (:meth:`DynamicConvDecomposition.apply_mode`),
    restricted to what the fast form supports for any batch: synthesis only on 1×1 layers without padding."""
    sizes: dict[str, tuple[int, int]] = {}
    layers = [(n, m) for n, m in model.named_modules() if isinstance(m, DynamicConvDecomposition)]
    hooks = [
        m.register_forward_hook(
            lambda mod, inp, out, name=name: sizes.__setitem__(name, tuple(out.shape[2:]) if out.dim() == 4 else (1, 1))
        )
        for name, m in layers
    ]
    was_training = model.training
    try:
        model.eval()
        model(example)
    finally:
        model.train(was_training)
        for h in hooks:
            h.remove()
    chosen: dict[str, ApplyMode] = {}
    for name, layer in layers:
        form: ApplyMode = "featurewise"
        if name in sizes and layer.kernel_size == 1 and layer.padding == 0:
            form = layer.apply_mode(int(example.shape[0]), sizes[name])
        layer.fast_form = form  # type: ignore[assignment]
        chosen[name] = form
    return chosen


def reparameterize(model: nn.Module, example: Tensor | None = None, *, inplace: bool = False) -> nn.Module:
    """The explicit fast inference form of ``model`` (eval mode; a copy unless ``inplace``).

    Equal outputs in eval mode (tests: relative ≤ 1e-5 in float32 on BN-calibrated models). ``example`` fixes each
    1×1 DCD layer's application form by MAdds (see the module docstring); without it every layer is feature-wise."""
    net = model if inplace else copy.deepcopy(model)
    net.eval()
    if example is not None:
        choose_forms(net, example)
    return reparameterize_model(net, inplace=True)
