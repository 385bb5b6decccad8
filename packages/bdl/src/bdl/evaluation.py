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
        """Strict-JSON form: NaN (a class absent from labels and predictions) becomes None (JSON null)."""
        return {
            "miou19": _finite_or_none(self.miou19),
            "miou16": _finite_or_none(self.miou16),
            "miou13": _finite_or_none(self.miou13),
            "pixel_accuracy": _finite_or_none(self.pixel_accuracy),
            "iou": [_finite_or_none(v) for v in self.iou],
        }


def _finite_or_none(v: float) -> float | None:
    return float(v) if math.isfinite(v) else None


def _resize_labels(y: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Nearest-neighbour resize of label maps (B, H, W) (no new class ids appear)."""
    return F.interpolate(y[:, None].float(), size=size, mode="nearest")[:, 0].long()


def _check_aspect(pred: tuple[int, ...], label: tuple[int, ...], tol: float = 0.02) -> None:
    """Upsampling a prediction to its label's size is only valid when both show the same field of view."""
    a, b = pred[-1] / pred[-2], label[-1] / label[-2]
    if abs(a / b - 1) > tol:
        raise ValueError(
            f"image/label size mismatch: predictions {tuple(pred[-2:])} and labels {tuple(label[-2:])} have different "
            "aspect ratios"
        )


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

    Scoring happens at each label's own resolution: when a label map is larger than the image (real data resized
    for the network, labels kept at full resolution, e.g. Cityscapes 1024×512 → 2048×1024, the released protocol),
    the logits are upsampled bilinearly to the label's size before the argmax. ``output_size`` instead upsamples the
    logits to that size and resizes the labels (nearest) to it.
    """
    from dyncore.training import ConfusionMatrix

    was_training = model.training
    model.eval().to(device)
    cm = ConfusionMatrix(num_classes, ignore_index=IGNORE_INDEX)
    n = len(dataset)  # type: ignore[arg-type]
    for start in range(0, n, batch_size):
        items = [dataset[i] for i in range(start, min(start + batch_size, n))]
        x = torch.stack([it[0] for it in items]).to(device)
        logits = model(x)
        if logits.shape[1] != num_classes:
            raise ValueError(
                f"class-count mismatch: the model predicts {logits.shape[1]} classes, the data have {num_classes}"
            )
        for j, (_, label) in enumerate(items):  # labels may differ in size from each other (full resolution)
            scores, y = logits[j : j + 1], label[None]
            if output_size is not None:
                scores = F.interpolate(scores, size=output_size, mode="bilinear", align_corners=False)
                y = _resize_labels(y, output_size)
            elif scores.shape[-2:] != y.shape[-2:]:
                _check_aspect(tuple(scores.shape), tuple(y.shape))
                scores = F.interpolate(scores, size=tuple(y.shape[-2:]), mode="bilinear", align_corners=False)
            cm.update(scores.argmax(1).cpu(), y)
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


def format_score(v: object) -> str:
    """One decimal; '–' for a missing (None) or NaN score."""
    if v is None:
        return "–"
    f = float(v)  # type: ignore[arg-type]
    return "–" if math.isnan(f) else f"{f:.1f}"


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
            format_score(r["miou19"]),
            format_score(r["miou16"]),
            format_score(r["miou13"]),
            format_score(float(ratio) * 100) if ratio is not None else "–",  # type: ignore[arg-type]
        ]
        if per_class:
            cells += [format_score(v) for v in cast(list, r["iou"])]
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
        if tuple(y.shape) != tuple(pred.shape):  # a full-resolution label: shown at the image's size
            y = _resize_labels(y[None], (int(pred.shape[0]), int(pred.shape[1])))[0]
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
