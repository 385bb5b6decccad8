"""The ``micronet`` CLI: train (resumable) / eval / export on tiny inputs; training utilities."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from dyncore.cli import run_cli
from micronet.cli import COMMANDS, build_model
from micronet.train import make_scheduler, recipe_lr


def _folder(root: Path, n: int = 8) -> Path:
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for cls in ("a", "b"):
            d = root / split / cls
            d.mkdir(parents=True)
            for i in range(n):
                Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(d / f"{i}.png")
    return root


def _cli(*argv: str) -> int:
    return run_cli("micronet", None, COMMANDS, list(argv))


@pytest.mark.quick
def test_help_and_bad_flags(capsys) -> None:  # type: ignore[no-untyped-def]
    assert _cli("--help") == 0
    assert "train" in capsys.readouterr().out
    assert _cli("train", "--no-such-flag") == 2


def test_train_resume_eval_export(tmp_path: Path) -> None:
    data = _folder(tmp_path / "data")
    out = tmp_path / "run"
    args = [
        "train",
        "--data",
        f"folder:{data}",
        "--image-size",
        "32",
        "--batch-size",
        "4",
        "--epochs",
        "2",
        "--out",
        str(out),
        "--threads",
        "1",
        "--lr",
        "0.05",
    ]
    assert _cli(*args, "--max-steps", "4") == 0
    ckpt = out / "checkpoints" / "last.pt"
    assert ckpt.is_file()
    assert torch.load(ckpt, weights_only=False)["step"] == 4
    # same command, larger budget: resumes at step 4 and finishes the 2 epochs (8 steps)
    assert _cli(*args, "--max-steps", "8") == 0
    assert torch.load(ckpt, weights_only=False)["step"] == 8
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert any(x.get("split") == "val" for x in lines)
    assert (
        _cli(
            "eval",
            "--data",
            f"folder:{data}",
            "--image-size",
            "32",
            "--checkpoint",
            str(ckpt),
            "--out",
            str(tmp_path / "ev"),
        )
        == 0
    )
    # a changed config cannot silently resume
    from dyncore.training import ConfigMismatchError

    with pytest.raises(ConfigMismatchError):
        _cli(*[a if a != "0.05" else "0.1" for a in args])


def test_export_cli(tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime")
    assert (
        _cli("export", "--model", "micronet_m0", "--num-classes", "10", "--image-size", "64", "--out", str(tmp_path))
        == 0
    )
    assert (tmp_path / "micronet_m0.onnx").is_file()


def test_schedule_and_models() -> None:
    assert recipe_lr(512) == pytest.approx(0.2) and recipe_lr(256) == pytest.approx(0.1)
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = make_scheduler(opt, total_steps=10, warmup_steps=2)
    lrs = []
    for _ in range(10):
        lrs.append(sched.get_last_lr()[0])
        opt.step()
        sched.step()
    assert lrs[0] == pytest.approx(0.5) and lrs[2] == pytest.approx(1.0) and lrs[-1] < 0.05
    small = build_model("micronet_m0", num_classes=10, image_size=32)
    assert small.eval()(torch.randn(1, 3, 32, 32)).shape == (1, 10)
    base = build_model("mobilenetv3_small_0.15", num_classes=10, image_size=32)
    assert base(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    with pytest.raises(ValueError, match="unknown MicroNet config"):
        build_model("micronet_m7", num_classes=10, image_size=224)
