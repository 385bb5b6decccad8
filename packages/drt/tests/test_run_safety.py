"""Issue 14 (drt parts): silent wrong results become errors naming the flag (item 4), run-directory safety
(item 5: config.json after the resume check, result.json carried, continuous JSONL, atomic model.pt) and the
shared flag spellings (item 8)."""

from __future__ import annotations

import importlib
import json
from pathlib import Path
from typing import Any

import pytest
import torch

from drt.cli import main
from drt.layers import DynamicResidualConfig
from drt.models import DigitCNNConfig, DigitFiveCNN, DomainAdaptationNet
from drt.train import TrainConfig, train
from dyncore.data import EmbeddedDataset, MultiSourceDataset
from dyncore.training import Checkpointer, JSONLLogger, NonFiniteError

train_module = importlib.import_module("drt.train")  # `drt.train` is also the re-exported function
TINY = DigitCNNConfig(conv_channels=(4, 4, 8), fc_features=(16, 16), dropout=0.0, image_size=16)


def _model() -> DomainAdaptationNet:
    torch.manual_seed(0)
    return DomainAdaptationNet(DigitFiveCNN(TINY, dynamic=DynamicResidualConfig()), 3)


def _train(domains: dict[str, Any], out: Path | None = None, **overrides: Any) -> Any:
    sources = MultiSourceDataset({k: domains[k] for k in ("d0", "d1")})
    kw: dict[str, Any] = {"method": "mcd", "steps": 8, "batch_size": 8, "lr": 0.05, "eval_every": 3} | overrides
    return train(_model(), sources, domains["d2"], source_val=domains["d0"], target_test=domains["d2"],
                 config=TrainConfig(**kw), out_dir=out)  # fmt: skip


def _cli(argv: list[str]) -> int:
    with pytest.raises(SystemExit) as exc:
        main(argv)
    return int(exc.value.code)  # type: ignore[arg-type]


@pytest.fixture
def tiny_digits(digits_root, monkeypatch) -> list[str]:
    """The common flags of a ~1 s `drt train` on the 32-image Digits-5 cache."""
    monkeypatch.setenv("DYNCORE_CACHE", str(digits_root))
    monkeypatch.setenv("DYNCORE_NO_PROGRESS", "1")
    return ["--target", "usps", "--limit", "32", "--width", "0.125", "--steps", "2", "--batch-size", "8",
            "--eval-every", "1", "--device", "cpu"]  # fmt: skip


# ---------------------------------------------------------------------------------------------------------------------
# item 4: errors that name the flag


def test_non_finite_loss_is_an_error_naming_the_learning_rate(blob_domains, tiny_digits, tmp_path, capsys) -> None:
    with pytest.raises(NonFiniteError, match=r"at step \d+ is (nan|inf).*lr=1e\+12, CLI --lr"):
        _train(blob_domains, lr=1e12)
    assert _cli(["train", *tiny_digits, "--lr", "1e12", "--steps", "6", "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert "drt train: error: train: the mcd loss term" in err and "--lr" in err and "Traceback" not in err
    assert not (tmp_path / "r" / "seed0" / "model.pt").exists()  # nothing promoted


def test_batch_larger_than_the_data_names_the_flag_and_the_split(blob_domains, tiny_digits, tmp_path, capsys) -> None:
    with pytest.raises(ValueError, match=r"batch_size=64 \(CLI --batch-size\) exceeds the 48 images of the target"):
        _train(blob_domains, batch_size=64)
    assert _cli(["train", *tiny_digits, "--batch-size", "40", "--out", str(tmp_path / "r")]) == 2
    assert "--batch-size" in capsys.readouterr().err


def test_images_smaller_than_the_network_takes_are_rejected_up_front(blob_domains, tiny_digits, tmp_path, capsys):
    small = {k: EmbeddedDataset(torch.zeros(12, 3, 8, 8, dtype=torch.uint8), torch.arange(12) % 3, ["a", "b", "c"],
                                name=k) for k in ("d0", "d1", "d2")}  # fmt: skip
    with pytest.raises(ValueError, match=r"source train split: DigitFiveCNN: images must be 16×16.*got 8×8"):
        _train(small, batch_size=4)
    with pytest.raises(ValueError, match="at least 32×32"):
        from drt.models import resnet_backbone

        DomainAdaptationNet(resnet_backbone(50), 5).check_image_size((16, 16))
    assert _cli(["train", "--data", "domainnet", "--root", str(tmp_path), "--img-size", "16", "--out",
                 str(tmp_path / "r")]) == 2  # fmt: skip
    assert "--img-size 16 is smaller than the ResNet's total stride 32" in capsys.readouterr().err
    assert _cli(["train", *tiny_digits, "--image-size", "64", "--out", str(tmp_path / "r")]) == 2
    assert "Digits-5 images are 32×32" in capsys.readouterr().err


def test_evaluating_a_checkpoint_with_non_finite_weights_names_the_file(tiny_digits, tmp_path, capsys) -> None:
    out = tmp_path / "run"
    assert _cli(["train", *tiny_digits, "--out", str(out)]) == 0
    state = torch.load(out / "seed0" / "model.pt", weights_only=True)
    name = next(k for k, v in state.items() if v.is_floating_point())
    state[name] = torch.full_like(state[name], float("nan"))
    bad = tmp_path / "nan.pt"
    torch.save(state, bad)
    common = [*tiny_digits[: tiny_digits.index("--steps")], "--device", "cpu"]
    assert _cli(["eval", *common, "--checkpoint", str(bad), "--out", str(tmp_path / "e")]) == 2
    err = capsys.readouterr().err
    assert "drt eval: error:" in err and str(bad) in err and name in err


# ---------------------------------------------------------------------------------------------------------------------
# item 5: run directories


def test_a_refused_resume_keeps_config_json_and_a_stale_one_is_replaced(tiny_digits, tmp_path) -> None:
    out = tmp_path / "run"
    out.mkdir()
    (out / "config.json").write_text('{"width": 99, "stale": true}')  # left by a run that failed before a checkpoint
    assert _cli(["train", *tiny_digits, "--out", str(out)]) == 0
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["width"] == 0.125 and "stale" not in cfg
    # another width on the same --out: refused (exit 2) and config.json still describes the run it holds
    wider = [*tiny_digits]
    wider[wider.index("--width") + 1] = "0.25"
    assert _cli(["train", *wider, "--out", str(out)]) == 2
    assert json.loads((out / "config.json").read_text()) == cfg


def test_result_json_keeps_finished_seeds_across_an_interrupt(tiny_digits, tmp_path, monkeypatch) -> None:
    out = tmp_path / "run"
    real_train = train_module.train

    def killed_on_seed_1(*args: Any, **kw: Any) -> Any:
        if kw["config"].seed == 1:
            raise KeyboardInterrupt
        return real_train(*args, **kw)

    monkeypatch.setattr(train_module, "train", killed_on_seed_1)
    assert _cli(["train", *tiny_digits, "--seeds", "0", "1", "--out", str(out)]) == 130
    first = json.loads((out / "result.json").read_text())
    assert first["finished_seeds"] == [0] and set(first["per_seed"]) == {"0"}
    monkeypatch.setattr(train_module, "train", real_train)
    assert _cli(["train", *tiny_digits, "--seeds", "0", "1", "--out", str(out)]) == 0
    second = json.loads((out / "result.json").read_text())
    assert second["finished_seeds"] == [0, 1] and second["per_seed"]["0"] == first["per_seed"]["0"]
    assert _cli(["train", *tiny_digits, "--seeds", "0", "1", "--out", str(out)]) == 0  # a rerun: nothing new
    assert json.loads((out / "result.json").read_text()) == second
    records = JSONLLogger.read(out / "metrics.jsonl")  # one line per finished seed, steps 0, 1
    assert [(r["step"], r["seed"]) for r in records] == [(0, 0), (1, 1)]


def _records(path: Path) -> list[dict[str, Any]]:
    return [{k: v for k, v in r.items() if k != "time"} for r in JSONLLogger.read(path)]


def test_jsonl_steps_stay_unique_and_continuous_across_a_kill_inside_a_checkpoint_write(
    blob_domains, tmp_path, monkeypatch
) -> None:
    _train(blob_domains, tmp_path / "ref")
    reference = _records(tmp_path / "ref" / "metrics.jsonl")
    assert [r["step"] for r in reference] == [3, 6, 8, 8] and reference[-1]["selected"] is True
    real_save = Checkpointer.save

    def killed_writing_last_at_6(self: Checkpointer, step: int, **kw: Any) -> Path:
        if step == 6 and kw.get("name", "last.pt") == "last.pt":
            raise KeyboardInterrupt  # the step-6 evaluation is already in metrics.jsonl; last.pt still holds step 3
        return real_save(self, step, **kw)

    monkeypatch.setattr(Checkpointer, "save", killed_writing_last_at_6)
    with pytest.raises(KeyboardInterrupt):
        _train(blob_domains, tmp_path / "run")
    monkeypatch.setattr(Checkpointer, "save", real_save)
    assert [r["step"] for r in _records(tmp_path / "run" / "metrics.jsonl")] == [3, 6]
    resumed = _train(blob_domains, tmp_path / "run")
    assert resumed.resumed_at == 3
    assert _records(tmp_path / "run" / "metrics.jsonl") == reference  # no duplicated step-6 line
    _train(blob_domains, tmp_path / "run")  # a finished run re-evaluated: its final line replaced, not repeated
    assert _records(tmp_path / "run" / "metrics.jsonl") == reference


def test_model_pt_is_written_atomically(tiny_digits, tmp_path, monkeypatch) -> None:
    out = tmp_path / "run"
    assert _cli(["train", *tiny_digits, "--out", str(out)]) == 0
    good = (out / "seed0" / "model.pt").read_bytes()
    real_save = torch.save

    def dies_writing_a_state_dict(obj: Any, f: Any, *args: Any, **kw: Any) -> None:
        if isinstance(obj, dict) and "format" not in obj:  # the bare state dict of model.pt, not a checkpoint
            if hasattr(f, "write"):
                f.write(b"PK\x03\x04 truncated")
            else:
                Path(f).write_bytes(b"PK\x03\x04 truncated")
            raise OSError(28, "No space left on device")
        real_save(obj, f, *args, **kw)

    monkeypatch.setattr(torch, "save", dies_writing_a_state_dict)
    assert _cli(["train", *tiny_digits, "--out", str(out)]) == 2  # the rerun re-evaluates, then fails to write
    assert (out / "seed0" / "model.pt").read_bytes() == good  # the previous file is intact
    assert not list((out / "seed0").glob("*.tmp"))


# ---------------------------------------------------------------------------------------------------------------------
# item 8: flag spellings


def test_shared_flag_spellings_and_aliases(tiny_digits, tmp_path) -> None:
    out = tmp_path / "run"
    assert _cli(["train", *tiny_digits, "--wd", "0.001", "--out", str(out)]) == 0
    assert json.loads((out / "config.json").read_text())["weight_decay"] == 0.001
    out2 = tmp_path / "run2"
    assert _cli(["train", *tiny_digits, "--weight-decay", "0.001", "--out", str(out2)]) == 0
    assert json.loads((out2 / "config.json").read_text())["weight_decay"] == 0.001
    common = [*tiny_digits[: tiny_digits.index("--steps")], "--device", "cpu"]
    for flag in ("--checkpoint", "--weights"):
        assert _cli(["eval", *common, flag, str(out / "seed0" / "model.pt"), "--out", str(tmp_path / "e")]) == 0
