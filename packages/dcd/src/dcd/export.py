"""ONNX export of a DCD model: its explicit fast form (:func:`dcd.reparameterize`), checked by
:func:`dyncore.export.export_onnx` (onnxruntime vs PyTorch, relative to the output scale, on a second input too)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import Tensor, nn

from dyncore.export import OnnxReport
from dyncore.export import export_onnx as _export_onnx

__all__ = ["export_onnx"]


def export_onnx(model: nn.Module, path: str | Path, example: Tensor, *, fast: bool = True, **kwargs: Any) -> OnnxReport:
    """Export ``model`` (eval) — by default its explicit fast form, with each layer's form fixed on ``example`` — to
    ONNX; ``kwargs`` go to :func:`dyncore.export.export_onnx` (``dynamo``, ``rtol``, ``check_inputs`` …).

    Raises:
        dyncore.export.ExportCheckError: onnxruntime differs from PyTorch by more than ``rtol`` (relative).
    """
    from dcd.inference import reparameterize

    net = reparameterize(model, example) if fast else model.eval()
    return _export_onnx(net, path, example, **kwargs)
