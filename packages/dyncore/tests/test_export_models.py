"""dyncore.export (relative checks, BN calibration, checked ONNX export), dyncore.nn.reparam (explicit inference
forms, BN folding) and dyncore.models (timm-native builders, model specs, foreign checkpoints)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from dyncore.export import (
    ExportCheckError,
    assert_relative_close,
    calibrate_batchnorm,
    export_onnx,
    relative_error,
)
from dyncore.nn import fold_batchnorm, reparameterize_model
from dyncore.training import CheckpointError


def _net() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Conv2d(8, 8, 3, stride=2, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 5), nn.BatchNorm1d(5),
    )  # fmt: skip


def _calibrated() -> nn.Sequential:
    g = torch.Generator().manual_seed(1)
    return calibrate_batchnorm(_net(), [torch.randn(16, 3, 12, 12, generator=g) * 3 + 1 for _ in range(4)]).eval()


@pytest.mark.quick
def test_relative_error_is_relative_and_refuses_an_empty_scale() -> None:
    ref = torch.tensor([1e-14, -2e-14])
    assert relative_error(ref * 1.01, ref) == pytest.approx(0.01, rel=1e-4)
    assert relative_error(torch.tensor([1.0, float("nan")]), torch.ones(2)) == float("inf")
    with pytest.raises(ValueError, match="all zeros"):
        relative_error(torch.zeros(2), torch.zeros(2))
    with pytest.raises(ValueError, match="shapes differ"):
        relative_error(torch.zeros(3), torch.ones(2))
    with pytest.raises(AssertionError, match=r"relative error 0\.5 > 0\.1"):
        assert_relative_close(torch.tensor([1.5]), torch.tensor([1.0]), 0.1)


@pytest.mark.quick
def test_calibrate_batchnorm_estimates_the_data_statistics_and_restores_the_model() -> None:
    net = _net().eval()
    momentum = net[1].momentum
    g = torch.Generator().manual_seed(3)
    xs = [torch.randn(32, 3, 6, 6, generator=g) * 2 + 5 for _ in range(3)]
    calibrate_batchnorm(net, xs)
    assert not net.training and net[1].momentum == momentum
    with torch.no_grad():
        first = torch.cat([net[0](x) for x in xs])
    torch.testing.assert_close(net[1].running_mean, first.mean((0, 2, 3)), rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="no BatchNorm"):
        calibrate_batchnorm(nn.Linear(2, 2), [torch.randn(2, 2)])
    with pytest.raises(ValueError, match="gave no batch"):
        calibrate_batchnorm(_net(), [])


@pytest.mark.quick
def test_fold_batchnorm_equals_conv_then_bn_and_a_perturbed_fold_fails() -> None:
    net = _calibrated()
    x = torch.randn(4, 3, 12, 12) * 3 + 1
    with torch.no_grad():
        ref = net[1](net[0](x))
        fused = fold_batchnorm(net[0], net[1])
        assert_relative_close(fused(x), ref, 1e-5)
        lin = fold_batchnorm(net[8], net[9])
        h = torch.randn(4, 8)
        assert_relative_close(lin(h), net[9](net[8](h)), 1e-5)
        fused.weight[0, 0, 0, 0] += 0.05 * fused.weight.abs().max()
        with pytest.raises(AssertionError, match="relative error"):
            assert_relative_close(fused(x), ref, 1e-5)
    with pytest.raises(ValueError, match="8 outputs, BatchNorm 5"):
        fold_batchnorm(net[0], nn.BatchNorm2d(5))


class _ConvBN(nn.Sequential):
    def reparameterize(self) -> nn.Module:
        return fold_batchnorm(self[0], self[1])


@pytest.mark.quick
def test_reparameterize_model_replaces_opted_in_modules_on_a_copy() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(_ConvBN(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)), nn.ReLU(), nn.Conv2d(4, 2, 1))
    g = torch.Generator().manual_seed(0)
    calibrate_batchnorm(model, [torch.randn(8, 3, 9, 9, generator=g) * 4 for _ in range(2)])
    model.eval()
    fast = reparameterize_model(model)
    assert isinstance(model[0], _ConvBN) and isinstance(fast[0], nn.Conv2d) and not fast.training
    x = torch.randn(3, 3, 9, 9) * 4  # not a calibration batch
    with torch.no_grad():
        assert_relative_close(fast(x), model(x), 1e-5)
        model[0][1].running_var.mul_(4)  # the original changes; the converted copy does not follow
        with pytest.raises(AssertionError):
            assert_relative_close(fast(x), model(x), 1e-5)


@pytest.mark.parametrize("dynamo", [True, False])
def test_export_onnx_checks_relative_on_a_second_batch_size_and_catches_a_wrong_graph(
    tmp_path: Path, dynamo: bool
) -> None:
    pytest.importorskip("onnxruntime")
    if dynamo:
        pytest.importorskip("onnxscript")
    net = _calibrated()
    x = torch.randn(2, 3, 12, 12) * 3 + 1
    report = export_onnx(net, tmp_path / "m.onnx", x, dynamo=dynamo, rtol=1e-4)
    assert report.ok and report.batch_sizes == [2, 3] and report.max_relative_error < 1e-4
    assert report.max_abs_reference > 0.1  # a well-scaled model: the check means something

    class Skewed(nn.Module):  # what an exporter bug looks like: the exported graph differs from eager by 1 %
        def __init__(self, inner: nn.Module) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = self.inner(x)
            return y if torch.onnx.is_in_onnx_export() else y * 1.01

    with pytest.raises(ExportCheckError, match="differs from PyTorch"):
        export_onnx(Skewed(net), tmp_path / "bad.onnx", x, dynamo=dynamo, rtol=1e-4)


# --------------------------------------------------------------------------------------------------------------------
# dyncore.models
# --------------------------------------------------------------------------------------------------------------------
class _Toy(nn.Module):
    def __init__(self, *, num_classes: int = 1000, in_chans: int = 3, width: int = 4) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.stem = nn.Conv2d(in_chans, width, 3, 2, 1)
        self.stage = nn.Conv2d(width, 2 * width, 3, 2, 1)
        self.fc = nn.Linear(2 * width, num_classes)
        self.feature_info = [
            {"num_chs": width, "reduction": 2, "module": "stem"},
            {"num_chs": 2 * width, "reduction": 4, "module": "stage"},
        ]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.stage(self.stem(x)).mean((2, 3)))


def _register() -> None:
    import sys
    import types

    import timm
    from timm.models import generate_default_cfgs, register_model

    from dyncore.models import build_timm_model, default_cfg

    if timm.is_model("dyncore_test_toy"):
        return
    mod = types.ModuleType("dyncore_test_toy_models")
    mod.default_cfgs = generate_default_cfgs(  # type: ignore[attr-defined]
        {"dyncore_test_toy": default_cfg(first_conv="stem", classifier="fc", pool_size=None)}
    )
    sys.modules[mod.__name__] = mod

    def dyncore_test_toy(pretrained: bool = False, **kwargs: Any) -> nn.Module:
        return build_timm_model(
            _Toy, "dyncore_test_toy", pretrained, model_kwargs_allowed={"num_classes", "in_chans", "width"}, **kwargs
        )

    dyncore_test_toy.__module__ = mod.__name__
    register_model(dyncore_test_toy)


def test_build_timm_model_is_timm_native_strict_and_offline(tmp_path: Path) -> None:
    import timm

    from dyncore.models import create_from_spec, model_spec, read_state_dict

    _register()
    model = timm.create_model("dyncore_test_toy", num_classes=7, width=3)
    assert model.pretrained_cfg["input_size"] == (3, 224, 224) and model.default_cfg is model.pretrained_cfg
    assert model_spec(model) == {"name": "dyncore_test_toy", "kwargs": {"num_classes": 7, "width": 3}}
    rebuilt = create_from_spec(model_spec(model))
    assert [p.shape for p in rebuilt.parameters()] == [p.shape for p in model.parameters()]
    features = timm.create_model("dyncore_test_toy", features_only=True, out_indices=(0, 1))
    assert [f.shape[1] for f in features(torch.randn(1, 3, 16, 16))] == [4, 8] == features.feature_info.channels()
    with pytest.raises(TypeError, match=r"unsupported keyword argument\(s\) \['drop_path_rate'\]"):
        timm.create_model("dyncore_test_toy", drop_path_rate=0.1)
    with pytest.raises(ValueError, match="no weights are downloaded"):
        timm.create_model("dyncore_test_toy", pretrained=True)
    path = tmp_path / "w.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in model.state_dict().items()}}, path)
    assert read_state_dict(path).keys() == model.state_dict().keys()
    loaded = timm.create_model(
        "dyncore_test_toy", pretrained=True, num_classes=7, width=3,
        pretrained_cfg_overlay={"file": str(path), "num_classes": 7},
    )  # fmt: skip
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), model.state_dict().values()))
    with pytest.raises(CheckpointError, match="not registered"):
        create_from_spec({"name": "no_such_model_anywhere", "kwargs": {}}, source="w.pt")
    with pytest.raises(CheckpointError, match=r"w\.pt: model spec dyncore_test_toy .* does not rebuild"):
        create_from_spec({"name": "dyncore_test_toy", "kwargs": {"colour": "red"}}, source="w.pt")


def test_load_converted_names_unmatched_keys_of_both_sides(tmp_path: Path) -> None:
    from dyncore.models import load_converted, read_state_dict

    target = nn.Sequential(nn.Linear(2, 3), nn.Linear(3, 1))
    released = {"fc1.weight": torch.randn(3, 2), "fc1.bias": torch.randn(3), "fc2.w": torch.randn(1, 3)}

    def rename(sd: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
        table = {"fc1.weight": "0.weight", "fc1.bias": "0.bias", "fc2.weight": "1.weight", "fc2.bias": "1.bias"}
        return {table.get(k, k): v for k, v in sd.items()}

    with pytest.raises(
        CheckpointError, match=r"(?s)rel\.pth does not fit .*no match in the file \(2\).*1\.bias.*fc2\.w"
    ):
        load_converted(target, released, rename, source="rel.pth")
    released["fc2.weight"] = released.pop("fc2.w")
    released["fc2.bias"] = torch.randn(1)
    load_converted(target, released, rename, source="rel.pth")
    assert torch.equal(target[1].weight, released["fc2.weight"])
    (tmp_path / "junk.pth").write_bytes(b"\x00" * 64)
    with pytest.raises(CheckpointError, match="not a checkpoint"):
        read_state_dict(tmp_path / "junk.pth")
    torch.save({"epoch": 3}, tmp_path / "meta.pth")
    with pytest.raises(CheckpointError, match="holds no state dict"):
        read_state_dict(tmp_path / "meta.pth")
