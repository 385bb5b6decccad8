"""M0 and its explicit inference form through the standard toolchains: torch.compile (0 graph breaks, eval and
training), torch.fx, torch.export with a dynamic batch, ONNX (dynamo and legacy exporters, checked relative to the
output scale on a second input, with a twin), channels_last, bf16 autocast. Small inputs (32×32) keep it fast."""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path

import pytest
import timm
import torch
import torch.nn.functional as F
from torch import nn

from dyncore.export import ExportCheckError, export_onnx, onnx_run, relative_error
from micronet.deploy import export_onnx as micronet_export_onnx
from micronet.deploy import reparameterize

SIZE = 32
RTOL = 1e-4
WellScaled = Callable[..., nn.Module]


def _x(batch: int, seed: int) -> torch.Tensor:
    return torch.randn(batch, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(seed))


@pytest.fixture
def m0(well_scaled: WellScaled) -> nn.Module:
    torch.manual_seed(0)
    return well_scaled(timm.create_model("micronet_m0", num_classes=10), SIZE)


def _forms(model: nn.Module) -> dict[str, nn.Module]:
    return {"eager": model, "fast": reparameterize(model)}


@pytest.mark.slow
def test_torch_compile_has_no_graph_breaks(m0: nn.Module) -> None:
    x = _x(2, 1)
    for name, model in _forms(m0).items():
        torch._dynamo.reset()
        explained = torch._dynamo.explain(model)(x)
        assert explained.graph_break_count == 0 and explained.graph_count == 1, (name, explained.break_reasons)
    train = copy.deepcopy(m0).train()
    torch._dynamo.reset()
    explained = torch._dynamo.explain(train)(x)
    assert explained.graph_break_count == 0 and explained.graph_count == 1, explained.break_reasons
    # a full training step through AOTAutograd (fullgraph: a graph break would be an error) equals eager
    torch._dynamo.reset()
    ref = copy.deepcopy(train)
    for m in (train, ref):
        m.head.dropout.p = 0.0
    compiled = torch.compile(train, backend="aot_eager", fullgraph=True)
    y = torch.randint(0, 10, (2,))
    F.cross_entropy(compiled(x), y).backward()
    F.cross_entropy(ref(x), y).backward()
    g1 = torch.cat([p.grad.flatten() for p in train.parameters()])
    g2 = torch.cat([p.grad.flatten() for p in ref.parameters()])
    assert relative_error(g1, g2) < 1e-4
    torch._dynamo.reset()


def test_fx_symbolic_trace(m0: nn.Module) -> None:
    x = _x(3, 2)
    for name, model in _forms(m0).items():
        traced = torch.fx.symbolic_trace(model)
        with torch.no_grad():
            assert relative_error(traced(x), model(x)) < 1e-6, name
    train = torch.fx.symbolic_trace(copy.deepcopy(m0).train())
    assert any(n.op == "call_module" for n in train.graph.nodes)


@pytest.mark.slow
def test_torch_export_dynamic_batch(m0: nn.Module) -> None:
    batch = torch.export.Dim("batch", min=1, max=64)
    for name, model in _forms(m0).items():
        program = torch.export.export(model, (_x(2, 3),), dynamic_shapes=({0: batch},))
        x = _x(5, 4)  # another batch size and values than traced
        with torch.no_grad():
            assert relative_error(program.module()(x), model(x)) < 1e-6, name


@pytest.mark.slow
@pytest.mark.parametrize("dynamo", [True, False], ids=["dynamo", "legacy"])
def test_onnx_export_checked_on_a_second_input(m0: nn.Module, dynamo: bool, tmp_path: Path) -> None:
    """micronet's export (the reparameterized form) is checked against onnxruntime on the traced input, on a batch
    of 3, and against the training form; the eager model exports too. Twin: the file of a perturbed model fails."""
    pytest.importorskip("onnxruntime")
    result = micronet_export_onnx(
        m0, tmp_path / "fast.onnx", image_size=SIZE, dynamo=dynamo, example=_x(2, 5), second=_x(3, 6)
    )
    assert result.report.ok and result.report.batch_sizes == [2, 3] and result.max_relative_error < RTOL
    assert result.report.max_abs_reference > 0.1  # a well-scaled model: the relative check means something
    print("onnx", "dynamo" if dynamo else "legacy", result.report.relative_errors, result.vs_training_form)
    if not dynamo:  # the training form exports too (once: a dynamo export costs a minute on 2 cores)
        eager = export_onnx(m0, tmp_path / "eager.onnx", _x(2, 5), dynamo=False, check_inputs=[_x(3, 6)], rtol=RTOL)
        assert eager.ok
    # the twin: a model with one BatchNorm's statistics changed exports fine but fails against the original
    perturbed = copy.deepcopy(m0)
    bn = next(m for m in perturbed.modules() if isinstance(m, nn.BatchNorm2d))
    bn.running_var.mul_(4.0)
    path = micronet_export_onnx(perturbed, tmp_path / "bad.onnx", image_size=SIZE, dynamo=dynamo).path
    x = _x(3, 6)
    with torch.no_grad():
        assert relative_error(onnx_run(path, x, "image"), m0(x)) > RTOL


def test_onnx_check_raises_when_outputs_differ(m0: nn.Module, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """export_onnx's own check can fail: a converted form that does not compute the training form is refused."""
    pytest.importorskip("onnxruntime")
    import micronet.deploy as deploy

    bad = copy.deepcopy(m0)
    next(m for m in bad.modules() if isinstance(m, nn.BatchNorm2d)).running_var.mul_(4.0)
    convert = deploy.reparameterize
    monkeypatch.setattr(deploy, "reparameterize", lambda model, **kw: convert(bad, **kw))
    with pytest.raises(ExportCheckError, match="differs from the training form"):
        micronet_export_onnx(m0, tmp_path / "x.onnx", image_size=SIZE, dynamo=False)


def test_channels_last(m0: nn.Module) -> None:
    x = _x(2, 7)
    for name, model in _forms(m0).items():
        with torch.no_grad():
            ref = model(x)
            cl = copy.deepcopy(model).to(memory_format=torch.channels_last)
            assert relative_error(cl(x.to(memory_format=torch.channels_last)), ref) < 1e-5, name
    assert all(b.dim() != 5 for b in m0.buffers())


def test_bf16_autocast_eval_and_train(m0: nn.Module) -> None:
    x = _x(4, 8)
    for name, model in _forms(m0).items():
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
            y = model(x)
        with torch.no_grad():
            ref = model(x)
        # bf16 keeps 8 mantissa bits: a deep model's logits agree to ≈0.1–0.2 of their scale
        assert torch.isfinite(y).all() and relative_error(y.float(), ref) < 0.3, name
    train = copy.deepcopy(m0).train()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = F.cross_entropy(train(x), torch.randint(0, 10, (4,)))
    loss.backward()
    assert torch.isfinite(loss) and all(torch.isfinite(p.grad).all() for p in train.parameters() if p.grad is not None)
