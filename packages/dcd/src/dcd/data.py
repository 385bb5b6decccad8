"""Dataset selection for the CLI: ``digits5:<domain>`` (embedded, 32×32) or ``imagefolder:<root>`` (root/train,
root/val; ImageNet transforms)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor

__all__ = ["EMBEDDED_PREFIXES", "is_embedded", "load_dataset", "stacked"]

EMBEDDED_PREFIXES = ("digits5",)


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
    if kind == "imagefolder":
        from torchvision import transforms as T

        from dyncore.data import image_folder

        root = Path(arg)
        sub = root / ("train" if split == "train" else "val")
        norm = T.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])
        if split == "train":
            tf = T.Compose([T.RandomResizedCrop(img_size), T.RandomHorizontalFlip(), T.ToTensor(), norm])
        else:
            tf = T.Compose([T.Resize(int(img_size * 256 / 224)), T.CenterCrop(img_size), T.ToTensor(), norm])
        return image_folder(sub, tf)
    raise ValueError(f"--data {spec!r}: expected 'digits5:<domain>' or 'imagefolder:<root with train/ and val/>'")


def stacked(dataset: Any) -> tuple[Tensor, Tensor]:
    """(images float (N, 3, H, W), labels (N,)) of an embedded dataset, normalised as its items are."""
    xs = torch.stack([dataset[i][0] for i in range(len(dataset))])
    return xs, torch.as_tensor(dataset.labels)
