from __future__ import annotations

import argparse
import json

import pytest
import torch

from dyncore.cli import Command, RunDir, add_common_args, main, resolve_device, run_cli


def _commands(calls: list[argparse.Namespace]) -> list[Command]:
    def train_args(p: argparse.ArgumentParser) -> None:
        p.add_argument("--epochs", type=int, default=3, help="training epochs")
        add_common_args(p)  # explicit call is fine: run_cli does not add the flags twice

    def train(args: argparse.Namespace) -> int:
        calls.append(args)
        return 7

    def ev(args: argparse.Namespace) -> None:
        calls.append(args)

    return [Command("train", "train a model", train_args, train), Command("eval", "evaluate", lambda p: None, ev)]


@pytest.mark.quick
def test_run_cli_dispatches_and_resolves_common_flags(tmp_path):
    calls: list[argparse.Namespace] = []
    before = torch.get_num_threads()
    try:
        rc = run_cli(
            "demo", "doc", _commands(calls), ["train", "--epochs", "5", "--out", str(tmp_path), "--threads", "1"]
        )
        assert rc == 7
        args = calls[-1]
        assert args.command == "train" and args.epochs == 5 and args.out == tmp_path
        assert (
            args.seed == 0 and args.quick is False and args.device == ("cuda" if torch.cuda.is_available() else "cpu")
        )
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
    assert run_cli("demo", "doc", _commands(calls), ["eval", "--device", "cpu", "--quick"]) == 0
    assert calls[-1].device == "cpu" and calls[-1].quick is True
    assert str(calls[-1].out) == "runs/demo/eval"


def test_run_cli_usage_errors_and_help(capsys):
    calls: list[argparse.Namespace] = []
    assert run_cli("demo", "doc", _commands(calls), ["bogus"]) == 2
    err = capsys.readouterr().err
    assert "usage: demo" in err and "invalid choice: 'bogus'" in err
    assert run_cli("demo", "doc", _commands(calls), []) == 2
    assert run_cli("demo", "doc", _commands(calls), ["train", "--epochs", "x"]) == 2
    assert run_cli("demo", "doc", _commands(calls), ["train", "--device", "tpu9"]) == 2
    assert "unknown device 'tpu9'" in capsys.readouterr().err
    assert run_cli("demo", "doc", _commands(calls), ["train", "--threads", "0"]) == 2
    assert run_cli("demo", "doc", _commands(calls), ["train", "--help"]) == 0
    out = capsys.readouterr().out
    for flag in ("--epochs", "--out", "--seed", "--device", "--threads", "--quick"):
        assert flag in out
    assert "training epochs (default: 3)" in out and "(default: auto)" in out
    assert calls == []
    with pytest.raises(ValueError, match="unique names"):
        run_cli("demo", "doc", _commands(calls) * 2, ["eval"])


def test_resolve_device():
    assert resolve_device("cpu") == "cpu"
    assert resolve_device("auto") in ("cpu", "cuda")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            resolve_device("cuda")


def test_rundir_layout_config_metrics_plots(tmp_path):
    run = RunDir(tmp_path / "run")
    assert run.path == tmp_path / "run"
    assert (run.path / "checkpoints").is_dir() and (run.path / "plots").is_dir()
    ns = argparse.Namespace(lr=0.1, out=tmp_path / "run", func=lambda a: 0)
    path = run.write_config(ns)
    assert json.loads(path.read_text()) == {"lr": 0.1, "out": str(tmp_path / "run")}
    run.write_config({"lr": 0.2, "layers": [1, 2]})
    assert json.loads(run.config_path.read_text()) == {"layers": [1, 2], "lr": 0.2}
    run.metrics.log(step=0, loss=1.5)
    run.metrics.log(step=1, loss=1.0)
    lines = [json.loads(line) for line in run.metrics_path.read_text().splitlines()]
    assert [(r["step"], r["loss"]) for r in lines] == [(0, 1.5), (1, 1.0)]
    assert run.plot("loss") == run.path / "plots" / "loss.png"
    assert run.plot("curve.svg").name == "curve.svg"
    with pytest.raises(ValueError, match="plain file name"):
        run.plot("../x.png")
    (tmp_path / "file").write_text("x")
    with pytest.raises(NotADirectoryError, match="not a directory"):
        RunDir(tmp_path / "file")


def test_dyncore_count_command(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["count", "mobilenet_v2", "--input-size", "224", "--json"])
    assert exc.value.code == 0
    result = json.loads(capsys.readouterr().out)
    assert result["params"] == 3_504_872
    by_conv = {(r["dynamic"], r["elementwise"]): r["madds"] for r in result["madds"]}
    assert by_conv[("per_sample", False)] == by_conv[("per_pixel", False)] == 300_774_272
    assert by_conv[("per_sample", True)] > by_conv[("per_sample", False)]
    with pytest.raises(SystemExit) as exc:
        main(["count", "no_such_model_xyz"])
    assert exc.value.code == 2
    assert "neither a torchvision nor a timm model" in capsys.readouterr().err


def test_dyncore_gallery_delegates_or_errors_clearly(monkeypatch, capsys):
    import sys
    import types

    seen: list[argparse.Namespace] = []
    fake = types.ModuleType("dyncore.data.gallery")
    fake.add_arguments = lambda p: p.add_argument("--domains", default="mnist")  # type: ignore[attr-defined]
    fake.main = lambda args: seen.append(args) or 0  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "dyncore.data.gallery", fake)
    with pytest.raises(SystemExit) as exc:
        main(["gallery", "--domains", "usps", "--out", "g"])
    assert exc.value.code == 0 and seen[0].domains == "usps" and str(seen[0].out) == "g"

    monkeypatch.setitem(sys.modules, "dyncore.data.gallery", None)  # import now fails
    with pytest.raises(SystemExit) as exc:
        main(["gallery"])
    assert exc.value.code == 1
    assert "dyncore.data.gallery.main is not available" in capsys.readouterr().err
