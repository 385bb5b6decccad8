from __future__ import annotations

import json
import subprocess
import sys

import pytest

from dyncore.report import Claim, ReportError, main, merge_bench, merge_demo, write_bench, write_summary


def _demo_package(root, pkg: str, holds: bool | None = True) -> None:
    out = root / pkg
    (out / "plots").mkdir(parents=True)
    (out / "plots" / "curve.png").write_bytes(b"\x89PNG fake")
    write_summary(
        out,
        package=pkg,
        title=f"{pkg} on Digits-5",
        claims=[
            Claim("top-1 beats baseline", paper="+2.1 pt", measured=1.3, holds=holds, note="3 epochs"),
            Claim("MAdds | params", paper=300.8, measured=300.77, holds=None),
        ],
        tables={"accuracy": "| model | top-1 |\n|---|---|\n| a | 91.0 |"},
        plots=["plots/curve.png"],
        seconds=12.5,
    )


@pytest.mark.quick
def test_merge_demo_writes_report_md_and_json(tmp_path, capsys):
    _demo_package(tmp_path, "dcd")
    _demo_package(tmp_path, "micronet", holds=False)
    md = merge_demo(tmp_path, seconds=99.0)
    text = md.read_text()
    assert md == tmp_path / "report.md"
    assert "| package | claim | paper | measured | holds |" in text
    assert "| dcd | top-1 beats baseline | +2.1 pt | 1.3 | yes |" in text
    assert "| micronet | top-1 beats baseline | +2.1 pt | 1.3 | **no** |" in text
    assert "| dcd | MAdds \\| params | 300.8 | 300.8 | n/a |" in text  # pipes escaped, floats 4 significant
    assert "claims: 1 hold, 1 do not, 2 undecided" in text and "99 s total" in text
    assert "## dcd: dcd on Digits-5" in text and "### accuracy" in text and "| a | 91.0 |" in text
    assert "![curve](dcd/plots/curve.png)" in text and "*top-1 beats baseline*: 3 epochs" in text
    report = json.loads((tmp_path / "report.json").read_text())
    assert [(c["package"], c["holds"]) for c in report["claims"]] == [
        ("dcd", True),
        ("dcd", None),
        ("micronet", False),
        ("micronet", None),
    ]
    printed = capsys.readouterr().out
    assert "| dcd | top-1 beats baseline" in printed and f"report: {md}" in printed


def test_missing_or_malformed_package_file_is_an_error_naming_it(tmp_path, capsys):
    _demo_package(tmp_path, "dcd")
    (tmp_path / "drt").mkdir()
    with pytest.raises(ReportError, match=r"drt/summary\.json: missing"):
        merge_demo(tmp_path)
    (tmp_path / "drt" / "summary.json").write_text("{not json")
    with pytest.raises(ReportError, match=r"drt/summary\.json: not valid JSON"):
        merge_demo(tmp_path)
    (tmp_path / "drt" / "summary.json").write_text(json.dumps({"schema": "dyncore.summary/1", "package": "drt"}))
    with pytest.raises(ReportError, match=r"drt/summary\.json: missing key 'title'"):
        merge_demo(tmp_path)
    _demo_package(tmp_path / "x", "drt")
    (tmp_path / "drt" / "summary.json").write_text((tmp_path / "x" / "drt" / "summary.json").read_text())
    with pytest.raises(ReportError, match=r"plot 'plots/curve\.png' does not exist"):
        merge_demo(tmp_path)
    with pytest.raises(ReportError, match=r"bdl: expected package directory is missing"):
        merge_demo(tmp_path / "x", packages=["drt", "bdl"])
    assert main(["demo", str(tmp_path)]) == 1
    assert "drt/summary.json" in capsys.readouterr().err
    assert main(["demo", str(tmp_path / "x")]) == 0


def test_write_validation(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"missing\.png does not exist"):
        write_summary(tmp_path, package="dcd", title="t", claims=[], plots=["missing.png"], seconds=1)
    with pytest.raises(ValueError, match="plain package name"):
        write_summary(tmp_path, package="a/b", title="t", claims=[], seconds=1)
    with pytest.raises(ValueError, match="seconds must be a finite number"):
        write_summary(tmp_path, package="dcd", title="t", claims=[], seconds=float("nan"))
    with pytest.raises(TypeError, match=r"Claim\.holds"):
        Claim("x", 1, 2, holds="yes")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="ratio 'speedup' must be a finite number"):
        write_bench(tmp_path, package="dcd", ratios={"speedup": float("inf")}, seconds=1)
    with pytest.raises(ValueError, match="not JSON-serialisable"):
        write_bench(tmp_path, package="dcd", ratios={}, details={"x": object()}, seconds=1)


def test_merge_bench_namespaces_ratios_and_cli(tmp_path):
    write_bench(tmp_path / "dcd", package="dcd", ratios={"latency_vs_static": 1.2}, details={"threads": 1}, seconds=3)
    write_bench(tmp_path / "drt", package="drt", ratios={"train_speed": 0.8}, details={}, seconds=4)
    md = merge_bench(tmp_path, seconds=7)
    merged = json.loads((tmp_path / "bench.json").read_text())
    assert merged["ratios"] == {"dcd.latency_vs_static": 1.2, "drt.train_speed": 0.8}
    assert "| dcd.latency_vs_static | 1.2 |" in md.read_text()
    # package directory name must match the file's package
    write_bench(tmp_path / "bdl", package="dcd", ratios={}, seconds=1)
    with pytest.raises(ReportError, match=r"bdl/bench\.json: package is 'dcd'"):
        merge_bench(tmp_path)
    (tmp_path / "bdl" / "bench.json").unlink()
    (tmp_path / "bdl").rmdir()
    proc = subprocess.run(
        [sys.executable, "-m", "dyncore.report", "bench", str(tmp_path), "--seconds", "7"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert "drt.train_speed" in proc.stdout and "bench.md" in proc.stdout
