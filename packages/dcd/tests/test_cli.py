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


def test_demo_quick_writes_summary(tmp_path: Path) -> None:
    assert _run(["demo", "--quick", "--steps", "2", "--seeds", "1", "--out", str(tmp_path)]) == 0
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["package"] == "dcd" and len(summary["claims"]) == 6
    assert (tmp_path / summary["plots"][0]).is_file()
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["static"]["params"] < results["DCD (ΛW0+PΦQᵀ, +CLS)"]["params"] < results["DY-Conv (K=4)"]["params"]


def test_export_onnx_matches(tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime")
    assert _run(["export", "--model", "dcd_mobilenetv2_035", "--quick", "--inference-form", "--num-classes", "10",
                 "--out", str(tmp_path)]) == 0  # fmt: skip
    result = json.loads((tmp_path / "export.json").read_text())
    assert result["ok"] and result["max_abs_diff"] < 1e-3


def test_train_and_eval_embedded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DYNCORE_NO_PROGRESS", "1")
    out = tmp_path / "run"
    args = ["--model", "dcd_resnet10", "--data", "digits5:usps", "--limit", "64", "--workers", "0"]
    assert _run(["train", *args, "--quick", "--batch-size", "16", "--out", str(out)]) == 0
    assert (out / "checkpoints" / "last.pt").is_file() and (out / "metrics.jsonl").is_file()
    assert (
        _run(["eval", *args, "--checkpoint", str(out / "checkpoints" / "last.pt"), "--out", str(tmp_path / "e")]) == 0
    )
    assert 0.0 <= json.loads((tmp_path / "e" / "eval.json").read_text())["top1"] <= 100.0
    with pytest.raises(ValueError, match="unknown Digits-5 domain"):
        main(["train", "--data", "digits5:nope", "--quick", "--out", str(tmp_path / "bad")])
