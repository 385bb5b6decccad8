"""PNG grids of samples, one per dataset group, for a person to look at (``python -m dyncore.data gallery``).

``digits5.png``: one row per domain (16 random training images, class under each): mnist white-on-black
handwriting; mnistm the same digits as |photo patch − digit| on colour photo textures; usps thick, blurry,
frame-filling grey digits; syn coloured font-rendered 1–3 digit strings, labelled digit centred; svhn house-number
crops with neighbour digits cut at the border, photo clutter, uneven light and JPEG noise.
``multidomain.png``: the source task ``glyphs`` (Greek letters/symbols) then one row per target task (digits,
lowres_digits, letters, textures, shapes, faces).
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from . import render as R
from .base import EmbeddedDataset

__all__ = ["add_arguments", "main", "render_gallery", "sample_grid"]


def sample_grid(
    rows: Sequence[tuple[str, EmbeddedDataset]], *, columns: int = 16, zoom: int = 2, seed: int = 0
) -> Image.Image:
    """One row per ``(title, dataset)``: ``columns`` samples (fixed random pick), each titled with its class name."""
    from .base import make_rng

    if not rows:
        raise ValueError("sample_grid needs at least one (title, dataset) row")
    h, w = rows[0][1].images.shape[2:]
    cell_h, cell_w, label_w, cap = h * zoom, w * zoom, 110, 12
    grid = Image.new("RGB", (label_w + columns * (cell_w + 2), len(rows) * (cell_h + cap + 4)), (255, 255, 255))
    draw = ImageDraw.Draw(grid)
    font = R.load_font(R.font_paths("sans")[0], 11)
    for r, (title, ds) in enumerate(rows):
        y0 = r * (cell_h + cap + 4)
        draw.text((4, y0 + cell_h // 2), title, fill=(0, 0, 0), font=font)
        pick = make_rng(seed, "gallery", title).choice(len(ds), size=min(columns, len(ds)), replace=False)
        for c, i in enumerate(sorted(int(v) for v in pick)):
            img = Image.fromarray(np.ascontiguousarray(ds.images[i].permute(1, 2, 0).numpy()))
            x0 = label_w + c * (cell_w + 2)
            grid.paste(img.resize((cell_w, cell_h), Image.Resampling.NEAREST), (x0, y0))
            draw.text((x0, y0 + cell_h), ds.classes[int(ds.labels[i])][:9], fill=(60, 60, 60), font=font)
    return grid


def render_gallery(
    out_dir: str | os.PathLike[str],
    *,
    seed: int = 0,
    root: str | os.PathLike[str] | None = None,
    columns: int = 16,
    limit: int | None = None,
) -> list[Path]:
    """Write ``digits5.png`` (one row per domain, train split) and ``multidomain.png`` (one row per task, source
    task first) into ``out_dir``; return the paths."""
    from .digits5 import DIGITS5_DOMAINS, digits5
    from .multidomain import SOURCE_TASK, multidomain_task, multidomain_tasks

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    rows = [(d, digits5(d, "train", seed=seed, root=root, limit=limit)) for d in DIGITS5_DOMAINS]
    paths.append(out / "digits5.png")
    sample_grid(rows, columns=columns, seed=seed).save(paths[-1])
    tasks = [SOURCE_TASK, *multidomain_tasks()]
    rows = [
        (t if t != SOURCE_TASK else f"{t} (source)", multidomain_task(t, "train", seed=seed, root=root, limit=limit))
        for t in tasks
    ]
    paths.append(out / "multidomain.png")
    sample_grid(rows, columns=columns, seed=seed).save(paths[-1])
    return paths


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of the gallery command (used by ``python -m dyncore.data gallery`` and ``dyncore gallery``)."""
    parser.add_argument("--out", type=Path, default=Path("gallery"), help="output directory for the PNGs")
    parser.add_argument("--seed", type=int, default=0, help="generator seed of the datasets shown (default 0)")
    parser.add_argument("--root", default=None, help="cache directory (default $DYNCORE_CACHE or ~/.cache/dyncore)")
    parser.add_argument("--limit", type=int, default=None, help="generate only this many images per split")
    parser.add_argument("--columns", type=int, default=16, help="samples per row (default 16)")


def main(args: argparse.Namespace) -> int:
    """Run the gallery command: write the PNG grids and print their paths."""
    limit = args.limit if args.limit is not None else (64 if getattr(args, "quick", False) else None)
    for path in render_gallery(args.out, seed=args.seed, root=args.root, columns=args.columns, limit=limit):
        print(path)
    return 0
