"""The CLI: help, demo/export/train smoke runs writing their files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dcd.cli import main


def _run(argv: list[str]) -> int:
    with pytest.raises(SystemExit) as exc:
        main(argv)
    return int(exc.value.code or 0)


@pytest.mark.quick
def test_help_lists_commands(capsys: pytest.CaptureFixture[str]) -> None:
    assert _run(["--help"]) == 0
    out = capsys.readouterr().out
    for cmd in ("train", "eval", "demo", "bench", "export"):
        assert cmd in out
    assert _run(["train", "--data", "digits5:nope", "--quick", "--out", "/tmp/x", "--device", "nope"]) == 2


def test_demo_quick_writes_summary(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert _run(["demo", "--quick", "--steps", "2", "--seeds", "1", "--out", str(tmp_path)]) == 0
    from dcd.demo import DEMO_VARIANTS

    out = capsys.readouterr().out  # a progress line as each compared model finishes (issue 14 item 8)
    assert all(any(line.startswith(name) and "top-1" in line for line in out.splitlines()) for name in DEMO_VARIANTS)
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["package"] == "dcd" and len(summary["claims"]) == 6
    assert (tmp_path / summary["plots"][0]).is_file()
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["static"]["params"] < results["DCD (ΛW0+PΦQᵀ, +CLS)"]["params"] < results["DY-Conv (K=4)"]["params"]


def test_export_onnx_is_checked_relative_on_a_calibrated_model(tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime")
    assert _run(["export", "--model", "dcd_mobilenetv2_035", "--quick", "--legacy", "--num-classes", "10",
                 "--out", str(tmp_path)]) == 0  # fmt: skip
    result = json.loads((tmp_path / "export.json").read_text())
    assert result["ok"] and result["form"] == "reparameterized" and result["exporter"] == "torchscript"
    assert len(result["relative_errors"]) == 2 and max(result["relative_errors"]) <= 1e-4  # traced + second input
    assert result["max_abs_reference"] > 1e-2  # BN-calibrated: O(1) logits, not ~1e-14


def test_train_and_eval_embedded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DYNCORE_NO_PROGRESS", "1")
    out = tmp_path / "run"
    args = ["--model", "dcd_resnet10", "--data", "digits5:usps", "--limit", "64", "--workers", "0"]
    assert _run(["train", *args, "--quick", "--batch-size", "16", "--out", str(out)]) == 0
    assert (out / "checkpoints" / "last.pt").is_file() and (out / "metrics.jsonl").is_file()
    first = json.loads((out / "result.json").read_text())
    assert first["epochs_done"] == 1 and 0.0 <= first["best_top1"] <= 100.0
    # a rerun of the finished run resumes at its end: nothing trains, and the recorded best is kept (not reset)
    assert _run(["train", *args, "--quick", "--batch-size", "16", "--out", str(out)]) == 0
    assert json.loads((out / "result.json").read_text()) == first
    assert json.loads((out / "config.json").read_text())["model_spec"]["name"] == "dcd_resnet10"
    ckpt = str(out / "checkpoints" / "last.pt")
    # eval rebuilds the recorded model (no --model needed); a contradicting flag is refused
    assert _run(["eval", *args[2:], "--checkpoint", ckpt, "--out", str(tmp_path / "e")]) == 0
    assert _run(["eval", *args[2:], "--checkpoint", ckpt, "--num-classes", "7", "--out", str(tmp_path / "f")]) == 2
    assert 0.0 <= json.loads((tmp_path / "e" / "eval.json").read_text())["top1"] <= 100.0
    assert _run(["train", "--data", "digits5:nope", "--quick", "--out", str(tmp_path / "bad")]) == 2


def _tiny_folder(root: Path) -> Path:
    from PIL import Image

    for split in ("train", "val"):
        for c in ("a", "b"):
            (root / split / c).mkdir(parents=True)
            for i in range(2):
                Image.new("RGB", (40, 40), (40 * i, 100, 200 if c == "a" else 0)).save(root / split / c / f"{i}.png")
    return root


def test_train_rejects_bad_sizes_up_front(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = f"folder:{_tiny_folder(tmp_path / 'data')}"
    base = ["train", "--model", "dcd_mobilenetv2_050", "--data", data, "--workers", "0", "--epochs", "1"]
    assert _run([*base, "--img-size", "16", "--batch-size", "2", "--out", str(tmp_path / "a")]) == 2
    assert "smaller than dcd_mobilenetv2_050's total stride 32" in capsys.readouterr().err
    assert not (tmp_path / "a" / "config.json").exists()  # nothing written for a refused run
    assert _run([*base, "--img-size", "32", "--batch-size", "64", "--out", str(tmp_path / "b")]) == 2
    assert "no batch would be formed" in capsys.readouterr().err
    alias = ["--data", f"imagefolder:{tmp_path / 'data'}", "--wd", "1e-3", "--image-size", "16"]
    assert _run([*base[:3], *alias, "--workers", "0", "--batch-size", "2", "--out", str(tmp_path / "c")]) == 2
    assert "total stride" in capsys.readouterr().err  # the aliases parse (and reach the same check)


def test_eval_refuses_checkpoint_without_model_spec(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import torch

    import dcd

    path = tmp_path / "plain.pt"
    torch.save({"model": dcd.create("dcd_resnet10", num_classes=10, small_input=True).state_dict()}, path)
    argv = ["eval", "--data", "digits5:usps", "--limit", "8", "--workers", "0", "--checkpoint", str(path)]
    assert _run([*argv, "--out", str(tmp_path / "e")]) == 2
    assert "records no model spec" in capsys.readouterr().err


def test_a_refused_resume_keeps_config_and_a_resume_carries_the_best(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Issue 14 item 5: config.json is written only after the resume check passes, and result.json's best is the
    best over every epoch, those before the interruption included."""
    monkeypatch.setenv("DYNCORE_NO_PROGRESS", "1")
    out = tmp_path / "run"
    args = ["train", "--model", "dcd_resnet10", "--data", "digits5:usps", "--limit", "64", "--workers", "0",
            "--batch-size", "16", "--out", str(out)]  # fmt: skip
    assert _run([*args, "--epochs", "1"]) == 0
    config = (out / "config.json").read_bytes()
    first = json.loads((out / "result.json").read_text())
    capsys.readouterr()
    assert _run([*args, "--epochs", "2", "--lr", "0.5"]) == 2  # another lr: refused, nothing overwritten
    assert "lr" in capsys.readouterr().err
    assert (out / "config.json").read_bytes() == config
    # the kept best stands in for the epochs before the "interruption"; a resume must not forget it
    (out / "result.json").write_text(json.dumps({**first, "best_top1": 99.5}))
    assert _run([*args, "--epochs", "2"]) == 0
    second = json.loads((out / "result.json").read_text())
    assert second["epochs_done"] == 2 and second["best_top1"] == 99.5
    steps = [json.loads(line)["epoch"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2]
