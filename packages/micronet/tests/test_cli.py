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
    # a changed config cannot silently resume: a user error (exit 2) naming the differing key (dyncore's run_cli
    # now reports ConfigMismatchError instead of raising it)
    assert _cli(*[a if a != "0.05" else "0.1" for a in args]) == 2


def test_export_cli(tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime")
    assert (
        _cli(
            "export",
            "--model",
            "micronet_m0",
            "--num-classes",
            "10",
            "--image-size",
            "64",
            "--exporter",
            "legacy",
            "--out",
            str(tmp_path),
        )
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


def _folder_of(root: Path, size: int, n: int = 4) -> Path:
    rng = np.random.default_rng(1)
    for split in ("train", "val"):
        for cls in ("a", "b"):
            d = root / split / cls
            d.mkdir(parents=True)
            for i in range(n):
                Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(d / f"{i}.png")
    return root


def _train_argv(data: Path, out: Path, *extra: str) -> list[str]:
    return [
        "train", "--data", f"folder:{data}", "--img-size", "32", "--batch-size", "4", "--epochs", "1",
        "--out", str(out), "--threads", "1", *extra,
    ]  # fmt: skip


def test_checkpoint_carries_the_model_spec_32px(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    """The issue's case: train on 32×32 data writes a checkpoint whose spec rebuilds the stem-stride-1 model; eval
    and export rebuild exactly it; a default-stride timm model refuses its weights with a clear error."""
    import timm

    from dyncore.models import create_from_spec

    data = _folder_of(tmp_path / "data", 32)
    out = tmp_path / "run"
    assert _cli(*_train_argv(data, out, "--lr", "0.05", "--wd", "1e-4", "--max-steps", "2")) == 0
    ckpt = torch.load(out / "checkpoints" / "last.pt", weights_only=False)
    spec = ckpt["extra"]["model_spec"]
    assert spec == {"name": "micronet_m0", "kwargs": {"num_classes": 2, "in_chans": 3, "stem_stride": 1}}
    assert ckpt["config"]["train"]["weight_decay"] == 1e-4  # --wd is the alias of --weight-decay
    model = create_from_spec(spec)
    model.load_state_dict(ckpt["model"])
    assert model.total_stride == 16
    with pytest.raises(ValueError, match="stem has stride 1 but this model's has 2"):
        timm.create_model("micronet_m0", num_classes=2).load_state_dict(ckpt["model"])
    ckpt_path = str(out / "checkpoints" / "last.pt")
    assert _cli("eval", "--data", f"imagefolder:{data}", "--img-size", "32", "--checkpoint", ckpt_path,
                "--out", str(tmp_path / "ev")) == 0  # fmt: skip
    assert "micronet_m0" in capsys.readouterr().out
    # a checkpoint without a spec is refused, naming the file
    del ckpt["extra"]["model_spec"]
    bare = tmp_path / "bare.pt"
    torch.save(ckpt, bare)
    assert _cli("eval", "--data", f"folder:{data}", "--img-size", "32", "--checkpoint", str(bare),
                "--out", str(tmp_path / "ev2")) == 2  # fmt: skip
    err = capsys.readouterr().err
    assert "records no model spec" in err and "bare.pt" in err, err


@pytest.mark.parametrize("lr", ["nan", "1e6"])
def test_non_finite_loss_names_the_flag_and_writes_no_checkpoint(tmp_path: Path, lr: str, capsys) -> None:  # type: ignore[no-untyped-def]
    data = _folder_of(tmp_path / "data", 32)
    out = tmp_path / "run"
    assert _cli(*_train_argv(data, out, "--lr", lr, "--max-steps", "8", "--epochs", "4")) == 2
    err = capsys.readouterr().err
    assert "--lr" in err and ("nan" in err or "1e+06" in err), err
    last = out / "checkpoints" / "last.pt"
    if last.exists():  # only a checkpoint of an epoch that ended finite: never the diverged model
        from dyncore.training import check_finite_state

        ckpt = torch.load(last, weights_only=False)
        check_finite_state(ckpt["model"], source=str(last))
        assert ckpt["step"] < 8


def test_images_smaller_than_the_stride_are_rejected_up_front(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    data = _folder_of(tmp_path / "data", 12)
    argv = _train_argv(data, tmp_path / "run")
    argv[argv.index("--img-size") + 1] = "8"
    assert _cli(*argv) == 2
    err = capsys.readouterr().err
    assert "--img-size 8" in err and "total stride 16" in err, err


def test_pretrained_flag_on_train_eval_export(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    """--pretrained loads the authors' released file (here the m0 fixture, as released: module. + state_dict)."""
    pytest.importorskip("onnxruntime")
    import zlib

    f = np.load(Path(__file__).parent / "data" / "released_m0.npz")
    sd = {}
    for key, std in zip(f["keys"], f["rule_std"], strict=True):
        key = str(key)
        if std > 0:
            g = torch.Generator().manual_seed(zlib.crc32(key.encode()))
            sd[key] = torch.randn(tuple(int(v) for v in f["shape:" + key]), generator=g) * float(std)
        else:
            sd[key] = torch.from_numpy(np.array(f["x:" + key]))
    released = tmp_path / "micronet-m0.pth"
    torch.save({"state_dict": {"module." + k: v for k, v in sd.items()}}, released)
    data = _folder_of(tmp_path / "data", 32)
    out = tmp_path / "run"
    assert _cli(*_train_argv(data, out, "--lr", "0.01", "--max-steps", "1", "--pretrained", str(released))) == 0
    assert _cli("eval", "--data", f"folder:{data}", "--img-size", "32", "--pretrained", str(released),
                "--out", str(tmp_path / "ev")) == 2  # fmt: skip
    assert "1000 classes" in capsys.readouterr().err  # the released ImageNet head on a 2-class folder: refused
    assert _cli("export", "--pretrained", str(released), "--img-size", "64", "--exporter", "legacy",
                "--out", str(tmp_path / "ex")) == 0  # fmt: skip
    assert "relative errors" in capsys.readouterr().out


def test_bench_quick_prints_progress(tmp_path: Path, capsys, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    """--quick reports each phase as it starts (timings replaced by constants here: only the progress is tested)."""
    import micronet.bench as bench

    monkeypatch.setattr(bench, "compare_latency", lambda cases, **kw: {n: 1.0 for n in cases})
    monkeypatch.setattr(bench, "compare_train_throughput", lambda cases, **kw: {n: 1.0 for n in cases})
    monkeypatch.setattr(bench, "optimize_torchscript", lambda model, x: model)
    monkeypatch.setattr(bench, "_ort_case", lambda *a: None)
    assert _cli("bench", "--quick", "--img-size", "32", "--out", str(tmp_path)) == 0
    lines = [x for x in capsys.readouterr().out.splitlines() if x.startswith("[micronet bench]")]
    assert len(lines) >= 5 and "eager latency" in lines[1], lines
