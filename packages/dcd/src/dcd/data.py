"""Dataset selection for the CLI: ``digits5:<domain>`` (embedded, 32×32) or ``imagefolder:<root>`` (root/train,
root/val; ImageNet transforms)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor

__all__ = ["EMBEDDED_PREFIXES", "eval_transform_cfg", "is_embedded", "load_dataset", "stacked"]

EMBEDDED_PREFIXES = ("digits5",)
FOLDER_PREFIXES = ("folder", "imagefolder")  # "imagefolder:" is an alias of "folder:"
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)


def eval_transform_cfg(img_size: int = 224) -> dict[str, Any]:
    """The eval transform of ``folder:`` data as timm data-config fields (the registry's ``pretrained_cfg`` uses
    these): resize the short side to ⌊img_size/crop_pct⌋ (bilinear), centre-crop img_size, ImageNet mean/std."""
    return {"input_size": (3, img_size, img_size), "interpolation": "bilinear", "crop_pct": 0.875, "mean": MEAN,
            "std": STD}  # fmt: skip


def is_embedded(spec: str) -> bool:
    return spec.split(":", 1)[0] in EMBEDDED_PREFIXES


def load_dataset(spec: str, split: str, *, img_size: int = 224, limit: int | None = None) -> Any:
    """A dataset for ``spec``; ``split`` is "train" or "val"/"test".

    Raises:
        ValueError: an unknown spec or Digits-5 domain (the message lists the choices).
    """
    kind, _, arg = spec.partition(":")
    if kind == "digits5":
        from dyncore.data import DIGITS5_DOMAINS, digits5

        if arg not in DIGITS5_DOMAINS:
            raise ValueError(f"--data {spec!r}: unknown Digits-5 domain {arg!r}; choose one of {DIGITS5_DOMAINS}")
        return digits5(arg, "train" if split == "train" else "test", limit=limit)
    if kind in FOLDER_PREFIXES:
        from dyncore.data import image_folder

        root = Path(arg)
        sub = root / ("train" if split == "train" else "val")
        return image_folder(sub, folder_transform(split, img_size))
    raise ValueError(f"--data {spec!r}: expected 'digits5:<domain>' or 'folder:<root with train/ and val/>'")


def folder_transform(split: str, img_size: int = 224) -> Any:
    """torchvision transform of ``folder:`` data: RandomResizedCrop + flip (train), or the eval transform of
    :func:`eval_transform_cfg` (resize ⌊img_size/crop_pct⌋ bilinear, centre crop)."""
    from torchvision import transforms as T

    norm = T.Normalize(MEAN, STD)
    if split == "train":
        return T.Compose([T.RandomResizedCrop(img_size), T.RandomHorizontalFlip(), T.ToTensor(), norm])
    cfg = eval_transform_cfg(img_size)
    resize = int(img_size / cfg["crop_pct"])
    return T.Compose([T.Resize(resize, interpolation=T.InterpolationMode.BILINEAR), T.CenterCrop(img_size),
                      T.ToTensor(), norm])  # fmt: skip


def stacked(dataset: Any) -> tuple[Tensor, Tensor]:
    """(images float (N, 3, H, W), labels (N,)) of an embedded dataset, normalised as its items are."""
    xs = torch.stack([dataset[i][0] for i in range(len(dataset))])
    return xs, torch.as_tensor(dataset.labels)
