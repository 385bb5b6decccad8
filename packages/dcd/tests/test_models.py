"""Models: exact parameter counts of the released implementation, MAdds vs Table 3.4, timm registry, convert."""

from __future__ import annotations

import pytest
import timm
import torch
import torchvision
from torch import nn

import dcd
from dcd.analysis import madds_conventions
from dcd.inference import reparameterize
from dcd.models import DynamicConfig, mobilenetv2, resnet
from dyncore.complexity import count_parameters
from dyncore.export import calibrate_batchnorm, relative_error
from dyncore.surgery import SurgeryError, by_name

RELEASED_PARAMS = {
    "dcd_mobilenetv2_100": 5_720_028,
    "dcd_mobilenetv2_050": 3_056_616,
    "dcd_mobilenetv2_035": 2_267_932,
    "dcd_resnet18": 14_703_332,
    "dcd_resnet50": 29_835_056,
    "dcd_resnet10": 6_688_844,
}


@pytest.mark.quick
@pytest.mark.parametrize("name", sorted(RELEASED_PARAMS))
def test_parameters_equal_released_implementation(name: str) -> None:
    assert count_parameters(timm.create_model(name)) == RELEASED_PARAMS[name]


def test_static_models_equal_torchvision() -> None:
    assert count_parameters(timm.create_model("dcd_mobilenetv2_100_static")) == count_parameters(
        torchvision.models.mobilenet_v2()
    )
    assert count_parameters(timm.create_model("dcd_resnet18_static")) == count_parameters(torchvision.models.resnet18())


# (per-pixel as released, spec), (each layer in its cheaper form ≈ the paper's Table 3.4 MAdds)
MADDS = {
    "dcd_mobilenetv2_100": (398.4e6, 326.0e6),
    "dcd_mobilenetv2_050": (132.2e6, 104.8e6),
    "dcd_mobilenetv2_035": (79.6e6, 63.1e6),
}


@pytest.mark.parametrize("name", sorted(MADDS))
def test_madds_against_spec_and_paper(name: str) -> None:
    counts = madds_conventions(timm.create_model(name), torch.randn(1, 3, 224, 224))
    per_pixel, paper = MADDS[name]
    assert counts["per_pixel"] == pytest.approx(per_pixel, rel=2e-3)
    assert counts["cheapest"] == pytest.approx(paper, rel=1e-2)
    assert counts["cheapest"] <= min(counts["per_pixel"], counts["per_sample"])


def test_convert_torchvision_resnet18_matches_released_count() -> None:
    model = torchvision.models.resnet18()
    report = dcd.convert(model, where=by_name(r"^layer\d\.\d\.conv\d$"), rule="resnet", classifier=by_name("^fc$"))
    assert len(report.changes) == 17
    assert count_parameters(model) == RELEASED_PARAMS["dcd_resnet18"]
    assert isinstance(model.layer1[0].downsample, type(None)) and isinstance(model.fc, dcd.DCDClassifier)
    model.eval()
    assert model(torch.randn(1, 3, 64, 64)).shape == (1, 1000)


@pytest.mark.quick
def test_convert_keeps_weights_and_reports_errors() -> None:
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 16, 1), nn.Conv2d(16, 16, 3, padding=1, groups=4))
    w = model[1].weight.detach().clone()
    report = dcd.convert(model, where=by_name("^1$"))
    assert [c.name for c in report.changes] == ["1"]
    assert torch.equal(model[1].weight, w)
    with pytest.raises(SurgeryError, match="matched no module"):
        dcd.convert(model, where=by_name("^nothing$"))
    with pytest.raises(ValueError, match=r"cannot convert '2'.*grouped conv"):
        dcd.convert(model, where=by_name("^2$"))
    with pytest.raises(ValueError, match="unknown rule"):
        dcd.convert(model, rule="bogus")


def test_small_mobilenet_trains_and_is_deterministic() -> None:
    def run() -> list[float]:
        torch.manual_seed(0)
        model = mobilenetv2(width_mult=0.35, num_classes=4, small_input=True, dropout=0.0)
        opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
        x, y = torch.randn(8, 3, 16, 16), torch.arange(8) % 4
        losses = []
        for _ in range(5):
            loss = nn.functional.cross_entropy(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(loss.item())
        return losses

    a, b = run(), run()
    assert a == b
    assert a[-1] < a[0]


@pytest.mark.parametrize("kind", ["dyconv", "condconv"])
def test_vanilla_models_forward_and_count(kind: str) -> None:
    model = mobilenetv2(width_mult=0.35, num_classes=10, small_input=True, kind=kind).eval()
    static = mobilenetv2(width_mult=0.35, num_classes=10, small_input=True, kind="static")
    assert count_parameters(model) > 3 * count_parameters(static)
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_reparameterized_model_matches_eval_model() -> None:
    torch.manual_seed(0)
    model = resnet(depth=10, num_classes=5, small_input=True, width=16)
    for m in model.modules():
        if isinstance(m, dcd.DynamicConvDecomposition):
            nn.init.normal_(m.branch.heads["phi"].weight, 0.0, 0.3)  # non-trivial Φ(x)
        if isinstance(m, nn.BatchNorm2d):
            nn.init.uniform_(m.weight, 0.5, 1.5)  # also the zero-initialised last BN of every block
    calibrate_batchnorm(model, [torch.randn(8, 3, 16, 16) for _ in range(2)])
    model.eval()
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        ref = model(x)
        fast = reparameterize(model, torch.randn(1, 3, 16, 16))
        assert sum(isinstance(m, dcd.DCDInference) for m in fast.modules()) == 9
        assert not any(isinstance(m, nn.BatchNorm2d) for m in fast.modules())
        assert relative_error(fast(x), ref) <= 1e-5
        model.layer1[0].conv1.bn.running_var.mul_(2)  # twin: a perturbed model fails
        assert relative_error(reparameterize(model)(x), ref) > 1e-3


def test_config_errors() -> None:
    with pytest.raises(ValueError, match=r"DynamicConfig\.kind must be one of"):
        DynamicConfig(kind="dynamic")
    with pytest.raises(ValueError, match="depth must be one of"):
        resnet(depth=11)
    with pytest.raises(ValueError, match="no weights are downloaded"):
        timm.create_model("dcd_resnet10", pretrained=True)


@pytest.mark.parametrize("name", ["dcd_mobilenetv2_050", "dcd_resnet18"])
def test_pretrained_cfg_is_dcds_own_eval_transform(name: str) -> None:
    """timm's eval transform resolved from the model's pretrained_cfg is pixel-for-pixel dcd's own folder eval
    transform, on images of several sizes and aspect ratios."""
    import numpy as np
    import timm
    from PIL import Image

    from dcd.data import folder_transform

    model = timm.create_model(name)
    timm_eval = timm.data.create_transform(**timm.data.resolve_data_config({}, model=model))
    ours = folder_transform("val", 224)
    rng = np.random.default_rng(0)
    for size in ((300, 411), (256, 256), (500, 240)):
        image = Image.fromarray(rng.integers(0, 255, (*size, 3), dtype=np.uint8))
        assert torch.equal(timm_eval(image), ours(image))
