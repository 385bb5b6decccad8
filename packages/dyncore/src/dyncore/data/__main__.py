"""dyncore.data: generate, inspect and measure the embedded offline datasets.

Commands:
  gallery      write one PNG grid per dataset group (digits5.png, multidomain.png) into --out
  generate     generate (or load from cache) every embedded dataset; print the time and size of each
  export       write one dataset split as an ImageFolder tree of PNGs
  source-only  Digits-5 leave-one-domain-out: source-only vs in-domain accuracy of a small CNN (markdown table)
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence

from dyncore.cli import Command, run_cli

from . import gallery


def _cache_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--root", default=None, help="cache directory (default $DYNCORE_CACHE or ~/.cache/dyncore)")
    p.add_argument("--limit", type=int, default=None, help="generate only this many images per split (default: all)")


def _generate(args: argparse.Namespace) -> int:
    from .digits5 import digits5
    from .experiments import generate_all
    from .multidomain import multidomain_task

    t0 = time.perf_counter()
    times = generate_all(seed=args.seed, root=args.root, limit=args.limit)
    total = time.perf_counter() - t0
    for name, sec in times.items():
        group, key = name.split("/")
        get = digits5 if group == "digits5" else multidomain_task
        tr, te = (get(key, sp, seed=args.seed, root=args.root, limit=args.limit) for sp in ("train", "test"))
        print(f"{name:28s} {sec:6.1f} s  train {len(tr):5d}  test {len(te):5d}  classes {tr.num_classes}")
    print(f"total {total:.1f} s for {len(times)} datasets")
    return 0


def _export_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("dataset", help="digits5/<domain> or multidomain/<task>")
    p.add_argument("--split", default="train", choices=["train", "test"], help="split (default train)")
    _cache_args(p)


def _export(args: argparse.Namespace) -> int:
    from .base import export_image_folder
    from .digits5 import digits5
    from .multidomain import multidomain_task

    group, _, key = args.dataset.partition("/")
    if group not in ("digits5", "multidomain"):
        print(f"export: error: dataset must be digits5/<domain> or multidomain/<task>, got {args.dataset!r}",
              file=sys.stderr)  # fmt: skip
        return 2
    get = digits5 if group == "digits5" else multidomain_task
    ds = get(key, args.split, seed=args.seed, root=args.root, limit=args.limit)
    print(export_image_folder(ds, args.out))
    return 0


def _source_only_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--per-domain", type=int, default=1000, help="training images per domain (default 1000)")
    p.add_argument("--epochs", type=float, default=3.0, help="passes over the pooled sources (default 3)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1; faster on a busy machine)")
    p.add_argument("--root", default=None, help="cache directory (default $DYNCORE_CACHE or ~/.cache/dyncore)")


def _source_only(args: argparse.Namespace) -> int:
    from .experiments import format_gap_table, rows_as_dicts, source_only_gap

    t0 = time.perf_counter()
    quick = bool(getattr(args, "quick", False))
    rows = source_only_gap(
        seed=args.seed,
        per_domain=100 if quick else args.per_domain,
        epochs=1.0 if quick else args.epochs,
        threads=args.threads,
        root=args.root,
        limit=100 if quick else None,
    )
    table = format_gap_table(rows)
    print(table)
    print(f"({time.perf_counter() - t0:.0f} s)")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "gap.md").write_text(table + "\n")
    (args.out / "gap.json").write_text(json.dumps(rows_as_dicts(rows), indent=2))
    return 0


COMMANDS = [
    Command("gallery", "PNG grids of samples per domain/task", gallery.add_arguments, gallery.main),
    Command("generate", "generate every embedded dataset, report time and sizes", _cache_args, _generate),
    Command("export", "write a dataset split as class folders of PNGs", _export_args, _export),
    Command("source-only", "Digits-5 source-only gap table (writes gap.md, gap.json)", _source_only_args, _source_only),
]


def main(argv: Sequence[str] | None = None) -> int:
    return run_cli("python -m dyncore.data", __doc__, COMMANDS, argv)


if __name__ == "__main__":
    sys.exit(main())
