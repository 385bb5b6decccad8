"""The embedded-dataset container, seeded generators and the data error type."""

from __future__ import annotations

import os
import zlib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import Dataset

__all__ = ["MEAN", "STD", "DataError", "EmbeddedDataset", "export_image_folder", "make_rng", "normalise"]

#: Normalisation of every embedded dataset (Digit-Five protocol): x = (u8 / 255 - 0.5) / 0.5 ∈ [-1, 1].
MEAN = (0.5, 0.5, 0.5)
STD = (0.5, 0.5, 0.5)


class DataError(ValueError):
    """Bad data or bad data arguments (unparseable list line, label out of range, empty split, unknown domain)."""


def make_rng(seed: int, *tags: str | int) -> np.random.Generator:
    """An explicitly seeded PCG64 generator for ``seed`` and a stream named by ``tags``.

    String tags are mapped through crc32 (stable across processes, unlike ``hash``), so every generator stream is
    reproducible bit-for-bit and independent of any global RNG.
    """
    if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool) or seed < 0:
        raise DataError(f"seed must be a non-negative int, got {seed!r}")
    words = [int(seed)] + [zlib.crc32(t.encode()) if isinstance(t, str) else int(t) for t in tags]
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence(words)))


def normalise(images: Tensor) -> Tensor:
    """uint8 (…, 3, H, W) → float in [-1, 1] with mean/std 0.5."""
    return (images.to(torch.float32) / 255.0 - 0.5) / 0.5


class EmbeddedDataset(Dataset[tuple[Any, int]]):
    """An in-memory image classification set generated offline.

    Attributes:
        images: uint8 tensor (N, 3, H, W).
        labels: int64 tensor (N,) with values in ``[0, len(classes))``.
        classes: class names, index = label.
        content_hash: sha256 of this split's images and labels (see :func:`dyncore.data.cache.content_hash`).
        name: e.g. ``"digits5/svhn/train"``.

    ``ds[i]`` returns ``(x, label)``: x is float (3, H, W) normalised with mean/std 0.5, or ``transform(u8 image)``
    when a transform is given (it receives the uint8 tensor (3, H, W); torchvision v2 transforms work on it).
    """

    def __init__(
        self,
        images: np.ndarray | Tensor,
        labels: np.ndarray | Tensor,
        classes: Sequence[str],
        *,
        name: str,
        transform: Callable[[Tensor], Any] | None = None,
    ) -> None:
        from .cache import content_hash

        imgs = torch.as_tensor(np.ascontiguousarray(images) if isinstance(images, np.ndarray) else images)
        labs = torch.as_tensor(np.asarray(labels) if isinstance(labels, np.ndarray) else labels).to(torch.int64)
        if imgs.dtype != torch.uint8 or imgs.ndim != 4 or imgs.shape[1] != 3:
            raise DataError(f"{name}: images must be uint8 (N, 3, H, W), got {imgs.dtype} {tuple(imgs.shape)}")
        if labs.shape != (imgs.shape[0],):
            raise DataError(f"{name}: labels shape {tuple(labs.shape)} does not match {imgs.shape[0]} images")
        if len(labs) == 0:
            raise DataError(f"{name}: empty split")
        if int(labs.min()) < 0 or int(labs.max()) >= len(classes):
            raise DataError(
                f"{name}: labels must lie in [0, {len(classes)}), got [{int(labs.min())}, {int(labs.max())}]"
            )
        self.images = imgs
        self.labels = labs
        self.classes = list(classes)
        self.name = name
        self.transform = transform
        self.content_hash = content_hash({"images": imgs.numpy(), "labels": labs.numpy()})

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def targets(self) -> list[int]:
        """Labels as a list (torchvision ``ImageFolder`` compatibility)."""
        return [int(v) for v in self.labels.tolist()]

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def __getitem__(self, index: int) -> tuple[Any, int]:
        img = self.images[index]
        x = self.transform(img) if self.transform is not None else normalise(img)
        return x, int(self.labels[index])

    def __repr__(self) -> str:
        h, w = self.images.shape[2:]
        return f"EmbeddedDataset({self.name!r}, n={len(self)}, classes={self.num_classes}, size={h}x{w})"


def export_image_folder(dataset: EmbeddedDataset, out_dir: str | os.PathLike[str], *, limit: int | None = None) -> Path:
    """Write ``dataset`` as PNGs ``out_dir/<class>/<index>.png`` (an ImageFolder tree) and return ``out_dir``.

    ``limit`` caps the number of images written (first ones in order); only classes with an image get a folder.
    """
    out = Path(out_dir)
    n = len(dataset) if limit is None else min(limit, len(dataset))
    out.mkdir(parents=True, exist_ok=True)
    arr = dataset.images[:n].permute(0, 2, 3, 1).numpy()
    for i in range(n):
        cls = _safe(dataset.classes[int(dataset.labels[i])])
        (out / cls).mkdir(exist_ok=True)
        Image.fromarray(arr[i]).save(out / cls / f"{i:06d}.png")
    return out


def _safe(name: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_." else f"u{ord(ch):04x}" for ch in name)
