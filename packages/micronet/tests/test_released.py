"""The authors' released checkpoints: both loading routes against reference outputs of the authors' code.

``tests/data/released_<model>.npz`` (copied from shared/fixtures/released, made with the authors' unmodified code at
micronet@ed89b26) holds a released-format state_dict in compact form and the released model's logits for it:
``keys``; ``rule_std[i] > 0`` → tensor = randn(shape, generator=manual_seed(crc32(key))) · rule_std[i]; else stored
as ``x:<key>`` (calibrated BatchNorm statistics); ``eval64`` / ``eval32`` / ``train64`` (train mode, dropout off).
The input is ``torch.randn(2, 3, 224, 224, generator=manual_seed(2))``.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import timm
import torch

import micronet
from dyncore.export import relative_error
from dyncore.testing import reference_input, released_reference
from dyncore.training import CheckpointError
from micronet.released import released_key

DATA = Path(__file__).parent / "data"
MODELS = ["m0", "m1", "m3"]


def released_state_dict(name: str) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """(the released state_dict rebuilt from the npz, {eval64, eval32, train64})."""
    return released_reference(DATA / f"released_{name}.npz")


_released_input = reference_input


def _save(sd: dict[str, torch.Tensor], path: Path) -> Path:
    """As the authors' files are: DataParallel's ``module.`` prefix inside a ``state_dict`` wrapper."""
    torch.save({"state_dict": {"module." + k: v for k, v in sd.items()}, "epoch": 600}, path)
    return path


def _logits(model: torch.nn.Module, x: torch.Tensor) -> dict[str, torch.Tensor]:
    with torch.no_grad():
        out = {"eval32": model.eval()(x)}
        m64 = model.double()
        out["eval64"] = m64(x.double())
        m64.train()
        m64.head.dropout.p = 0.0  # the reference train64 has dropout off; BatchNorm uses the batch statistics
        out["train64"] = m64(x.double())
    return out


def _errors(got: dict[str, torch.Tensor], ref: dict[str, torch.Tensor]) -> dict[str, float]:
    return {
        "eval64": relative_error(got["eval64"], ref["eval64"]),
        "train64": relative_error(got["train64"], ref["train64"]),
        "eval32": relative_error(got["eval32"], ref["eval64"]),
        "released_eval32": relative_error(ref["eval32"], ref["eval64"]),  # the released model's own float32 error
    }


def _assert_matches(errors: dict[str, float]) -> None:
    assert errors["eval64"] <= 1e-9, errors
    assert errors["train64"] <= 1e-9, errors
    assert errors["eval32"] <= 3 * errors["released_eval32"], errors


@pytest.mark.parametrize("name", MODELS)
def test_released_checkpoint_both_routes(name: str, tmp_path: Path) -> None:
    """load_released and timm's pretrained=True + file overlay load the same weights; float64 logits equal the
    authors' code to ≤ 1e-9 relative (eval and train), float32 within 3× the released model's own float32 error."""
    sd, ref = released_state_dict(name)
    path = _save(sd, tmp_path / f"micronet-{name}.pth")
    plain = micronet.load_released(f"micronet_{name}", path)
    via_timm = timm.create_model(f"micronet_{name}", pretrained=True, pretrained_cfg_overlay=dict(file=str(path)))
    a, b = plain.state_dict(), via_timm.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    errors = _errors(_logits(via_timm, _released_input()), ref)
    _assert_matches(errors)
    print(name, {k: f"{v:.2e}" for k, v in errors.items()})


def test_perturbed_released_tensor_fails(tmp_path: Path) -> None:
    """The twin: one Dynamic Shift-Max coefficient FC of the file perturbed by 1 % → the same check fails."""
    sd, ref = released_state_dict("m0")
    key = "features.4.layers.1.fc.2.weight"
    sd[key] = sd[key] * 1.01
    model = micronet.load_released("micronet_m0", _save(sd, tmp_path / "perturbed.pth"))
    with pytest.raises(AssertionError):
        _assert_matches(_errors(_logits(model, _released_input()), ref))


@pytest.mark.quick
def test_name_rule_covers_every_released_key() -> None:
    sd, _ = released_state_dict("m3")
    model = micronet.micronet("micronet_m3")
    own = set(model.state_dict())
    renamed = {released_key(k, model) for k in sd}
    assert None not in renamed and renamed == own - {"stem.stride"}
    assert released_key("features.4.layers.5.fc.0.weight", model) == "blocks.3.body.4.coefficients.fc.weight"
    assert released_key("features.1.layers.0.conv.2.weight", model) == "blocks.0.body.0.1.0.weight"


@pytest.mark.quick
def test_file_of_no_layout_names_unmatched_keys(tmp_path: Path) -> None:
    path = tmp_path / "other.pth"
    torch.save({"state_dict": {"backbone.conv1.weight": torch.zeros(3), "fc.bias": torch.zeros(2)}}, path)
    with pytest.raises(CheckpointError, match=r"backbone\.conv1\.weight"):
        micronet.load_released("micronet_m0", path)
    with pytest.raises(CheckpointError, match=r"file keys with no match in the model .*backbone\.conv1\.weight"):
        timm.create_model("micronet_m0", pretrained=True, pretrained_cfg_overlay=dict(file=str(path)))
    sd, _ = released_state_dict("m0")
    del sd["features.3.layers.1.fc.2.bias"]
    with pytest.raises(CheckpointError, match=r"blocks\.2\.body\.1\.coefficients\.heads\.out\.bias"):
        micronet.load_released("micronet_m0", _save(sd, tmp_path / "incomplete.pth"))
    with pytest.raises(CheckpointError, match="shape mismatches"):
        micronet.load_released("micronet_m1", _save(released_state_dict("m0")[0], tmp_path / "m0.pth"))


@pytest.mark.quick
def test_pretrained_needs_a_local_file() -> None:
    with pytest.raises(ValueError, match="no weights are downloaded"):
        timm.create_model("micronet_m0", pretrained=True)


def test_released_weights_fine_tune_on_other_classes(tmp_path: Path) -> None:
    """timm's rule: a model with another class count keeps the released backbone and gets a fresh classifier."""
    sd, _ = released_state_dict("m0")
    path = _save(sd, tmp_path / "m0.pth")
    model = timm.create_model(
        "micronet_m0", pretrained=True, pretrained_cfg_overlay=dict(file=str(path)), num_classes=7
    )
    assert model.head.fc2[0].weight.shape == (7, 640)
    torch.testing.assert_close(model.blocks[3].body[0][0].weight, sd["features.4.layers.0.conv.0.weight"])
