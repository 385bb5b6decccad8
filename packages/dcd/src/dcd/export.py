"""ONNX export of a (dynamic) model, checked against PyTorch with onnxruntime."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

__all__ = ["export_onnx"]


@torch.no_grad()
def export_onnx(
    model: nn.Module, path: str | Path, *, size: int = 224, batch: int = 1, inference_form: bool = False,
    atol: float = 1e-3,
) -> dict[str, Any]:  # fmt: skip
    """Export ``model`` (eval mode) for a (batch, 3, size, size) input and compare onnxruntime's output with PyTorch's.

    Returns ``{"path", "max_abs_diff", "ok", "modes"}``. ``inference_form`` folds BNs and picks per-layer forms first.
    Raises ImportError naming the missing package when onnx/onnxruntime are absent.
    """
    try:
        import onnxruntime as ort
    except ImportError as e:  # pragma: no cover - optional dependency
        raise ImportError("export_onnx needs onnx and onnxruntime: pip install 'dcd[export]'") from e
    from dcd.inference import inference_form as make_inference_form

    model = model.eval()
    x = torch.randn(batch, 3, size, size)
    modes: dict[str, str] = {}
    if inference_form:
        model, chosen = make_inference_form(model, x, repeats=2)
        modes = dict(chosen)
    ref = model(x)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.onnx.export(model, (x,), str(path), input_names=["input"], output_names=["logits"], opset_version=17,
                      dynamo=False)  # fmt: skip
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    out = sess.run(None, {"input": x.numpy()})[0]
    diff = float((torch.from_numpy(out) - ref).abs().max())
    return {
        "path": str(path),
        "max_abs_diff": diff,
        "ok": diff <= atol,
        "modes": modes,
        "input": [batch, 3, size, size],
    }
