"""Explicit inference forms: re-parameterise a trained model into a faster one that computes the same function.

Dynamic layers carry work that does not depend on the input — BatchNorm affine maps, the output maps of coefficient
branches, pairs of convolutions that compose into one. A model's own forward always runs its defining modules (so
hooks, FLOP counters, ``torch.compile``, fx, ``torch.export`` and ONNX see the real graph, whatever the grad mode);
the folded form is a separate, eval-only model obtained by an explicit call, the way timm's
``reparameterize_model`` or peft's ``merge_and_unload`` work:

    fast = reparameterize_model(model)      # a copy; `model` is untouched

A module opts in by defining ``reparameterize(self) -> nn.Module``, returning a new module (built from standard
torch modules where possible) equal to it in eval mode. :func:`reparameterize_model` walks the model top-down and
replaces each such module by its result (a method that returns None, timm's in-place convention, keeps the module
as it converted itself); the children of a replaced module are not visited (the parent decides how
its parts fuse). :func:`fold_batchnorm` is the one BN-folding helper every package uses.
"""

from __future__ import annotations

import copy
from typing import Protocol, runtime_checkable

import torch
from torch import nn

__all__ = ["Reparameterizable", "fold_batchnorm", "reparameterize_model"]

_BN = (nn.BatchNorm1d, nn.BatchNorm2d)


@runtime_checkable
class Reparameterizable(Protocol):
    """A module with an explicit inference form."""

    def reparameterize(self) -> nn.Module:
        """A new module computing the same function as ``self`` in eval mode."""
        ...


def _replace(module: nn.Module) -> int:
    count = 0
    for name, child in list(module.named_children()):
        if isinstance(child, Reparameterizable):
            new = child.reparameterize()
            if new is None:  # timm's convention: converted in place
                new = child
            elif not isinstance(new, nn.Module):
                raise TypeError(
                    f"{type(child).__name__}.reparameterize() returned {type(new).__name__}, expected an nn.Module"
                )
            setattr(module, name, new.eval())
            count += 1
        else:
            count += _replace(child)
    return count


@torch.no_grad()
def reparameterize_model(model: nn.Module, *, inplace: bool = False) -> nn.Module:
    """Return the inference form of ``model``: every sub-module with ``reparameterize()`` replaced by its result.

    Args:
        model: a trained model (its eval-mode function is what is preserved).
        inplace: modify ``model`` itself instead of a deep copy.

    Returns:
        the converted model, in eval mode. It is meant for inference only: its fused weights are not the trainable
        parameters of the original.
    """
    net = model if inplace else copy.deepcopy(model)
    net.eval()
    if isinstance(net, Reparameterizable):
        new = net.reparameterize()
        return (net if new is None else new).eval()
    _replace(net)
    return net


@torch.no_grad()
def fold_batchnorm(layer: nn.Conv2d | nn.Linear, bn: nn.BatchNorm1d | nn.BatchNorm2d) -> nn.Conv2d | nn.Linear:
    """Fold an eval-mode BatchNorm that follows ``layer`` into a copy of it: W' = W·γ/σ, b' = (b − μ)·γ/σ + β,
    with σ = √(running_var + ε). Returns a new Conv2d / Linear with a bias; the inputs are not modified.

    Raises:
        TypeError: unsupported layer / norm types.
        ValueError: channel counts differ, or the norm has no running statistics.
    """
    if not isinstance(layer, (nn.Conv2d, nn.Linear)) or not isinstance(bn, _BN):
        raise TypeError(
            f"fold_batchnorm: expected Conv2d/Linear + BatchNorm, got {type(layer).__name__} + {type(bn).__name__}"
        )
    out_features = layer.out_channels if isinstance(layer, nn.Conv2d) else layer.out_features
    if bn.num_features != out_features:
        raise ValueError(
            f"fold_batchnorm: {type(layer).__name__} has {out_features} outputs, BatchNorm {bn.num_features} features"
        )
    if bn.running_mean is None or bn.running_var is None:
        raise ValueError("fold_batchnorm: the BatchNorm tracks no running statistics (track_running_stats=False)")
    scale = torch.rsqrt(bn.running_var + bn.eps)
    if bn.weight is not None:
        scale = scale * bn.weight
    shift = -bn.running_mean * scale
    if bn.bias is not None:
        shift = shift + bn.bias
    fused = copy.deepcopy(layer)
    view = (-1,) + (1,) * (layer.weight.dim() - 1)
    fused.weight = nn.Parameter(layer.weight * scale.view(view), requires_grad=layer.weight.requires_grad)
    bias = shift if layer.bias is None else layer.bias * scale + shift
    fused.bias = nn.Parameter(bias, requires_grad=layer.weight.requires_grad)
    return fused
