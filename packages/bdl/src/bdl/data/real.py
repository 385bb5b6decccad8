"""Loaders for user-supplied GTA5, SYNTHIA-RAND-CITYSCAPES and Cityscapes trees (spec/data.md, "Real datasets").

Layouts:
- GTA5: ``<root>/images/*.png`` and ``<root>/labels/*.png`` (Cityscapes label ids), paired by file name.
- SYNTHIA-RAND-CITYSCAPES: ``<root>/RGB/*.png`` and ``<root>/GT/LABELS/*.png`` (SYNTHIA ids in channel 0).
- Cityscapes: ``<root>/leftImg8bit/<split>/<city>/*_leftImg8bit.png`` and
  ``<root>/gtFine/<split>/<city>/*_gtFine_labelIds.png``.

Label ids are mapped to the 19 train ids with the tables of :mod:`bdl.data.labels`; ids that exist in the source
label set but are not evaluated map to 255. An id outside the label set, a missing root or split, an image without a
label, or an image/label size mismatch raises :class:`DatasetError` naming the file.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from bdl.data.labels import (
    CITYSCAPES_ID_TO_TRAINID,
    CITYSCAPES_MAX_ID,
    SYNTHIA_ID_TO_TRAINID,
    SYNTHIA_MAX_ID,
    make_lut,
)
from bdl.data.scenes import SegmentationDataset, normalize_image

_IMAGE_EXTS = (".png", ".jpg", ".jpeg")


class DatasetError(ValueError):
    """A problem with a user-supplied dataset tree; the message names the offending file or directory."""


def _read_label(path: Path) -> np.ndarray:
    """Read a label PNG as an integer (H, W) array (channel 0 of a multi-channel or 16-bit PNG, as in SYNTHIA)."""
    try:
        import imageio.v3 as iio

        arr = np.asarray(iio.imread(path))
    except Exception:  # imageio missing or unable: fall back to Pillow
        with Image.open(path) as im:
            arr = np.asarray(im)
    if arr.ndim == 3:
        arr = arr[..., 0]
    return arr.astype(np.int64)


#: A resize: None (keep), L (long side L, aspect kept, short side rounded to a multiple of 8), or (H, W) exactly.
Resize = int | tuple[int, int] | None

#: Thesis preprocessing (Section 5.5.2): GTA5, SYNTHIA and Cityscapes images are resized to a long side of 1024,
#: keeping their aspect ratio (Cityscapes 2048×1024 → 1024×512, GTA5 1914×1052 → 1024×560).
DEFAULT_LONG_SIDE = 1024


def resized_shape(height: int, width: int, resize: Resize) -> tuple[int, int]:
    """The (H, W) an image of ``height``×``width`` gets under ``resize`` (see :data:`Resize`).

    With a long side, the short side keeps the aspect ratio and is rounded to the nearest multiple of 8 (≥ 8) so that
    the translation model (multiples of 4) and stride-8 segmenters take the image as is.
    """
    if resize is None:
        return height, width
    if isinstance(resize, int):
        if resize < 8:
            raise ValueError(f"long-side resize must be at least 8 pixels, got {resize}")
        scale = resize / max(height, width)
        short = max(8, round(min(height, width) * scale / 8) * 8)
        return (resize, short) if height >= width else (short, resize)
    h, w = resize
    if h < 1 or w < 1:
        raise ValueError(f"resize size must be positive, got {resize}")
    return int(h), int(w)


class LabeledImageFolder(SegmentationDataset):
    """(image, label) pairs from explicit file lists with a label-id → train-id look-up table.

    Args:
        pairs: (image path, label path) pairs.
        lut: 65536-entry table (see :func:`bdl.data.labels.make_lut`); entries -1 are unknown ids → error.
        size: resize (:data:`Resize`): None keeps the files' size; an int L resizes every image to a long side of L
            keeping its aspect ratio (the thesis: 1024); (H, W) resizes to exactly that (image bilinear, label
            nearest).
        full_res_labels: return labels at the label file's own resolution (for evaluation: predictions are
            upsampled to it, the released protocol) instead of resizing them with the image.
        names: stable identifiers (default: image paths relative to ``root``).
    """

    def __init__(
        self,
        pairs: list[tuple[Path, Path]],
        lut: np.ndarray,
        *,
        size: Resize = None,
        root: Path | None = None,
        dataset: str = "dataset",
        full_res_labels: bool = False,
    ) -> None:
        if not pairs:
            raise DatasetError(f"{dataset}: no images found under {root}")
        if size is not None:
            resized_shape(8, 8, size)  # validates the spec
        self.pairs, self.lut, self.root, self.dataset = pairs, lut, root, dataset
        self.resize: Resize = size
        self.full_res_labels = full_res_labels
        #: a fixed (H, W) of every item when one is known up front (an exact resize), else None
        self.size: tuple[int, int] | None = tuple(size) if isinstance(size, tuple | list) else None  # type: ignore[assignment]
        self.names = [str(p.relative_to(root)) if root is not None else str(p) for p, _ in pairs]

    def image_size(self, index: int = 0) -> tuple[int, int]:
        """(H, W) of item ``index``'s image after the resize (reads only the file header)."""
        with Image.open(self.pairs[index][0]) as im:
            w, h = im.size
        return resized_shape(h, w, self.resize)

    def __len__(self) -> int:
        return len(self.pairs)

    def load_label(self, index: int) -> np.ndarray:
        """Train-id label map (H, W) uint8 of item ``index`` at its original size; unknown ids raise."""
        _, lpath = self.pairs[index]
        ids = _read_label(lpath)
        if ids.min() < 0 or ids.max() >= self.lut.shape[0]:
            raise DatasetError(f"{self.dataset}: label file {lpath} has ids outside [0, 65535]")
        mapped = self.lut[ids]
        if (mapped < 0).any():
            bad = sorted({int(v) for v in np.unique(ids[mapped < 0])})
            raise DatasetError(f"{self.dataset}: label file {lpath} contains unknown label ids {bad[:10]}")
        return mapped.astype(np.uint8)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        ipath, lpath = self.pairs[index]
        with Image.open(ipath) as im:
            image = np.asarray(im.convert("RGB"))
        label = self.load_label(index)
        if image.shape[:2] != label.shape:
            raise DatasetError(
                f"{self.dataset}: image {ipath} is {image.shape[0]}×{image.shape[1]} but its label {lpath} is "
                f"{label.shape[0]}×{label.shape[1]}"
            )
        x = normalize_image(torch.from_numpy(image.copy()).permute(2, 0, 1))
        y = torch.from_numpy(label).long()
        size = resized_shape(image.shape[0], image.shape[1], self.resize)
        if size != tuple(x.shape[-2:]):
            x = F.interpolate(x[None], size=size, mode="bilinear", align_corners=False)[0]
            if not self.full_res_labels:
                y = F.interpolate(y[None, None].float(), size=size, mode="nearest")[0, 0].long()
        return x, y


def _check_dir(path: Path, what: str) -> Path:
    if not path.exists():
        raise DatasetError(f"{what}: directory {path} does not exist")
    if not path.is_dir():
        raise DatasetError(f"{what}: {path} is not a directory")
    return path


def _images_in(directory: Path, recursive: bool = False) -> list[Path]:
    it = directory.rglob("*") if recursive else directory.iterdir()
    return sorted(p for p in it if p.is_file() and p.suffix.lower() in _IMAGE_EXTS)


def _pair_by_stem(images: list[Path], label_dir: Path, dataset: str) -> list[tuple[Path, Path]]:
    labels = {p.stem: p for p in _images_in(label_dir)}
    pairs = []
    for ip in images:
        lp = labels.get(ip.stem)
        if lp is None:
            raise DatasetError(f"{dataset}: image {ip} has no label file {label_dir / (ip.stem + '.png')}")
        pairs.append((ip, lp))
    return pairs


def gta5(root: str | os.PathLike[str], *, size: Resize = None, full_res_labels: bool = False) -> LabeledImageFolder:
    """GTA5 (``images/``, ``labels/`` with Cityscapes label ids). Thesis: size=1024 (long side); released code:
    size=(720, 1280). ``size``/``full_res_labels``: see :class:`LabeledImageFolder`."""
    r = _check_dir(Path(root), "GTA5 root")
    images = _images_in(_check_dir(r / "images", "GTA5"))
    if not images:
        raise DatasetError(f"GTA5: no images in {r / 'images'}")
    pairs = _pair_by_stem(images, _check_dir(r / "labels", "GTA5"), "GTA5")
    return LabeledImageFolder(
        pairs,
        make_lut(CITYSCAPES_ID_TO_TRAINID, CITYSCAPES_MAX_ID),
        size=size,
        root=r,
        dataset="GTA5",
        full_res_labels=full_res_labels,
    )


def synthia(root: str | os.PathLike[str], *, size: Resize = None, full_res_labels: bool = False) -> LabeledImageFolder:
    """SYNTHIA-RAND-CITYSCAPES (``RGB/``, ``GT/LABELS/``). Thesis: size=1024 (long side); released: (760, 1280)."""
    r = _check_dir(Path(root), "SYNTHIA root")
    images = _images_in(_check_dir(r / "RGB", "SYNTHIA"))
    if not images:
        raise DatasetError(f"SYNTHIA: no images in {r / 'RGB'}")
    pairs = _pair_by_stem(images, _check_dir(r / "GT" / "LABELS", "SYNTHIA"), "SYNTHIA")
    return LabeledImageFolder(
        pairs,
        make_lut(SYNTHIA_ID_TO_TRAINID, SYNTHIA_MAX_ID),
        size=size,
        root=r,
        dataset="SYNTHIA",
        full_res_labels=full_res_labels,
    )


def cityscapes(
    root: str | os.PathLike[str], split: str = "val", *, size: Resize = None, full_res_labels: bool = False
) -> LabeledImageFolder:
    """Cityscapes ``leftImg8bit/<split>`` with ``gtFine/<split>/*_gtFine_labelIds.png``. Thesis and released:
    size=1024 (long side: 1024×512), scored with ``full_res_labels=True`` (2048×1024)."""
    r = _check_dir(Path(root), "Cityscapes root")
    img_dir = _check_dir(r / "leftImg8bit" / split, f"Cityscapes split {split!r}")
    gt_dir = _check_dir(r / "gtFine" / split, f"Cityscapes split {split!r}")
    images = [p for p in _images_in(img_dir, recursive=True) if p.name.endswith("_leftImg8bit.png")]
    if not images:
        raise DatasetError(f"Cityscapes: split {split!r} is empty: no *_leftImg8bit.png under {img_dir}")
    pairs = []
    for ip in images:
        rel = ip.relative_to(img_dir)
        lp = gt_dir / rel.parent / ip.name.replace("_leftImg8bit.png", "_gtFine_labelIds.png")
        if not lp.is_file():
            raise DatasetError(f"Cityscapes: image {ip} has no label file {lp}")
        pairs.append((ip, lp))
    return LabeledImageFolder(
        pairs,
        make_lut(CITYSCAPES_ID_TO_TRAINID, CITYSCAPES_MAX_ID),
        size=size,
        root=r,
        dataset="Cityscapes",
        full_res_labels=full_res_labels,
    )
