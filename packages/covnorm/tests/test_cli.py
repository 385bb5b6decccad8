from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import covnorm as cn
from covnorm.cli import main
from dyncore.training import JSONLLogger, load_checkpoint, save_checkpoint

TINY = ["--tasks", "shapes,faces", "--source-limit", "64", "--train-limit", "48", "--test-limit", "32"]


def _run(argv: list[str]) -> int:
    with pytest.raises(SystemExit) as exc:
        main(argv)
    return int(exc.value.code or 0)


@pytest.mark.quick
def test_help_and_bad_flags(capsys: pytest.CaptureFixture[str]) -> None:
    assert _run(["--help"]) == 0
    for cmd in ("train", "eval", "demo", "bench"):
        assert _run([cmd, "--help"]) == 0
    assert "explained-variance threshold" in capsys.readouterr().out
    assert _run(["nope"]) == 2


def test_train_then_eval_roundtrip(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run"
    assert _run(["train", "--threshold", "1.5", "--out", str(out)]) == 2
    assert "--threshold must be in (0, 1]" in capsys.readouterr().err
    rc = _run(["train", *TINY, "--pretrain-epochs", "1", "--epochs", "1", "--quick", "--out", str(out)])
    assert rc == 0
    text = capsys.readouterr().out
    assert (out / "checkpoints" / "model.pt").is_file() and (out / "config.json").is_file()
    logged = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    final = {r["task"]: r["accuracy"] for r in logged if r["stage"] == "independent"}
    assert set(final) == {"shapes", "faces"} and "task-specific parameters" in text
    ev = tmp_path / "eval"
    assert (
        _run(["eval", "--checkpoint", str(out / "checkpoints" / "model.pt"), "--test-limit", "32", "--out", str(ev)])
        == 0
    )
    scores = json.loads((ev / "eval.json").read_text())["tasks"]
    assert all(0.0 <= v["accuracy"] <= 100.0 and v["percent_params"] > 0 for v in scores.values())
    table = capsys.readouterr().out
    for task, acc in final.items():  # the rebuilt model reproduces the trained one
        assert f"| {task} | {acc:.2f} |" in table
    assert _run(["eval", "--checkpoint", str(out / "config.json")]) == 2
    assert "config.json" in capsys.readouterr().err


@pytest.mark.slow
def test_demo_tiny_writes_summary_and_plots(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    tiny = ["--tasks", "faces", *TINY[2:]]
    rc = _run(["demo", *tiny, "--pretrain-epochs", "1", "--epochs", "1", "--quick", "--out", str(out)])
    assert rc == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["package"] == "covnorm" and len(summary["claims"]) >= 8
    assert (out / "plots" / "eta_per_layer.png").is_file() and (out / "plots" / "explained_variance.png").is_file()
    results = json.loads((out / "results.json").read_text())
    assert set(results["methods"]) >= {"BN", "RA", "FTA", "SVD+FTA", "CovNorm", "CovNorm-joint"}
    cov = results["methods"]["CovNorm"]
    assert cov["avg_percent_params"] < results["methods"]["RA"]["avg_percent_params"]


@pytest.mark.quick
def test_bench_memory_is_flat(tmp_path: Path) -> None:
    assert _run(["bench", "--quick", "--out", str(tmp_path)]) == 0
    bench = json.loads((tmp_path / "bench.json").read_text())
    # Holding the features would grow memory ×10; streaming keeps it flat. The bound is loose on purpose: peak RSS
    # is noisy on a shared machine, and the benchmark (not this test) reports the measured ratio.
    assert bench["ratios"]["stats_memory_10x_images"] < 4.0
    stored = bench["details"]["all_features_mb"]
    assert stored[1] == pytest.approx(10 * stored[0], rel=0.01)  # holding the features would grow ×10


# ---------------------------------------------------------------------------------------------------------------------
# bad input, resume and run-directory safety (issue 14)

SMALL = [*TINY, "--pretrain-epochs", "1", "--epochs", "1", "--quick"]


@pytest.mark.parametrize(
    ("flags", "named"),
    [
        (["--train-limit", "-5"], "--train-limit must be an integer >= 2, got -5"),  # was used as a slice
        (["--test-limit", "-1"], "--test-limit must be an integer >= 1, got -1"),
        (["--source-limit", "0"], "--source-limit must be an integer >= 2, got 0"),
        (["--tasks", ""], "--tasks must name at least one task"),  # was: every task
        (["--tasks", " , "], "--tasks must name at least one task"),
        (["--tasks", "faces,nope"], "--tasks must be among"),
        (["--epochs", "0"], "--epochs must be an integer >= 1, got 0"),
        (["--pretrain-epochs", "-1"], "--pretrain-epochs must be an integer >= 1, got -1"),
        (["--lr", "nan"], "--lr must be a finite number > 0, got nan"),
        (["--wd", "-1"], "--weight-decay must be a finite number >= 0, got -1.0"),
        (["--covnorm-lr", "0"], "--covnorm-lr must be a finite number > 0"),
    ],
)
def test_train_refuses_unusable_values_naming_the_flag(
    flags: list[str], named: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "run"
    assert _run(["train", *SMALL, *flags, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"covnorm train: error: {named}") and "Traceback" not in err
    assert not out.exists()  # refused before anything is written


def test_demo_refuses_unusable_values(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert _run(["demo", *SMALL, "--test-limit", "-3", "--out", str(tmp_path / "d")]) == 2
    assert "covnorm demo: error: --test-limit must be an integer >= 1" in capsys.readouterr().err
    assert not (tmp_path / "d").exists()


def test_user_error_is_one_line_with_exit_2(tmp_path: Path) -> None:
    """A missing initial-weights file (old spelling --source-checkpoint) was a traceback with exit 1."""
    missing = tmp_path / "missing.pt"
    cmd = [sys.executable, "-m", "covnorm", "train", *SMALL, "--source-checkpoint", str(missing)]
    proc = subprocess.run([*cmd, "--out", str(tmp_path / "r")], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.startswith("covnorm train: error: --pretrained") and str(missing) in proc.stderr
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


def _trained_checkpoint(path: Path, *, poison: bool) -> None:
    torch.manual_seed(0)
    net = cn.small_vgg(widths=((8,), (16,)), hidden=12, num_classes=1)
    cn.inject(net, where=cn.vgg16_sites, domains=["faces"])
    model = cn.MultiDomainModel(net, {"faces": 2})
    state = model.state_dict()
    if poison:
        state["heads.faces.weight"][1, 3] = float("nan")
    fields = {"layout": cn.layout(model), "tasks": ["faces"], "classes": {"faces": 2}, "widths": [[8], [16]]}
    save_checkpoint(path, {"model": state, **fields, "hidden": 12})


def test_eval_refuses_a_checkpoint_with_non_finite_weights(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    good, bad = tmp_path / "good.pt", tmp_path / "bad.pt"
    _trained_checkpoint(good, poison=False)
    _trained_checkpoint(bad, poison=True)
    # twin: the finite checkpoint evaluates (through the --weights alias of --checkpoint)
    assert _run(["eval", "--weights", str(good), "--test-limit", "16", "--out", str(tmp_path / "e1")]) == 0
    assert (tmp_path / "e1" / "eval.json").is_file()
    capsys.readouterr()
    # the NaN one scored the frequency of class 0 (exit 0); now it is refused, naming the tensor and the file
    assert _run(["eval", "--checkpoint", str(bad), "--test-limit", "16", "--out", str(tmp_path / "e2")]) == 2
    err = capsys.readouterr().err
    assert "'heads.faces.weight'" in err and str(bad) in err and "NaN" in err
    assert not (tmp_path / "e2" / "eval.json").exists()
    assert _run(["eval", "--checkpoint", str(good), "--test-limit", "-2"]) == 2
    assert "--test-limit must be an integer >= 1" in capsys.readouterr().err


def test_non_finite_training_names_the_flag(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run"
    assert _run(["train", *SMALL, "--lr", "1e6", "--out", str(out)]) == 2  # finished with NaN weights before
    err = capsys.readouterr().err
    assert err.startswith("covnorm train: error: ") and "lower --lr (now 1e+06)" in err, err
    assert not (out / "checkpoints" / "model.pt").exists()


def test_a_final_training_batch_of_one_image_does_not_crash(tmp_path: Path) -> None:
    # 65 source images at batch 64 left a batch of one: BatchNorm at the 1×1 fc sites raised mid-epoch
    flags = ["--tasks", "faces", "--source-limit", "65", "--train-limit", "8", "--test-limit", "8", "--mode", "ra"]
    assert _run(["train", *flags, "--pretrain-epochs", "1", "--epochs", "1", "--quick", "--out", str(tmp_path)]) == 0


def test_refused_resume_keeps_config_and_pretrained_reproduces_the_source(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "run"
    out.mkdir()
    (out / "config.json").write_text('{"stale": true}\n')  # left by a failed earlier attempt
    args = ["train", *SMALL, "--tasks", "faces", "--mode", "ra", "--out", str(out)]
    assert _run(args) == 0
    config = (out / "config.json").read_text()
    assert "stale" not in config and json.loads(config)["mode"] == "ra"  # the stale config was replaced
    capsys.readouterr()
    # the same run directory with another config: refused, naming the difference; config.json untouched
    assert _run([*args, "--threshold", "0.9"]) == 2
    err = capsys.readouterr().err
    assert "threshold: 0.99 → 0.9" in err and "another --out" in err
    assert (out / "config.json").read_text() == config
    # --pretrained (initial weights) = the source network of that run: the RA stage is reproduced exactly
    again = tmp_path / "again"
    source = str(out / "checkpoints" / "source.pt")
    assert _run(["train", *SMALL, "--tasks", "faces", "--mode", "ra", "--pretrained", source, "--out", str(again)]) == 0
    first, second = (JSONLLogger.read(d / "metrics.jsonl") for d in (out, again))
    assert [r["accuracy"] for r in first] == [r["accuracy"] for r in second]
    assert not (again / "checkpoints" / "source.pt").exists()  # nothing was pretrained


def _records(path: Path) -> list[dict[str, object]]:
    return [{k: v for k, v in r.items() if k != "time"} for r in JSONLLogger.read(path)]


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An uninterrupted ``covnorm train`` of the SMALL settings (two tasks: five stages)."""
    ref = tmp_path_factory.mktemp("reference") / "run"
    assert _run(["train", *SMALL, "--out", str(ref)]) == 0
    return ref


def _assert_same_run(run: Path, ref: Path) -> None:
    """Bit-identical final model, the same metrics lines (steps 0..3, none repeated) and the same results."""
    a, b = (load_checkpoint(d / "checkpoints" / "model.pt") for d in (ref, run))
    assert a["layout"] == b["layout"] and a["model"].keys() == b["model"].keys()
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    records = _records(run / "metrics.jsonl")
    assert records == _records(ref / "metrics.jsonl") and [r["step"] for r in records] == [0, 1, 2, 3]
    result, expected = (json.loads((d / "result.json").read_text()) for d in (run, ref))
    assert result["complete"] and result["tasks"] == expected["tasks"] and result["ra"] == expected["ra"]


@pytest.mark.slow
def test_interrupted_train_resumes_bit_identical(
    reference_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import covnorm.pipeline as pipeline

    run = tmp_path / "run"
    # attempt 1: Ctrl-C inside the first CovNorm fine-tuning (stage 4 of 5)
    with monkeypatch.context() as m:

        def interrupt(*args: object, **kwargs: object) -> None:
            raise KeyboardInterrupt

        m.setattr(pipeline, "fit_covnorm", interrupt)
        assert _run(["train", *SMALL, "--out", str(run)]) == 130
    assert "rerun the same command to resume" in capsys.readouterr().err
    assert [r["stage"] for r in _records(run / "metrics.jsonl")] == ["ra", "ra"]
    # attempt 2: that stage finishes and logs its line, then the run dies before the stage's checkpoint
    with monkeypatch.context() as m:
        original = pipeline._StagedRun.checkpoint

        def die_before_checkpoint_4(self: pipeline._StagedRun, stages_done: int) -> None:
            if stages_done == 4:
                raise KeyboardInterrupt
            original(self, stages_done)

        m.setattr(pipeline._StagedRun, "checkpoint", die_before_checkpoint_4)
        assert _run(["train", *SMALL, "--out", str(run)]) == 130
    assert len(_records(run / "metrics.jsonl")) == 3
    # attempt 3 resumes after stage 3 without pretraining again, redoes stage 4 (its orphan line is dropped)
    calls: list[object] = []
    monkeypatch.setattr(pipeline, "pretrain", lambda *a, **k: calls.append(a))
    assert _run(["train", *SMALL, "--out", str(run)]) == 0
    assert "after stage 3 of 5" in capsys.readouterr().out and not calls
    _assert_same_run(run, reference_run)
    # rerunning the finished run changes nothing and repeats no line
    records, result = _records(run / "metrics.jsonl"), (run / "result.json").read_text()
    assert _run(["train", *SMALL, "--out", str(run)]) == 0
    assert _records(run / "metrics.jsonl") == records and (run / "result.json").read_text() == result


@pytest.mark.slow
def test_train_killed_by_sigkill_resumes_bit_identical(reference_run: Path, tmp_path: Path) -> None:
    """SIGKILL (no handler runs) as soon as the first RA line is logged: wherever it lands — before that stage's
    checkpoint, inside its write, or later — rerunning the command ends where the uninterrupted run ended."""
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "covnorm", "train", *SMALL, "--out", str(run)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    metrics, deadline = run / "metrics.jsonl", time.monotonic() + 600
    while proc.poll() is None and time.monotonic() < deadline:
        if metrics.exists() and metrics.read_text().count("\n") >= 1:
            proc.kill()
            break
        time.sleep(0.01)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL, err  # killed mid-run, not finished
    assert not (run / "checkpoints" / "model.pt").exists()
    assert _run(["train", *SMALL, "--out", str(run)]) == 0
    _assert_same_run(run, reference_run)
    assert not list(run.rglob("*.tmp"))  # a write cut by the kill left no temporary behind
