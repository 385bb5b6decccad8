"""Equivalence checks that can fail, and ONNX export checked against PyTorch.

A check of "the converted / exported model computes the same function" is only worth something when

1. the model is well scaled — BatchNorm statistics calibrated (:func:`calibrate_batchnorm`) so that activations are
   O(1): a freshly initialised network may output ~1e-14, where any absolute tolerance passes;
2. the error is measured relative to the output scale (:func:`relative_error`: max|a − b| / max|b|);
3. it is run on an input other than the one used for tracing (a second batch size too, for a dynamic batch axis).

:func:`export_onnx` does all three for ONNX Runtime.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

__all__ = [
    "ExportCheckError",
    "OnnxReport",
    "assert_relative_close",
    "calibrate_batchnorm",
    "export_onnx",
    "onnx_run",
    "relative_error",
]

_BN = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)


class ExportCheckError(AssertionError):
    """An exported model's outputs differ from PyTorch's by more than the relative tolerance."""


def relative_error(actual: Tensor | Any, expected: Tensor | Any) -> float:
    """max|actual − expected| / max|expected|, computed in float64.

    Raises:
        ValueError: the shapes differ, or ``expected`` is all zeros or not finite (no scale to be relative to).
    """
    a = torch.as_tensor(actual).detach().to("cpu", torch.float64)
    e = torch.as_tensor(expected).detach().to("cpu", torch.float64)
    if a.shape != e.shape:
        raise ValueError(f"relative_error: shapes differ: {tuple(a.shape)} vs reference {tuple(e.shape)}")
    if not bool(torch.isfinite(e).all()):
        raise ValueError("relative_error: the reference holds NaN or infinite values")
    scale = e.abs().max().item() if e.numel() else 0.0
    if scale == 0.0:
        raise ValueError("relative_error: the reference is all zeros; a relative check would prove nothing")
    if not bool(torch.isfinite(a).all()):
        return float("inf")
    return float((a - e).abs().max().item() / scale)


def assert_relative_close(actual: Tensor | Any, expected: Tensor | Any, rtol: float, what: str = "output") -> float:
    """Assert :func:`relative_error` ≤ ``rtol``; returns the error. The AssertionError states both numbers."""
    err = relative_error(actual, expected)
    if not err <= rtol:
        scale = torch.as_tensor(expected).detach().abs().max().item()
        raise AssertionError(f"{what}: relative error {err:.3g} > {rtol:.3g} (reference max |value| {scale:.4g})")
    return err


@torch.no_grad()
def calibrate_batchnorm(model: nn.Module, inputs: Iterable[Tensor], *, steps: int | None = None) -> nn.Module:
    """Reset every BatchNorm's running statistics and re-estimate them from ``inputs`` (returns ``model``).

    Runs each batch (at most ``steps``) in train mode under no_grad with cumulative averaging (momentum None), then
    restores each module's training flag and momentum. Dropout runs in train mode meanwhile; that only affects the
    statistics through the inputs BN sees, as in ordinary training.

    Raises:
        ValueError: the model has no BatchNorm, or ``inputs`` is empty.
    """
    bns = [m for m in model.modules() if isinstance(m, _BN) and m.track_running_stats]
    if not bns:
        raise ValueError(f"calibrate_batchnorm: {type(model).__name__} has no BatchNorm with running statistics")
    modes = {m: m.training for m in model.modules()}
    momenta = {bn: bn.momentum for bn in bns}
    seen = 0
    try:
        for bn in bns:
            bn.reset_running_stats()
            bn.momentum = None
        model.train()
        for x in inputs:
            if steps is not None and seen >= steps:
                break
            model(x)
            seen += 1
    finally:
        for m, training in modes.items():
            m.train(training)
        for bn, momentum in momenta.items():
            bn.momentum = momentum
    if seen == 0:
        raise ValueError("calibrate_batchnorm: `inputs` gave no batch")
    return model


@dataclass
class OnnxReport:
    """What :func:`export_onnx` wrote and measured: one relative error per checked input (the traced one first)."""

    path: Path
    exporter: str
    relative_errors: list[float] = field(default_factory=list)
    max_abs_reference: float = 0.0
    rtol: float = 1e-4
    batch_sizes: list[int] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return bool(self.relative_errors) and max(self.relative_errors) <= self.rtol

    @property
    def max_relative_error(self) -> float:
        return max(self.relative_errors) if self.relative_errors else float("nan")

    def as_dict(self) -> dict[str, Any]:
        return {
            "path": str(self.path),
            "exporter": self.exporter,
            "relative_errors": self.relative_errors,
            "max_relative_error": self.max_relative_error,
            "max_abs_reference": self.max_abs_reference,
            "rtol": self.rtol,
            "batch_sizes": self.batch_sizes,
            "ok": self.ok,
        }


def onnx_run(path: str | os.PathLike[str], x: Tensor, input_name: str = "input") -> Tensor:
    """Run an ONNX file with onnxruntime (CPU) on ``x``; returns the first output as a tensor."""
    try:
        import onnxruntime as ort
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError("onnxruntime is needed to check an ONNX export: pip install onnxruntime") from exc
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    out = session.run(None, {input_name: x.detach().cpu().numpy()})
    return torch.from_numpy(out[0])


def _second_input(example: Tensor) -> Tensor:
    g = torch.Generator().manual_seed(12345)
    shape = (example.shape[0] + 1, *example.shape[1:])
    scale = example.detach().float().std().clamp_min(1e-3).item() if example.numel() > 1 else 1.0
    return (torch.randn(shape, generator=g) * scale).to(example.dtype)


def export_onnx(
    model: nn.Module,
    path: str | os.PathLike[str],
    example: Tensor,
    *,
    dynamo: bool = True,
    check_inputs: Sequence[Tensor] | None = None,
    rtol: float = 1e-4,
    opset: int | None = None,
    input_names: Sequence[str] = ("input",),
    output_names: Sequence[str] = ("output",),
    dynamic_batch: bool = True,
) -> OnnxReport:
    """Export ``model`` (a copy, in eval mode, under no_grad) to ONNX and check it with onnxruntime.

    Args:
        dynamo: the ``torch.export``-based exporter (needs onnxscript) if True, else the legacy TorchScript one.
        check_inputs: inputs compared besides ``example`` (default: one random input with batch size B+1).
        rtol: the largest allowed :func:`relative_error` (relative to the PyTorch output's max |value|).
        dynamic_batch: make axis 0 of the input and output dynamic.

    Returns:
        an :class:`OnnxReport`.

    Raises:
        ExportCheckError: an input's relative error exceeds ``rtol`` (the file is kept for inspection).
    """
    if example.dim() < 1:
        raise ValueError(f"export_onnx: example must be a batched tensor, got shape {tuple(example.shape)}")
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    net = copy.deepcopy(model).eval()
    extra = [_second_input(example)] if check_inputs is None else list(check_inputs)
    kwargs: dict[str, Any] = {"input_names": list(input_names), "output_names": list(output_names)}
    if opset is not None:
        kwargs["opset_version"] = opset
    with torch.no_grad():
        if dynamo:
            try:
                import onnxscript  # noqa: F401
            except ImportError as exc:
                raise ImportError(
                    "export_onnx(dynamo=True) needs onnxscript: pip install onnxscript (or use dynamo=False)"
                ) from exc
            if dynamic_batch:
                kwargs["dynamic_shapes"] = ({0: torch.export.Dim("batch", min=1, max=4096)},)
            program = torch.onnx.export(net, (example,), dynamo=True, **kwargs)
            if program is None:  # pragma: no cover - torch always returns the program for dynamo=True
                raise RuntimeError("torch.onnx.export returned no program")
            program.save(str(target))
        else:
            if dynamic_batch:
                kwargs["dynamic_axes"] = {name: {0: "batch"} for name in (*input_names, *output_names)}
            torch.onnx.export(net, (example,), str(target), dynamo=False, **kwargs)
        report = OnnxReport(path=target, exporter="dynamo" if dynamo else "torchscript", rtol=rtol)
        for x in [example, *extra]:
            reference = net(x)
            got = onnx_run(target, x, input_names[0])
            report.relative_errors.append(relative_error(got, reference))
            report.max_abs_reference = max(report.max_abs_reference, float(reference.abs().max()))
            report.batch_sizes.append(int(x.shape[0]))
    if not report.ok:
        raise ExportCheckError(
            f"ONNX export {target} ({report.exporter}) differs from PyTorch: relative errors "
            f"{[f'{e:.3g}' for e in report.relative_errors]} > rtol {rtol:g} (max |output| "
            f"{report.max_abs_reference:.4g}) on batch sizes {report.batch_sizes}"
        )
    return report
