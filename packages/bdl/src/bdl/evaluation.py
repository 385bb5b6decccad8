"""Evaluation: per-class IoU and 19/16/13-class mIoU (dyncore ConfusionMatrix), stage tables, qualitative PNGs."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn
from torch.utils.data import Dataset

from bdl.data.labels import CITYSCAPES_CLASSES, CLASSES_13, CLASSES_16, IGNORE_INDEX, colorize
from bdl.data.scenes import denormalize_image


@dataclass
class SegmentationScores:
    """Scores in percent. ``iou`` has one entry per class (NaN when a class is absent from targets and predictions)."""

    iou: list[float]
    miou19: float
    miou16: float
    miou13: float
    pixel_accuracy: float

    def as_dict(self) -> dict[str, object]:
        return {
            "miou19": self.miou19,
            "miou16": self.miou16,
            "miou13": self.miou13,
            "pixel_accuracy": self.pixel_accuracy,
            "iou": self.iou,
        }


@torch.no_grad()
def evaluate(
    model: nn.Module,
    dataset: Dataset,
    *,
    num_classes: int = 19,
    batch_size: int = 8,
    device: str | torch.device = "cpu",
    output_size: tuple[int, int] | None = None,
) -> SegmentationScores:
    """Predict every image of ``dataset`` and score against its labels (ignore 255).

    ``output_size`` upsamples the logits (bilinear) before the argmax and resizes labels (nearest), like the released
    protocol (predict at 1024×512, score at 2048×1024).
    """
    from dyncore.training import ConfusionMatrix

    was_training = model.training
    model.eval().to(device)
    cm = ConfusionMatrix(num_classes, ignore_index=IGNORE_INDEX)
    n = len(dataset)  # type: ignore[arg-type]
    for start in range(0, n, batch_size):
        items = [dataset[i] for i in range(start, min(start + batch_size, n))]
        x = torch.stack([it[0] for it in items]).to(device)
        y = torch.stack([it[1] for it in items])
        logits = model(x)
        if logits.shape[1] != num_classes:
            raise ValueError(
                f"class-count mismatch: the model predicts {logits.shape[1]} classes, the data have {num_classes}"
            )
        if output_size is not None:
            logits = F.interpolate(logits, size=output_size, mode="bilinear", align_corners=False)
            y = F.interpolate(y[:, None].float(), size=output_size, mode="nearest")[:, 0].long()
        if logits.shape[-2:] != y.shape[-2:]:
            raise ValueError(
                f"image/label size mismatch: predictions {tuple(logits.shape[-2:])} vs labels {tuple(y.shape[-2:])}"
            )
        cm.update(logits.argmax(1).cpu(), y)
    model.train(was_training)
    iou = (cm.iou() * 100).tolist()
    sub16 = list(CLASSES_16) if num_classes == 19 else None
    sub13 = list(CLASSES_13) if num_classes == 19 else None
    return SegmentationScores(
        iou=[float(v) for v in iou],
        miou19=cm.miou() * 100,
        miou16=cm.miou(sub16) * 100 if sub16 else float("nan"),
        miou13=cm.miou(sub13) * 100 if sub13 else float("nan"),
        pixel_accuracy=cm.pixel_accuracy() * 100,
    )


def _fmt(v: float) -> str:
    return "–" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.1f}"


def stage_table(rows: list[dict[str, object]], *, per_class: bool = True) -> str:
    """Markdown table (Table 5.2 analogue): one row per stage with mIoU-19/16/13, pixel ratio and per-class IoUs."""
    head = ["model", "mIoU-19", "mIoU-16", "mIoU-13", "pixel ratio %"]
    if per_class:
        head += list(CITYSCAPES_CLASSES)
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        ratio = r.get("pixel_ratio")
        cells = [
            str(r["label"]),
            _fmt(float(r["miou19"])),  # type: ignore[arg-type]
            _fmt(float(r["miou16"])),  # type: ignore[arg-type]
            _fmt(float(r["miou13"])),  # type: ignore[arg-type]
            _fmt(float(ratio) * 100) if ratio is not None else "–",  # type: ignore[arg-type]
        ]
        if per_class:
            cells += [_fmt(float(v)) for v in cast(list, r["iou"])]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


@torch.no_grad()
def save_qualitative(
    model: nn.Module,
    dataset: Dataset,
    path: str | os.PathLike[str],
    *,
    indices: tuple[int, ...] = (0, 1, 2, 3),
    threshold: float = 0.9,
    device: str | torch.device = "cpu",
) -> Path:
    """PNG grid, one row per image: image | prediction | confidence mask (white: max prob > threshold) | truth."""
    was_training = model.training
    model.eval().to(device)
    rows = []
    for i in indices:
        if i >= len(dataset):  # type: ignore[arg-type]
            break
        x, y = dataset[i]
        prob = F.softmax(model(x[None].to(device)), dim=1)[0].cpu()
        conf, pred = prob.max(0)
        img = denormalize_image(x).permute(1, 2, 0).numpy()
        mask = np.repeat(((conf > threshold).numpy().astype(np.uint8) * 255)[..., None], 3, axis=2)
        rows.append(
            np.concatenate(
                [img, colorize(pred.numpy().astype(np.uint8)), mask, colorize(y.numpy().astype(np.uint8))], axis=1
            )
        )
    model.train(was_training)
    grid = np.concatenate(rows, axis=0)
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    scale = max(1, 256 // grid.shape[1] * 2) if grid.shape[1] < 512 else 1
    Image.fromarray(grid).resize((grid.shape[1] * scale, grid.shape[0] * scale), Image.Resampling.NEAREST).save(p)
    return p
