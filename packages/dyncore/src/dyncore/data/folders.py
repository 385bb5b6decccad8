"""Loaders for real datasets the user already has on disk: ImageFolder trees and DomainNet image lists.

Bad input raises a clear error naming the file (and line): a missing root or image (``FileNotFoundError``), a list
line that does not parse, a label out of range, an empty split or an unknown domain (:class:`DataError`).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from PIL import Image
from torch.utils.data import Dataset

from .base import DataError

if TYPE_CHECKING:
    from torchvision.datasets import ImageFolder

__all__ = [
    "DOMAINNET_DOMAINS",
    "DOMAINNET_NUM_CLASSES",
    "IMG_EXTENSIONS",
    "ImageList",
    "domainnet",
    "image_folder",
]

IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
DOMAINNET_DOMAINS: tuple[str, ...] = ("clipart", "infograph", "painting", "quickdraw", "real", "sketch")
DOMAINNET_NUM_CLASSES = 345


def _existing_dir(root: str | os.PathLike[str], what: str) -> Path:
    path = Path(root)
    if not path.exists():
        raise FileNotFoundError(f"{what} root {str(path)!r} does not exist")
    if not path.is_dir():
        raise NotADirectoryError(f"{what} root {str(path)!r} is not a directory")
    return path


def pil_rgb_loader(path: str | os.PathLike[str]) -> Image.Image:
    """Open an image file as RGB (errors name the file)."""
    try:
        with Image.open(path) as img:
            return img.convert("RGB")
    except FileNotFoundError:
        raise FileNotFoundError(f"image {str(path)!r} does not exist") from None
    except OSError as e:
        raise DataError(f"image {str(path)!r} cannot be read: {e}") from e


def image_folder(
    root: str | os.PathLike[str],
    transform: Callable[[Image.Image], Any] | None = None,
    *,
    target_transform: Callable[[int], Any] | None = None,
) -> ImageFolder:
    """An ImageNet-style tree ``root/<class>/<image>`` as a ``torchvision.datasets.ImageFolder``.

    Raises ``FileNotFoundError`` for a missing root and :class:`DataError` when there are no class folders or a class
    folder holds no image (naming the folders).
    """
    from torchvision.datasets import ImageFolder  # lazy: importing torchvision.datasets is slow

    path = _existing_dir(root, "image folder")
    classes = sorted(p for p in path.iterdir() if p.is_dir())
    if not classes:
        raise DataError(f"image folder {str(path)!r} has no class sub-folders (expected root/<class>/<image>)")
    empty = [
        p.name for p in classes if not any(f.suffix.lower() in IMG_EXTENSIONS for f in p.rglob("*") if f.is_file())
    ]
    if empty:
        raise DataError(f"image folder {str(path)!r}: class folder(s) {empty} contain no image ({IMG_EXTENSIONS})")
    return ImageFolder(str(path), transform=transform, target_transform=target_transform, loader=pil_rgb_loader)


class ImageList(Dataset[tuple[Any, int]]):
    """Images listed in a text file, one ``relative/path label`` per line (DomainNet, Office lists).

    Blank lines and lines starting with ``#`` are skipped; the path may contain spaces (the label is the last field).

    Args:
        root: directory the paths are relative to.
        list_file: the list (absolute, or relative to ``root`` if it does not exist as given).
        transform: applied to the PIL RGB image.
        num_classes: when given, every label must lie in ``[0, num_classes)``.
        classes: optional class names (length sets ``num_classes`` if that is not given).
        check_files: verify every listed image exists at construction (default True).
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        list_file: str | os.PathLike[str],
        *,
        transform: Callable[[Image.Image], Any] | None = None,
        target_transform: Callable[[int], Any] | None = None,
        num_classes: int | None = None,
        classes: Sequence[str] | None = None,
        check_files: bool = True,
    ) -> None:
        self.root = _existing_dir(root, "image list")
        lf = Path(list_file)
        if not lf.is_file() and (self.root / lf).is_file():
            lf = self.root / lf
        if not lf.is_file():
            raise FileNotFoundError(f"image list file {str(lf)!r} does not exist")
        if num_classes is None and classes is not None:
            num_classes = len(classes)
        if num_classes is not None and num_classes < 1:
            raise DataError(f"num_classes must be >= 1, got {num_classes}")
        self.list_file = lf
        self.samples: list[tuple[Path, int]] = []
        with open(lf, encoding="utf-8") as f:
            for lineno, raw in enumerate(f, 1):
                line = raw.strip()
                if not line or line.startswith("#"):
                    continue
                parts = line.rsplit(maxsplit=1)
                where = f"{lf}:{lineno}"
                if len(parts) != 2:
                    raise DataError(f"{where}: cannot parse {line!r}; expected 'relative/path label'")
                rel, lab = parts
                try:
                    label = int(lab)
                except ValueError:
                    raise DataError(f"{where}: label {lab!r} is not an integer (line {line!r})") from None
                if label < 0 or (num_classes is not None and label >= num_classes):
                    bound = f"[0, {num_classes})" if num_classes is not None else ">= 0"
                    raise DataError(f"{where}: label {label} out of range {bound}")
                path = self.root / rel
                if check_files and not path.is_file():
                    raise FileNotFoundError(f"{where}: image {str(path)!r} does not exist")
                self.samples.append((path, label))
        if not self.samples:
            raise DataError(f"image list {str(lf)!r} is empty (no 'path label' lines): empty split")
        self.num_classes = num_classes if num_classes is not None else max(s[1] for s in self.samples) + 1
        self.classes = list(classes) if classes is not None else [str(i) for i in range(self.num_classes)]
        self.targets = [s[1] for s in self.samples]
        self.transform = transform
        self.target_transform = target_transform

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[Any, Any]:
        path, label = self.samples[index]
        img = pil_rgb_loader(path)
        x = self.transform(img) if self.transform is not None else img
        y = self.target_transform(label) if self.target_transform is not None else label
        return x, y

    def __repr__(self) -> str:
        return f"ImageList({str(self.list_file)!r}, n={len(self)}, num_classes={self.num_classes})"


def domainnet(
    root: str | os.PathLike[str],
    domain: str,
    split: str = "train",
    *,
    transform: Callable[[Image.Image], Any] | None = None,
    num_classes: int = DOMAINNET_NUM_CLASSES,
    check_files: bool = True,
) -> ImageList:
    """DomainNet ``domain``/``split`` from ``root/<domain>_<split>.txt`` (lines ``<domain>/<class>/<file> label``)."""
    path = _existing_dir(root, "DomainNet")
    if domain not in DOMAINNET_DOMAINS:
        raise DataError(f"unknown DomainNet domain {domain!r}; valid: {', '.join(DOMAINNET_DOMAINS)}")
    if split not in ("train", "test"):
        raise DataError(f"unknown DomainNet split {split!r}; valid: train, test")
    lf = path / f"{domain}_{split}.txt"
    if not lf.is_file():
        present = sorted(p.name for p in path.glob("*_*.txt"))
        raise FileNotFoundError(f"DomainNet list {str(lf)!r} does not exist (lists present: {present})")
    return ImageList(path, lf, transform=transform, num_classes=num_classes, check_files=check_files)
