"""Each package's ``demo --quick --out RUNDIR/<pkg>`` (same code path as the main job, smaller budget) writes a valid
``summary.json``; ``python -m dyncore.report demo RUNDIR`` merges the five into report.md / report.json. The demos
run once per module (they dominate the suite's time) into one run directory that the report test reuses."""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from dyncore.report import read_summary

METHODS = ("covnorm", "dcd", "micronet", "bdl", "drt")
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

Runs = dict[str, tuple[subprocess.CompletedProcess[str], float]]


@pytest.fixture(scope="module")
def demo_runs(
    tmp_path_factory: pytest.TempPathFactory, cli_in: Callable[..., subprocess.CompletedProcess[str]]
) -> tuple[Path, Runs]:
    root = tmp_path_factory.mktemp("demo-run")
    runs: Runs = {}
    for pkg in METHODS:
        t0 = time.perf_counter()
        proc = cli_in(root, pkg, "demo", "--quick", "--out", str(root / pkg), "--seed", "0", check=False, timeout=1800)
        runs[pkg] = (proc, time.perf_counter() - t0)
    return root, runs


@pytest.mark.parametrize("pkg", METHODS)
def test_quick_demo_writes_a_valid_summary(pkg: str, demo_runs: tuple[Path, Runs]) -> None:
    root, runs = demo_runs
    proc, wall = runs[pkg]
    if proc.returncode != 0:
        pytest.fail(f"`{pkg} demo --quick` exited {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    summary = read_summary(root / pkg / "summary.json")  # validates the schema; plots must exist
    assert summary["package"] == pkg and summary["title"]
    assert summary["claims"], f"{pkg}: no claims"
    for claim in summary["claims"]:
        assert claim["name"] and claim["paper"] and claim["measured"], claim
        assert claim["holds"] in (True, False, None)
    assert summary["tables"] and all(t.lstrip().startswith("|") for t in summary["tables"].values())
    assert summary["plots"], f"{pkg}: no plots"
    for plot in summary["plots"]:
        assert (root / pkg / plot).read_bytes()[:8] == PNG_MAGIC, plot
    assert 0 < summary["seconds"] <= wall


def test_report_merges_every_quick_demo(
    demo_runs: tuple[Path, Runs], cli_in: Callable[..., subprocess.CompletedProcess[str]]
) -> None:
    root, runs = demo_runs
    failed = [pkg for pkg, (proc, _) in runs.items() if proc.returncode != 0]
    assert not failed, f"demos failed: {failed}"
    total = sum(wall for _, wall in runs.values())
    proc = cli_in(root, "dyncore.report", "demo", str(root), "--packages", ",".join(METHODS), "--seconds", f"{total}")
    assert f"report: {root / 'report.md'}" in proc.stdout

    report = json.loads((root / "report.json").read_text())
    summaries = {pkg: read_summary(root / pkg / "summary.json") for pkg in METHODS}
    assert report["kind"] == "demo" and report["seconds"] == pytest.approx(total)
    assert set(report["packages"]) == set(METHODS)
    assert len(report["claims"]) == sum(len(s["claims"]) for s in summaries.values())
    assert {c["package"] for c in report["claims"]} == set(METHODS)

    md = (root / "report.md").read_text()
    for pkg, s in summaries.items():
        assert f"## {pkg}: {s['title']}" in md
        for claim in s["claims"]:
            assert claim["name"] in md and claim["name"] in proc.stdout
        for plot in s["plots"]:
            assert f"]({pkg}/{plot})" in md and (root / pkg / plot).is_file()  # links resolve from RUNDIR
