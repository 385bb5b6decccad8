"""Demo and benchmark results: per-package JSON files and the merged report.

Each package's ``demo --out DIR`` ends with :func:`write_summary` (→ ``DIR/summary.json``: the paper's claims next to
what was measured, tables, plots); its ``bench --out DIR`` ends with :func:`write_bench` (→ ``DIR/bench.json``: speed
ratios). ``nox -s demo`` runs every package into ``RUNDIR/<package>/`` and then merges::

    python -m dyncore.report demo RUNDIR [--seconds S]    # → RUNDIR/report.md + RUNDIR/report.json
    python -m dyncore.report bench RUNDIR [--seconds S]   # → RUNDIR/bench.md + RUNDIR/bench.json

Every sub-directory of RUNDIR is a package and must hold a valid file: a missing or malformed one is an error naming
the file (a demo never silently drops a package). ``--packages a,b`` additionally requires those packages.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "Claim",
    "ReportError",
    "main",
    "merge_bench",
    "merge_demo",
    "read_bench",
    "read_summary",
    "write_bench",
    "write_summary",
]

SUMMARY_FILE = "summary.json"
BENCH_FILE = "bench.json"
SUMMARY_SCHEMA = "dyncore.summary/1"
BENCH_SCHEMA = "dyncore.bench/1"

Value = str | int | float | None


class ReportError(ValueError):
    """A package result file is missing or malformed (the message names the file and the problem)."""


@dataclass(frozen=True)
class Claim:
    """One claim of the paper checked by a demo.

    Args:
        name: what is claimed, e.g. ``"DCD top-1 > DY-Conv top-1 at equal MAdds"``.
        paper: what the paper reports (number or text).
        measured: what this run measured (number or text).
        holds: whether the measurement supports the claim; ``None`` when not decidable at demo scale.
        note: caveats (scale, seeds, what differs from the paper).
    """

    name: str
    paper: Value
    measured: Value
    holds: bool | None
    note: str = ""

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise ValueError(f"Claim.name must be a non-empty string, got {self.name!r}")
        for field_name in ("paper", "measured"):
            v = getattr(self, field_name)
            if v is not None and not isinstance(v, (str, int, float)):
                raise TypeError(f"Claim.{field_name} must be a str, int, float or None, got {type(v).__name__}")
        if self.holds is not None and not isinstance(self.holds, bool):
            raise TypeError(f"Claim.holds must be True, False or None, got {self.holds!r}")


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def _check_package(package: str) -> None:
    if not isinstance(package, str) or not package or "/" in package or "." in package:
        raise ValueError(f"package must be a plain package name (no '/' or '.'), got {package!r}")


def _check_seconds(seconds: float) -> float:
    if not isinstance(seconds, (int, float)) or not math.isfinite(seconds) or seconds < 0:
        raise ValueError(f"seconds must be a finite number >= 0, got {seconds!r}")
    return float(seconds)


def write_summary(
    out_dir: str | Path,
    *,
    package: str,
    title: str,
    claims: Sequence[Claim],
    tables: Mapping[str, str] | None = None,
    plots: Sequence[str | Path] = (),
    seconds: float,
) -> Path:
    """Write ``out_dir/summary.json`` for a package's demo; returns its path.

    Args:
        out_dir: the demo's output directory (created if needed).
        package: the package name (``"dcd"``).
        title: one line saying what the demo shows.
        claims: the paper's claims next to the measurements.
        tables: name → a Markdown table (copied into the report as is).
        plots: PNG paths relative to ``out_dir`` (each must exist).
        seconds: wall time of the demo.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    _check_package(package)
    if not all(isinstance(c, Claim) for c in claims):
        raise TypeError("write_summary: claims must be a list of dyncore.report.Claim")
    tables = dict(tables or {})
    for name, table in tables.items():
        if not isinstance(name, str) or not isinstance(table, str):
            raise TypeError(f"write_summary: tables must map str → Markdown str, got {name!r}: {type(table).__name__}")
    plot_list: list[str] = []
    for p in plots:
        rel = Path(p)
        if rel.is_absolute():
            raise ValueError(f"write_summary: plot paths must be relative to out_dir={out}, got {rel}")
        if not (out / rel).is_file():
            raise FileNotFoundError(f"write_summary: plot {out / rel} does not exist")
        plot_list.append(rel.as_posix())
    data = {
        "schema": SUMMARY_SCHEMA,
        "package": package,
        "title": str(title),
        "claims": [asdict(c) for c in claims],
        "tables": tables,
        "plots": plot_list,
        "seconds": _check_seconds(seconds),
    }
    path = out / SUMMARY_FILE
    _atomic_write(path, json.dumps(data, indent=2, allow_nan=False) + "\n")
    return path


def write_bench(
    out_dir: str | Path,
    *,
    package: str,
    ratios: Mapping[str, float],
    details: Mapping[str, Any] | None = None,
    seconds: float,
) -> Path:
    """Write ``out_dir/bench.json`` for a package's benchmark; returns its path.

    Args:
        ratios: name → a finite ratio (e.g. ``"dcd_vs_dyconv_latency": 0.71``); merged as ``<package>.<name>``.
        details: anything JSON-serialisable (raw medians, shapes, threads, device).
        seconds: wall time of the benchmark.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    _check_package(package)
    clean: dict[str, float] = {}
    for name, value in ratios.items():
        if not isinstance(name, str) or not name:
            raise ValueError(f"write_bench: ratio names must be non-empty strings, got {name!r}")
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ValueError(f"write_bench: ratio {name!r} must be a finite number, got {value!r}")
        clean[name] = float(value)
    data = {
        "schema": BENCH_SCHEMA,
        "package": package,
        "ratios": clean,
        "details": dict(details or {}),
        "seconds": _check_seconds(seconds),
    }
    path = out / BENCH_FILE
    try:
        text = json.dumps(data, indent=2, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"write_bench: details for {package!r} are not JSON-serialisable: {exc}") from exc
    _atomic_write(path, text + "\n")
    return path


# ----------------------------------------------------------------------------------------------------------------------
# Reading and validation


def _load(path: Path, schema: str) -> dict[str, Any]:
    if not path.is_file():
        raise ReportError(f"{path}: missing (the package's run did not write it)")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ReportError(f"{path}: not valid JSON ({exc})") from exc
    if not isinstance(data, dict):
        raise ReportError(f"{path}: expected a JSON object, got {type(data).__name__}")
    if data.get("schema") != schema:
        raise ReportError(f"{path}: schema is {data.get('schema')!r}, expected {schema!r}")
    return data


def _require(path: Path, data: dict[str, Any], key: str, types: type | tuple[type, ...]) -> Any:
    if key not in data:
        raise ReportError(f"{path}: missing key {key!r}")
    if not isinstance(data[key], types):
        raise ReportError(f"{path}: {key!r} has type {type(data[key]).__name__}")
    return data[key]


def read_summary(path: str | Path) -> dict[str, Any]:
    """Load and validate one ``summary.json`` (ReportError naming the file on any problem)."""
    p = Path(path)
    data = _load(p, SUMMARY_SCHEMA)
    _require(p, data, "package", str)
    _require(p, data, "title", str)
    _require(p, data, "seconds", (int, float))
    for i, c in enumerate(_require(p, data, "claims", list)):
        if not isinstance(c, dict) or not {"name", "paper", "measured", "holds"} <= set(c):
            raise ReportError(f"{p}: claims[{i}] must have name, paper, measured and holds")
        if c["holds"] is not None and not isinstance(c["holds"], bool):
            raise ReportError(f"{p}: claims[{i}].holds must be true, false or null")
    tables = _require(p, data, "tables", dict)
    if not all(isinstance(v, str) for v in tables.values()):
        raise ReportError(f"{p}: 'tables' values must be Markdown strings")
    plots = _require(p, data, "plots", list)
    for plot in plots:
        if not isinstance(plot, str) or not (p.parent / plot).is_file():
            raise ReportError(f"{p}: plot {plot!r} does not exist next to it")
    return data


def read_bench(path: str | Path) -> dict[str, Any]:
    """Load and validate one ``bench.json`` (ReportError naming the file on any problem)."""
    p = Path(path)
    data = _load(p, BENCH_SCHEMA)
    _require(p, data, "package", str)
    _require(p, data, "seconds", (int, float))
    _require(p, data, "details", dict)
    for name, v in _require(p, data, "ratios", dict).items():
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise ReportError(f"{p}: ratio {name!r} is not a number ({v!r})")
    return data


def _package_dirs(run_dir: Path, packages: Sequence[str] | None) -> list[Path]:
    if not run_dir.is_dir():
        raise ReportError(f"{run_dir}: run directory does not exist")
    present = sorted(d for d in run_dir.iterdir() if d.is_dir() and not d.name.startswith((".", "_")))
    names = [d.name for d in present]
    for pkg in packages or ():
        if pkg not in names:
            raise ReportError(f"{run_dir / pkg}: expected package directory is missing")
    if not present:
        raise ReportError(f"{run_dir}: no package directories (expected RUNDIR/<package>/)")
    return present


def _read_all(run_dir: Path, file: str, packages: Sequence[str] | None) -> dict[str, dict[str, Any]]:
    reader = read_summary if file == SUMMARY_FILE else read_bench
    out: dict[str, dict[str, Any]] = {}
    for d in _package_dirs(run_dir, packages):
        data = reader(d / file)
        if data["package"] != d.name:
            raise ReportError(f"{d / file}: package is {data['package']!r} but the directory is {d.name!r}")
        out[d.name] = data
    return out


# ----------------------------------------------------------------------------------------------------------------------
# Merging


def _cell(v: Any) -> str:
    if v is None:
        return "–"
    if isinstance(v, bool):
        return "yes" if v else "**no**"
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v).replace("|", "\\|").replace("\n", " ")


def _md_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(_cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def _holds_cell(holds: bool | None) -> str:
    return "n/a" if holds is None else ("yes" if holds else "**no**")


def merge_demo(run_dir: str | Path, *, seconds: float | None = None, packages: Sequence[str] | None = None) -> Path:
    """Merge ``RUNDIR/<pkg>/summary.json`` of every package into ``RUNDIR/report.md`` and ``report.json``.

    Returns the path of ``report.md``. Raises :class:`ReportError` naming the file for a missing/malformed one.
    """
    root = Path(run_dir)
    summaries = _read_all(root, SUMMARY_FILE, packages)
    rows = [
        (pkg, c["name"], c["paper"], c["measured"], _holds_cell(c["holds"]))
        for pkg, s in summaries.items()
        for c in s["claims"]
    ]
    verdicts = [c["holds"] for s in summaries.values() for c in s["claims"]]
    lines = ["# Demo report", ""]
    total = f"{seconds:.0f} s total; " if seconds is not None else ""
    lines.append(
        f"{total}{len(summaries)} package(s); claims: {verdicts.count(True)} hold, {verdicts.count(False)} do not, "
        f"{verdicts.count(None)} undecided."
    )
    lines += ["", "## Summary", "", _md_table(("package", "claim", "paper", "measured", "holds"), rows), ""]
    for pkg, s in summaries.items():
        lines += [f"## {pkg}: {s['title']}", "", f"Run time: {s['seconds']:.0f} s.", ""]
        notes = [(c["name"], c.get("note", "")) for c in s["claims"] if c.get("note")]
        for name, note in notes:
            lines.append(f"- *{name}*: {note}")
        if notes:
            lines.append("")
        for name, table in s["tables"].items():
            lines += [f"### {name}", "", table.strip(), ""]
        for plot in s["plots"]:
            rel = f"{pkg}/{plot}"
            lines += [f"![{Path(plot).stem}]({rel})", ""]
    md = root / "report.md"
    _atomic_write(md, "\n".join(lines))
    report = {
        "kind": "demo",
        "seconds": seconds,
        "claims": [{"package": pkg, **c} for pkg, s in summaries.items() for c in s["claims"]],
        "packages": summaries,
    }
    _atomic_write(root / "report.json", json.dumps(report, indent=2) + "\n")
    print(_md_table(("package", "claim", "paper", "measured", "holds"), rows))
    print(f"\nreport: {md}")
    return md


def merge_bench(run_dir: str | Path, *, seconds: float | None = None, packages: Sequence[str] | None = None) -> Path:
    """Merge ``RUNDIR/<pkg>/bench.json`` of every package into ``RUNDIR/bench.md`` and ``RUNDIR/bench.json``.

    All ratios are namespaced ``<package>.<ratio>``. Returns the path of ``bench.md``.
    """
    root = Path(run_dir)
    benches = _read_all(root, BENCH_FILE, packages)
    ratios = {f"{pkg}.{name}": float(v) for pkg, b in benches.items() for name, v in b["ratios"].items()}
    lines = ["# Benchmark report", ""]
    if seconds is not None:
        lines += [f"{seconds:.0f} s total; {len(benches)} package(s).", ""]
    lines += [_md_table(("ratio", "value"), list(ratios.items())), ""]
    for pkg, b in benches.items():
        lines += [f"## {pkg}", "", f"Run time: {b['seconds']:.0f} s.", "", "```json"]
        lines += [json.dumps(b["details"], indent=2, sort_keys=True), "```", ""]
    md = root / "bench.md"
    _atomic_write(md, "\n".join(lines))
    merged = {"kind": "bench", "seconds": seconds, "ratios": ratios, "packages": benches}
    _atomic_write(root / BENCH_FILE, json.dumps(merged, indent=2) + "\n")
    print(_md_table(("ratio", "value"), list(ratios.items())))
    print(f"\nreport: {md}")
    return md


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m dyncore.report demo|bench RUNDIR [--seconds S] [--packages a,b]``; returns the exit code."""
    parser = argparse.ArgumentParser(
        prog="python -m dyncore.report",
        description="Merge every package's demo summary.json (or bench.json) under RUNDIR into one report.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("kind", choices=("demo", "bench"), help="which files to merge")
    parser.add_argument("run_dir", type=Path, help="directory holding one sub-directory per package")
    parser.add_argument("--seconds", type=float, default=None, help="total wall time to state in the report")
    parser.add_argument(
        "--packages",
        default="",
        help="comma-separated packages that must be present (besides every sub-directory found)",
    )
    try:
        args = parser.parse_args(None if argv is None else list(argv))
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else 2
    required = [p for p in args.packages.split(",") if p]
    merge = merge_demo if args.kind == "demo" else merge_bench
    try:
        merge(args.run_dir, seconds=args.seconds, packages=required)
    except ReportError as exc:
        print(f"dyncore.report: error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
