"""JSONL metrics log, the tee logger and progress bars."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch

from dyncore.training import JSONLLogger, get_logger, progress


@pytest.mark.quick
def test_jsonl_logger_appends_one_record_per_call(tmp_path: Path) -> None:
    path = tmp_path / "run" / "metrics.jsonl"
    log = JSONLLogger(path)
    log.log(loss=torch.tensor(0.5), top1=np.float32(12.5), split="val")
    log.log(step=100, miou=float("nan"), iou=torch.tensor([0.25, 0.5]))
    lines = path.read_text().splitlines()
    assert len(lines) == 2
    first, second = (json.loads(line) for line in lines)  # strict JSON on every line
    assert first["step"] == 0 and first["loss"] == 0.5 and first["top1"] == 12.5 and first["split"] == "val"
    assert isinstance(first["time"], float) and first["time"] > 1.6e9
    assert second["step"] == 100 and second["miou"] is None and second["iou"] == [0.25, 0.5]
    assert JSONLLogger.read(path) == [first, second]
    # a second logger on the same file appends instead of truncating
    JSONLLogger(path).log(step=101, loss=0.25)
    assert [r["step"] for r in JSONLLogger.read(path)] == [0, 100, 101]
    with pytest.raises(TypeError, match="value for 'model' has type Linear"):
        log.log(model=torch.nn.Linear(1, 1))
    silent = JSONLLogger(tmp_path / "other" / "m.jsonl", enabled=False)  # e.g. non-main rank
    silent.log(loss=1.0)
    assert not (tmp_path / "other").exists()


def test_get_logger_tees_to_stdout_and_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    file = tmp_path / "logs" / "train.log"
    logger = get_logger("dyncore.test.tee", file)
    logger.info("epoch %d done", 3)
    logger = get_logger("dyncore.test.tee", file)  # calling again must not duplicate lines
    logger.info("second")
    logger.debug("hidden at INFO")
    for h in logger.handlers:
        h.flush()
    out = capsys.readouterr().out
    text = file.read_text()
    for stream in (out, text):
        assert stream.count("epoch 3 done") == 1 and stream.count("second") == 1 and "hidden" not in stream
        assert "dyncore.test.tee INFO: epoch 3 done" in stream
    assert isinstance(logger, logging.Logger)
    for h in list(logger.handlers):
        logger.removeHandler(h)
        h.close()


def test_progress_disabled_by_env_and_rank(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DYNCORE_NO_PROGRESS", raising=False)
    monkeypatch.delenv("RANK", raising=False)
    bar = progress(range(5), desc="x")
    assert not bar.disable and list(bar) == [0, 1, 2, 3, 4]
    monkeypatch.setenv("DYNCORE_NO_PROGRESS", "1")
    bar = progress(range(3))
    assert bar.disable and list(bar) == [0, 1, 2]  # still iterates
    monkeypatch.delenv("DYNCORE_NO_PROGRESS")
    monkeypatch.setenv("RANK", "1")  # non-main torchrun process
    assert progress(range(2)).disable
    monkeypatch.setenv("RANK", "0")
    assert progress(range(2), disable=True).disable
