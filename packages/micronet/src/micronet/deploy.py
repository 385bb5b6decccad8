"""Deployment: the explicit inference form of a MicroNet, TorchScript and ONNX export with a check that can fail.

:func:`reparameterize` (alias :func:`to_inference`) returns an eval-only copy in which every module with a faster
equivalent is replaced by it (:mod:`micronet.reparam`: BN folded, factorized depthwise pairs composed into one k×k
conv, shuffles composed and fused into the Dynamic Shift-Max before them). It is exactly
:func:`dyncore.nn.reparameterize_model` applied to the model; the model itself never switches to a folded form.

:func:`export_onnx` exports (the fast form, by default) through :func:`dyncore.export.export_onnx` and checks
onnxruntime against PyTorch relative to the output scale on the traced input and on a second input of another batch
size, and also against the training form (eval) on that second input.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from dyncore.export import ExportCheckError, OnnxReport, onnx_run, relative_error
from dyncore.nn import reparameterize_model
from micronet.layers import ComposedFactorizedConv, FusedShiftMax, MicroFactorizedDepthwise, fold_bn
from micronet.model import MicroNet, Stem
from micronet.reparam import FusedHead, FusedMicroBlock, Permute, shuffle_index

__all__ = [
    "ComposedFactorizedConv",
    "ExportResult",
    "FusedHead",
    "FusedMicroBlock",
    "FusedShiftMax",
    "Permute",
    "export_onnx",
    "fold_bn",
    "optimize_torchscript",
    "reparameterize",
    "shuffle_index",
    "to_inference",
]


def _micronet(model: nn.Module, who: str) -> MicroNet:
    inner = getattr(model, "_orig_mod", model)
    if not isinstance(inner, MicroNet):
        raise TypeError(f"{who}: expected a MicroNet, got {type(model).__name__}")
    return inner


@torch.no_grad()
def reparameterize(model: nn.Module, *, compose_depthwise: bool = True, inplace: bool = False) -> MicroNet:
    """The explicit inference form of ``model`` (eval-only; equal outputs in eval; ``model`` untouched unless
    ``inplace``): :func:`dyncore.nn.reparameterize_model`.

    ``compose_depthwise=False`` keeps every factorized depthwise pair (and the stem's) as two BN-folded 1-D convs:
    TorchScript's MKLDNN path and ONNX Runtime run those faster than the composed k×k conv (``micronet bench``).
    """
    net = _micronet(model, "reparameterize")
    if not compose_depthwise:
        net = net if inplace else copy.deepcopy(net)
        for m in net.modules():
            if isinstance(m, (MicroFactorizedDepthwise, Stem)):
                m.compose = False
        inplace = True
    out = reparameterize_model(net, inplace=inplace)
    assert isinstance(out, MicroNet)
    return out


def to_inference(model: nn.Module, *, compose_depthwise: bool = True) -> MicroNet:
    """Alias of :func:`reparameterize` (the name of earlier releases)."""
    return reparameterize(model, compose_depthwise=compose_depthwise)


@torch.no_grad()
def optimize_torchscript(model: nn.Module, example: Tensor) -> torch.jit.ScriptModule:
    """Trace ``model`` (eval) on ``example``, freeze it and apply ``torch.jit.optimize_for_inference`` (MKLDNN conv
    layouts, conv+add/relu fusion on CPU). For :func:`reparameterize` outputs and timm baselines alike."""
    model.eval()
    return torch.jit.optimize_for_inference(torch.jit.trace(model, example))


@dataclass
class ExportResult:
    """The ONNX check of :func:`export_onnx`: ``report`` compares onnxruntime with the exported module (traced input
    and a second one); ``vs_training_form`` is the relative error of onnxruntime against the model's own eval
    forward on the second input (None when the training form itself was exported)."""

    report: OnnxReport
    vs_training_form: float | None

    @property
    def path(self) -> Path:
        return self.report.path

    @property
    def max_relative_error(self) -> float:
        errors = [*self.report.relative_errors, *([self.vs_training_form] if self.vs_training_form is not None else [])]
        return max(errors)


def export_onnx(
    model: nn.Module,
    path: str | Path,
    *,
    image_size: int = 224,
    dynamo: bool = True,
    fast: bool = True,
    compose_depthwise: bool = True,
    rtol: float = 1e-4,
    example: Tensor | None = None,
    second: Tensor | None = None,
) -> ExportResult:
    """Export ``model`` (its :func:`reparameterize` form when ``fast``) to ONNX with a dynamic batch axis, input
    ``image``, output ``logits``, and check it (relative to the output scale) on ``example`` (default: a seeded
    random batch of 2) and ``second`` (default: a batch of 3), and against the training form on ``second``.

    Raises:
        ExportCheckError: a relative error exceeds ``rtol`` (the file is kept for inspection).
    """
    from dyncore.export import export_onnx as _export

    net = _micronet(model, "export_onnx")
    was = net.training
    net.eval()
    try:
        g = torch.Generator().manual_seed(0)
        x = example if example is not None else torch.randn(2, net.in_chans, image_size, image_size, generator=g)
        x2 = second if second is not None else torch.randn(3, *x.shape[1:], generator=g)
        target = reparameterize(net, compose_depthwise=compose_depthwise) if fast else net
        report = _export(
            target,
            path,
            x,
            dynamo=dynamo,
            check_inputs=[x2],
            rtol=rtol,
            input_names=("image",),
            output_names=("logits",),
        )
        vs_training = None
        if fast:
            with torch.no_grad():
                vs_training = relative_error(onnx_run(report.path, x2, "image"), net(x2))
            if vs_training > rtol:
                raise ExportCheckError(
                    f"ONNX export {report.path}: onnxruntime differs from the training form (eval) by "
                    f"{vs_training:.3g} relative > rtol {rtol:g}"
                )
        return ExportResult(report, vs_training)
    finally:
        net.train(was)
