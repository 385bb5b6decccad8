"""A 2-process DDP run (``torch.distributed.run``, gloo on CPU) of ``dcd train`` on embedded data, resumed from its
checkpoint by a second invocation with a larger budget, then scored by ``dcd eval``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from dyncore.training import JSONLLogger, load_checkpoint

LIMIT, BATCH, WORLD = 64, 8, 2  # 64 images, 8 per process and step, 2 processes → 4 steps per epoch
ARGS = ("--model", "dcd_mobilenetv2_035", "--data", "digits5:svhn", "--limit", str(LIMIT), "--workers", "0")


def _torchrun(run: Path, epochs: int, cwd: Path) -> subprocess.CompletedProcess[str]:
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={WORLD}",
        "-m", "dcd", "train", *ARGS, "--batch-size", str(BATCH), "--epochs", str(epochs),
        "--out", str(run), "--device", "cpu", "--seed", "0",
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "DYNCORE_NO_PROGRESS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=cwd, timeout=600)
    if proc.returncode != 0:
        pytest.fail(f"torchrun dcd train exited {proc.returncode}\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}")
    return proc


def test_ddp_train_then_resume_then_eval(
    tmp_path: Path, cli_in: Callable[..., subprocess.CompletedProcess[str]]
) -> None:
    run = tmp_path / "run"
    steps_per_epoch = LIMIT // (BATCH * WORLD)  # DistributedSampler shards the data over the 2 ranks

    first = _torchrun(run, 1, tmp_path)
    assert first.stdout.count("epoch 1/1:") == 1  # only rank 0 reports
    ckpt = load_checkpoint(run / "checkpoints" / "last.pt", weights_only=False)
    assert ckpt["step"] == 1
    assert ckpt["scheduler"]["last_epoch"] == steps_per_epoch  # a single process would have taken LIMIT // BATCH
    assert [r["epoch"] for r in JSONLLogger.read(run / "metrics.jsonl")] == [1]

    second = _torchrun(run, 2, tmp_path)  # same run directory: resumes after epoch 1
    assert "epoch 1/2:" not in second.stdout and second.stdout.count("epoch 2/2:") == 1
    ckpt = load_checkpoint(run / "checkpoints" / "last.pt", weights_only=False)
    assert ckpt["step"] == 2
    assert ckpt["scheduler"]["last_epoch"] == 2 * steps_per_epoch  # the LR schedule continued, not restarted
    records = JSONLLogger.read(run / "metrics.jsonl")
    assert [r["epoch"] for r in records] == [1, 2]
    assert json.loads((run / "config.json").read_text())["recipe"]["epochs"] == 2

    # the DDP checkpoint (saved unwrapped) loads in a single-process `dcd eval` and scores what training measured
    cli_in(tmp_path, "dcd", "eval", *ARGS, "--checkpoint", str(run / "checkpoints" / "last.pt"), "--out",
           str(tmp_path / "eval"), "--device", "cpu")  # fmt: skip
    scores = json.loads((tmp_path / "eval" / "eval.json").read_text())
    assert scores["top1"] == pytest.approx(records[-1]["val_top1"])
    assert scores["loss"] == pytest.approx(records[-1]["val_loss"], rel=1e-5)
