from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn

from dyncore.surgery import (
    Change,
    InsertedAfter,
    SurgeryError,
    SurgeryReport,
    by_name,
    by_type,
    find_modules,
    insert_after,
    replace_modules,
    set_submodule,
)


def _timm_model(name: str) -> nn.Module:
    # timm is a dev dependency, not one of dyncore's: import it only where needed
    timm = pytest.importorskip("timm")
    return timm.create_model(name, pretrained=False)


def _is_3x3(name: str, m: nn.Module) -> bool:
    return isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3)


class Marked3x3(nn.Conv2d):
    """A Conv2d subclass so we can tell replaced modules apart (same computation)."""


def _clone_conv(name: str, conv: nn.Module) -> nn.Module:
    assert isinstance(conv, nn.Conv2d)
    new = Marked3x3(
        conv.in_channels,
        conv.out_channels,
        conv.kernel_size,
        stride=conv.stride,
        padding=conv.padding,
        dilation=conv.dilation,
        groups=conv.groups,
        bias=conv.bias is not None,
    )
    new.load_state_dict(conv.state_dict())
    return new


@pytest.mark.parametrize(
    "builder",
    [
        lambda: torchvision.models.resnet18(weights=None),
        lambda: torchvision.models.mobilenet_v2(weights=None, width_mult=0.5),
        lambda: _timm_model("mobilenetv3_small_050"),
    ],
    ids=["resnet18", "mobilenet_v2", "mobilenetv3_small_050"],
)
def test_replace_all_3x3_convs(builder):
    torch.manual_seed(0)
    model = builder().eval()
    x = torch.randn(1, 3, 64, 64)
    expected = [n for n, m in model.named_modules() if _is_3x3(n, m)]
    assert expected
    y0 = model(x)
    report = replace_modules(model, by_type(nn.Conv2d) & _is_3x3, _clone_conv)
    assert report.names == expected
    assert all(isinstance(model.get_submodule(n), Marked3x3) for n in expected)
    assert all(c.params_before == c.params_after for c in report.changes)
    assert report.params_added == 0
    torch.testing.assert_close(model(x), y0)
    # nothing left to match: strict raises, non-strict is an empty report
    assert replace_modules(model, _is_3x3 & ~by_type(Marked3x3), _clone_conv, strict=False).changes == []


@pytest.mark.quick
def test_insert_after_by_name_regex_identity_keeps_outputs_and_keys():
    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None).eval()
    x = torch.randn(2, 3, 32, 32)
    y0 = model(x)
    keys0 = set(model.state_dict())
    pred = by_type(nn.Conv2d) & by_name(r"^layer[12]\.\d+\.conv\d$")
    expected = [n for n, m in model.named_modules() if pred(n, m)]
    assert expected == [f"layer{i}.{j}.conv{k}" for i in (1, 2) for j in (0, 1) for k in (1, 2)]
    report = insert_after(model, pred, lambda name, m: nn.Identity())
    assert report.names == expected
    assert all(isinstance(c.after, InsertedAfter) and c.after.original is c.before for c in report.changes)
    torch.testing.assert_close(model(x), y0)
    keys = set(model.state_dict())
    moved = {k for k in keys0 if any(k.startswith(f"{n}.") for n in expected)}
    assert keys == (keys0 - moved) | {k.replace(".weight", ".original.weight") for k in moved}


def test_insert_after_with_parameters_reports_params_and_state_dict():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Conv2d(4, 4, 1))
    report = insert_after(model, by_type(nn.Conv2d), lambda name, m: nn.BatchNorm2d(m.out_channels))
    assert [(c.name, c.params_before, c.params_after) for c in report.changes] == [
        ("0", 112, 120),
        ("2", 20, 28),
    ]
    assert report.params_added == 16
    assert "0.original.weight" in model.state_dict() and "2.inserted.running_mean" in model.state_dict()
    text = str(report)
    assert "InsertedAfter(Conv2d, BatchNorm2d)" in text and "+16" in text
    assert text.count("\n") == 3  # header line, column header, two rows


@pytest.mark.quick
def test_strict_error_names_predicate_and_model():
    model = torchvision.models.mobilenet_v2(weights=None, width_mult=0.5)
    with pytest.raises(SurgeryError, match=r"by_type\(LSTM\).*matched no module of MobileNetV2"):
        replace_modules(model, by_type(nn.LSTM), lambda n, m: nn.Identity())
    with pytest.raises(SurgeryError, match=r"by_name\('\^nope'\)"):
        insert_after(model, by_name("^nope"), lambda n, m: nn.Identity())
    report = insert_after(model, by_name("^nope"), lambda n, m: nn.Identity(), strict=False)
    assert isinstance(report, SurgeryReport) and len(report) == 0
    with pytest.raises(SurgeryError, match="factory returned int"):
        replace_modules(model, by_type(nn.Linear), lambda n, m: 3)  # type: ignore[arg-type,return-value]
    with pytest.raises(ValueError, match="invalid regex"):
        by_name("(")


def test_predicates_combine_and_find_modules():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Sequential(nn.Conv2d(4, 4, 1), nn.Linear(4, 4)))
    assert [n for n, _ in find_modules(model, by_type(nn.Conv2d))] == ["0", "1.0"]
    assert [n for n, _ in find_modules(model, by_type(nn.Conv2d) & by_name(r"^1\."))] == ["1.0"]
    assert [n for n, _ in find_modules(model, by_type(nn.Linear) | by_name("^0$"))] == ["0", "1.1"]
    plain = lambda n, m: isinstance(m, nn.Linear)  # noqa: E731
    assert [n for n, _ in find_modules(model, plain | by_name("^0$"))] == ["0", "1.1"]
    assert [n for n, _ in find_modules(model, by_name("^1"))] == ["1", "1.0", "1.1"]
    assert [n for n, _ in find_modules(model, by_name("^1"), include_nested=False)] == ["1"]
    # replacing a container replaces only the outermost match
    report = replace_modules(model, by_name("^1"), lambda n, m: nn.Identity())
    assert report.names == ["1"] and isinstance(report.changes[0], Change)


def test_set_submodule():
    model = torchvision.models.resnet18(weights=None)
    set_submodule(model, "layer1.0.conv1", nn.Identity())
    set_submodule(model, "fc", nn.Linear(512, 3))
    assert isinstance(model.layer1[0].conv1, nn.Identity) and model.fc.out_features == 3
    with pytest.raises(SurgeryError, match="has no child 'conv9'"):
        set_submodule(model, "layer1.0.conv9", nn.Identity())
    with pytest.raises(SurgeryError, match="no submodule 'layer7'"):
        set_submodule(model, "layer7.0", nn.Identity())
    with pytest.raises(TypeError, match=r"must be an nn\.Module"):
        set_submodule(model, "fc", 3)  # type: ignore[arg-type]


def test_new_modules_take_the_old_modules_mode():
    model = nn.Sequential(nn.Conv2d(3, 4, 1), nn.Dropout(0.5)).eval()
    replace_modules(model, by_type(nn.Dropout), lambda n, m: nn.Dropout(0.1))  # new modules start in train mode
    insert_after(model, by_type(nn.Conv2d), lambda n, m: nn.BatchNorm2d(4))
    assert not any(m.training for m in model.modules())
