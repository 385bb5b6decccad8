from __future__ import annotations

import json

import pytest
import torch

from bdl.cli import main


def _run(argv: list[str]) -> int:
    with pytest.raises(SystemExit) as exc:
        main(argv)
    return int(exc.value.code or 0)


@pytest.mark.quick
def test_help_lists_every_command(capsys):
    assert _run(["--help"]) == 0
    out = capsys.readouterr().out
    for cmd in ("run", "train-seg", "train-translation", "pseudo-label", "eval", "demo", "bench"):
        assert cmd in out


def test_cli_train_seg_pseudo_label_and_eval_round_trip(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("DYNCORE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("DYNCORE_NO_PROGRESS", "1")
    data = ["--size", "32", "64", "--num-source", "6", "--num-target", "6", "--num-val", "3"]
    model = ["--model", "unet", "--encoder", "tu-mobilenetv3_small_050"]
    rc = _run(
        [
            "train-seg",
            *data,
            *model,
            "--steps",
            "3",
            "--batch-size",
            "2",
            "--adversarial",
            "--optimizer",
            "adam",
            "--lr",
            "1e-3",
            "--out",
            str(tmp_path / "seg"),
            "--device",
            "cpu",
        ]
    )
    assert rc == 0 and (tmp_path / "seg" / "model.pt").is_file()
    assert "mIoU-19" in capsys.readouterr().out
    weights = ["--weights", str(tmp_path / "seg" / "model.pt")]
    # resuming that run directory with another config: refused, nothing overwritten
    saved = {p: p.read_bytes() for p in (tmp_path / "seg").rglob("*") if p.is_file()}
    rc = _run(
        [
            "train-seg",
            *data,
            *model,
            "--steps",
            "3",
            "--batch-size",
            "2",
            "--adversarial",
            "--optimizer",
            "adam",
            "--lr",
            "5e-3",
            "--out",
            str(tmp_path / "seg"),
            "--device",
            "cpu",
        ]
    )
    assert rc == 2 and "config differs in key(s) ['lr']" in capsys.readouterr().err
    assert saved == {p: p.read_bytes() for p in (tmp_path / "seg").rglob("*") if p.is_file()}
    tdata = ["--size", "32", "64", "--num-target", "6", "--num-val", "3"]  # commands without a source
    assert _run(["pseudo-label", *tdata, *model, *weights, "--out", str(tmp_path / "pl"), "--device", "cpu"]) == 0
    manifest = json.loads((tmp_path / "pl" / "pseudo_labels" / "pseudo_labels.json").read_text())
    assert len(manifest["names"]) == 6 and 0.0 <= manifest["pixel_ratio"] <= 1.0
    assert (tmp_path / "pl" / "plots" / "pixel_ratio_vs_confidence.png").is_file()
    # running it again refuses to overwrite the folder
    assert _run(["pseudo-label", *tdata, *model, *weights, "--out", str(tmp_path / "pl"), "--device", "cpu"]) == 2
    assert "refusing to overwrite" in capsys.readouterr().err
    # pseudo labels made for 6 target images do not fit a 5-image target list
    data5 = ["--size", "32", "64", "--num-source", "6", "--num-target", "5", "--num-val", "3"]
    rc = _run(
        [
            "train-seg",
            *data5,
            *model,
            "--steps",
            "1",
            "--pseudo",
            str(tmp_path / "pl" / "pseudo_labels"),
            "--out",
            str(tmp_path / "seg2"),
            "--device",
            "cpu",
        ]
    )
    assert rc == 2 and "holds 6 labels but the target list has 5" in capsys.readouterr().err
    assert _run(["eval", *tdata, *model, *weights, "--out", str(tmp_path / "ev"), "--device", "cpu"]) == 0
    scores = json.loads((tmp_path / "ev" / "eval.json").read_text())
    assert len(scores["iou"]) == 19 and 0.0 <= scores["miou19"] <= 100.0
    # a 19-class checkpoint into a 5-class model: a clear error
    assert _run(["eval", *tdata, *model, *weights, "--num-classes", "5", "--out", str(tmp_path / "ev5")]) == 2
    assert "shape mismatch" in capsys.readouterr().err
    assert torch.load(tmp_path / "seg" / "model.pt")["model"]


def test_cli_errors_are_clear(tmp_path, capsys):
    assert (
        _run(["eval", "--encoder", "no_such_encoder", "--weights", str(tmp_path / "w.pt"), "--out", str(tmp_path)]) == 2
    )
    assert "no_such_encoder" in capsys.readouterr().err
    assert (
        _run(["eval", "--register", "no_such_module:f", "--weights", str(tmp_path / "w.pt"), "--out", str(tmp_path)])
        == 2
    )
    assert "--register 'no_such_module:f'" in capsys.readouterr().err
    assert _run(["eval", "--out", str(tmp_path)]) == 2
    assert "--weights" in capsys.readouterr().err
    assert _run(["run", "--source", "gta5", "--out", str(tmp_path)]) == 2
    assert "--source gta5 needs --source-root" in capsys.readouterr().err
    rc = _run(["run", "--source", "gta5", "--source-root", str(tmp_path / "nope"), "--out", str(tmp_path)])
    assert rc == 2 and "GTA5 root: directory" in capsys.readouterr().err


@pytest.mark.slow
def test_quick_demo_writes_summary(tmp_path, monkeypatch):
    monkeypatch.setenv("DYNCORE_CACHE", str(tmp_path / "cache"))
    assert _run(["demo", "--out", str(tmp_path / "demo"), "--quick", "--K", "1", "--N", "1", "--device", "cpu"]) == 0
    summary = json.loads((tmp_path / "demo" / "summary.json").read_text())
    assert summary["package"] == "bdl" and len(summary["claims"]) == 3
    assert any("qualitative_M1_1" in p for p in summary["plots"])
    assert "M₁⁽¹⁾(F⁽¹⁾)" in summary["tables"]["paper vs measured"]
