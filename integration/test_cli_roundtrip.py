"""A tiny ``train`` → ``eval`` round trip through each package's CLI on embedded data: the checkpoint written by
``train`` loads in ``eval`` and scores exactly what ``train`` measured on the same split. (dcd's round trip, with DDP
and resume, is in test_torchrun.py.)"""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from dyncore.training import JSONLLogger, load_checkpoint

Cli = Callable[..., subprocess.CompletedProcess[str]]
CPU = ("--device", "cpu", "--seed", "0")


def test_covnorm_train_eval(cli: Cli, tmp_path: Path) -> None:
    run = tmp_path / "covnorm"
    data = ("--tasks", "digits", "--source-limit", "128", "--train-limit", "64", "--test-limit", "64")
    cli("covnorm", "train", "--quick", *data, "--epochs", "1", "--pretrain-epochs", "1", "--out", str(run), *CPU)
    records = JSONLLogger.read(run / "metrics.jsonl")
    assert [(r["task"], r["stage"]) for r in records] == [("digits", "ra"), ("digits", "independent")]
    final = records[-1]
    assert 0 < final["percent_params"] < 100
    ckpt = load_checkpoint(run / "checkpoints" / "model.pt")
    assert ckpt["tasks"] == ["digits"]

    out = cli("covnorm", "eval", "--checkpoint", str(run / "checkpoints" / "model.pt"), "--test-limit", "64").stdout
    row = re.search(r"^\| digits \| ([\d.]+) \| ([\d.]+) \|$", out, flags=re.MULTILINE)
    assert row is not None, out
    assert float(row[1]) == pytest.approx(final["accuracy"], abs=0.0051)  # printed to 2 decimals
    assert float(row[2]) == pytest.approx(final["percent_params"], abs=0.00051)


def test_micronet_train_eval(cli: Cli, tmp_path: Path) -> None:
    run = tmp_path / "micronet"
    data = ("--data", "digits5:mnistm", "--limit", "64", "32", "--batch-size", "16")
    cli("micronet", "train", *data, "--epochs", "1", "--max-steps", "3", "--out", str(run), *CPU)
    records = JSONLLogger.read(run / "metrics.jsonl")
    val = [r for r in records if r.get("split") == "val"][-1]
    assert val["step"] == 3 and load_checkpoint(run / "checkpoints" / "last.pt")["step"] == 3

    ckpt = str(run / "checkpoints" / "last.pt")
    cli("micronet", "eval", *data, "--checkpoint", ckpt, "--out", str(tmp_path / "eval"), *CPU)
    (ev,) = JSONLLogger.read(tmp_path / "eval" / "metrics.jsonl")
    assert ev["top1"] == pytest.approx(val["top1"]) and ev["loss"] == pytest.approx(val["loss"], rel=1e-5)


def test_drt_train_eval(cli: Cli, tmp_path: Path) -> None:
    run = tmp_path / "drt"
    model = ("--target", "mnistm", "--limit", "64", "--width", "0.25")
    cli("drt", "train", *model, "--steps", "2", "--batch-size", "8", "--eval-every", "2", "--out", str(run), *CPU)
    trained = json.loads((run / "result.json").read_text())["target_test"]

    proc = cli(
        "drt", "eval", *model, "--checkpoint", str(run / "seed0" / "model.pt"), "--out", str(tmp_path / "e"), *CPU
    )
    scores = json.loads(proc.stdout[proc.stdout.index("{") :])
    assert set(scores["target_test"]) == set(trained) == {"F1", "F2", "ensemble"}
    for head, acc in scores["target_test"].items():
        assert acc == pytest.approx(trained[head]["mean"])


def test_bdl_train_seg_eval(cli: Cli, tmp_path: Path) -> None:
    run = tmp_path / "bdl"
    data = ("--num-target", "4", "--num-val", "4")
    model = ("--model", "deeplabv3plus", "--encoder", "resnet18")
    cli("bdl", "train-seg", *data, "--num-source", "4", *model, "--steps", "2", "--batch-size", "2", "--adversarial",
        "--out", str(run), *CPU)  # fmt: skip
    (trained,) = JSONLLogger.read(run / "metrics.jsonl")
    assert trained["step"] == 2 and load_checkpoint(run / "checkpoints" / "last.pt")["step"] == 2

    cli("bdl", "eval", *data, *model, "--weights", str(run / "model.pt"), "--out", str(tmp_path / "eval"), *CPU)
    scores = json.loads((tmp_path / "eval" / "eval.json").read_text())
    for key in ("miou19", "miou16", "miou13", "pixel_accuracy"):
        assert scores[key] == pytest.approx(trained[key])
    assert len(scores["iou"]) == 19
