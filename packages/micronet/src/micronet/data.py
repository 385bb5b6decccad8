"""Datasets for ``micronet train|eval|demo``: an ImageNet-style folder or an embedded dyncore dataset."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch.utils.data import Dataset

__all__ = ["CROP_PCT", "IMAGENET_MEAN", "IMAGENET_STD", "INTERPOLATION", "imagenet_transforms", "load_dataset"]

# The released eval transform; the timm pretrained_cfg of every micronet model states the same values (tests).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CROP_PCT = 0.875  # Resize(256) + CenterCrop(224)
INTERPOLATION = "bilinear"


def imagenet_transforms(image_size: int = 224) -> tuple[Any, Any]:
    """Released augmentation: RandomResizedCrop + flip (train); Resize(s/0.875) + CenterCrop(s) (eval), bilinear."""
    import math

    from torchvision import transforms as T

    bilinear = T.InterpolationMode.BILINEAR
    norm = T.Normalize(IMAGENET_MEAN, IMAGENET_STD)
    train = T.Compose(
        [T.RandomResizedCrop(image_size, interpolation=bilinear), T.RandomHorizontalFlip(), T.ToTensor(), norm]
    )
    resize = math.floor(image_size / CROP_PCT)
    val = T.Compose([T.Resize(resize, interpolation=bilinear), T.CenterCrop(image_size), T.ToTensor(), norm])
    return train, val


def load_dataset(
    spec: str, *, limit: tuple[int, int] | None = None, image_size: int = 224, seed: int = 0
) -> tuple[Dataset[Any], Dataset[Any], int, int]:
    """``spec`` is ``digits5:<domain>``, ``multidomain:<task>`` or ``folder:<root>`` (alias ``imagefolder:<root>``;
    ``root/train``, ``root/val`` ImageNet-style). Returns (train, test, num_classes, image_size); ``limit`` caps
    (train, test) sizes."""
    kind, _, arg = spec.partition(":")
    if not arg:
        raise ValueError(f"--data {spec!r}: expected digits5:<domain>, multidomain:<task> or folder:<root>")
    if kind == "imagefolder":
        kind = "folder"
    if kind == "digits5":
        from dyncore.data import digits5

        tr, te = digits5(arg, "train", seed=seed), digits5(arg, "test", seed=seed)
        size = 32
    elif kind == "multidomain":
        from dyncore.data import multidomain_task

        tr, te = multidomain_task(arg, "train", seed=seed), multidomain_task(arg, "test", seed=seed)
        size = int(tr[0][0].shape[-1])
    elif kind == "folder":
        from dyncore.data import image_folder

        root = Path(arg)
        if not (root / "train").is_dir():
            raise FileNotFoundError(f"--data {spec!r}: {root / 'train'} is not a directory (expected <root>/train/)")
        t_train, t_val = imagenet_transforms(image_size)
        tr = image_folder(root / "train", t_train)
        val_root = root / "val" if (root / "val").is_dir() else root / "test"
        te = image_folder(val_root, t_val)
        return (*_limit(tr, te, limit), len(tr.classes), image_size)
    else:
        raise ValueError(
            f"--data {spec!r}: unknown dataset kind {kind!r} (digits5, multidomain, folder or imagefolder)"
        )
    return (*_limit(tr, te, limit), len(tr.classes), size)


def _limit(tr: Dataset[Any], te: Dataset[Any], limit: tuple[int, int] | None) -> tuple[Dataset[Any], Dataset[Any]]:
    if limit is None:
        return tr, te
    from torch.utils.data import Subset

    return Subset(tr, range(min(limit[0], len(tr)))), Subset(te, range(min(limit[1], len(te))))  # type: ignore[arg-type]
