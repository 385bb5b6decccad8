"""Evaluation metrics: top-k accuracy (classification) and a confusion matrix for segmentation (IoU, mIoU)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.distributed as dist

from dyncore.training.distributed import DistEnv

__all__ = ["ConfusionMatrix", "accuracy"]


def accuracy(logits: torch.Tensor, target: torch.Tensor, topk: Sequence[int] = (1,)) -> list[float]:
    """Top-k accuracy in percent, one value per ``k`` in ``topk``.

    Args:
        logits: (B, C) scores.
        target: (B,) integer class ids in ``[0, C)``.
        topk: e.g. ``(1, 5)``; each ``k`` in ``[1, C]``.
    """
    if not isinstance(logits, torch.Tensor) or logits.ndim != 2:
        raise ValueError(f"accuracy: `logits` must be a (B, C) tensor, got shape {_shape(logits)}")
    if not isinstance(target, torch.Tensor) or target.ndim != 1:
        raise ValueError(f"accuracy: `target` must be a (B,) tensor of class ids, got shape {_shape(target)}")
    if target.is_floating_point() or target.dtype == torch.bool:
        raise TypeError(f"accuracy: `target` must hold integer class ids, got dtype {target.dtype}")
    b, c = logits.shape
    if target.shape[0] != b:
        raise ValueError(f"accuracy: `logits` has batch size {b} but `target` has {target.shape[0]}")
    if b == 0:
        raise ValueError("accuracy: empty batch (B = 0)")
    ks = [topk] if isinstance(topk, int) else list(topk)
    if not ks or any(isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= c for k in ks):
        raise ValueError(f"accuracy: every k in `topk` must be an int in [1, {c}] (number of classes), got {topk!r}")
    if bool(((target < 0) | (target >= c)).any()):
        bad = sorted({int(v) for v in target[(target < 0) | (target >= c)].tolist()})
        raise ValueError(f"accuracy: `target` holds class ids {bad[:10]} outside [0, {c})")
    top = logits.detach().topk(max(ks), dim=1).indices  # (B, maxk)
    hits = top.eq(target.to(top.device).view(-1, 1))  # (B, maxk)
    return [float(hits[:, :k].any(dim=1).float().sum().item()) * 100.0 / b for k in ks]


def _shape(x: object) -> str:
    return str(tuple(x.shape)) if isinstance(x, torch.Tensor) else type(x).__name__


class ConfusionMatrix:
    """Accumulated ``(num_classes, num_classes)`` confusion matrix; rows = ground truth, columns = prediction.

    Pixels whose target equals ``ignore_index`` are skipped. All scores are fractions in [0, 1] (multiply by 100 for
    the usual tables).

    Args:
        num_classes: number of classes C (class ids ``0 .. C-1``).
        ignore_index: target id to skip (255 for Cityscapes/GTA5); ``None`` to skip nothing.
    """

    def __init__(self, num_classes: int, ignore_index: int | None = 255) -> None:
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
            raise ValueError(f"ConfusionMatrix: `num_classes` must be a positive int, got {num_classes!r}")
        if ignore_index is not None and 0 <= ignore_index < num_classes:
            raise ValueError(
                f"ConfusionMatrix: `ignore_index`={ignore_index} is a valid class id for num_classes={num_classes}"
            )
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.matrix = torch.zeros(num_classes, num_classes, dtype=torch.int64)

    def reset(self) -> None:
        """Zero the counts."""
        self.matrix.zero_()

    @torch.no_grad()
    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        """Add a batch.

        Args:
            pred: predicted ids with the shape of ``target`` (e.g. (B, H, W)), or scores with one more dim at
                position 1 (e.g. (B, C, H, W) or (B, C)), reduced by argmax over dim 1.
            target: integer ids in ``[0, C)`` or ``ignore_index``, e.g. (B, H, W).
        """
        if not isinstance(pred, torch.Tensor) or not isinstance(target, torch.Tensor):
            raise TypeError("ConfusionMatrix.update: `pred` and `target` must be tensors")
        if target.is_floating_point():
            raise TypeError(f"ConfusionMatrix.update: `target` must hold integer ids, got dtype {target.dtype}")
        c = self.num_classes
        if pred.ndim == target.ndim + 1:
            if pred.shape[1] != c:
                raise ValueError(
                    f"ConfusionMatrix.update: score `pred` {tuple(pred.shape)} has {pred.shape[1]} channels at dim 1, "
                    f"expected num_classes={c}"
                )
            pred = pred.argmax(dim=1)
        elif pred.is_floating_point():
            raise TypeError(
                "ConfusionMatrix.update: `pred` with the shape of `target` must hold integer ids, "
                f"got dtype {pred.dtype}"
            )
        if pred.shape != target.shape:
            raise ValueError(
                f"ConfusionMatrix.update: `pred` ids {tuple(pred.shape)} and `target` {tuple(target.shape)} "
                "differ in shape"
            )
        pred = pred.reshape(-1).long()
        target = target.reshape(-1).to(pred.device).long()
        if self.ignore_index is None:
            keep = torch.ones_like(target, dtype=torch.bool)
        else:
            keep = target != self.ignore_index
        bad_t = keep & ((target < 0) | (target >= c))
        if bool(bad_t.any()):
            ids = sorted({int(v) for v in target[bad_t].unique()[:10].tolist()})
            raise ValueError(
                f"ConfusionMatrix.update: `target` holds label ids {ids} outside [0, {c}) that are not "
                f"ignore_index={self.ignore_index} (wrong label mapping?)"
            )
        pred, target = pred[keep], target[keep]
        if bool(((pred < 0) | (pred >= c)).any()):
            ids = sorted({int(v) for v in pred[(pred < 0) | (pred >= c)].unique()[:10].tolist()})
            raise ValueError(f"ConfusionMatrix.update: `pred` holds ids {ids} outside [0, {c})")
        counts = torch.bincount(target * c + pred, minlength=c * c).reshape(c, c)
        if self.matrix.device != counts.device:
            self.matrix = self.matrix.to(counts.device)
        self.matrix += counts

    def iou(self) -> torch.Tensor:
        """(C,) float64 intersection-over-union per class; NaN for a class absent from both targets and predictions."""
        m = self.matrix.double()
        tp = m.diag()
        union = m.sum(0) + m.sum(1) - tp
        return torch.where(union > 0, tp / union.clamp_min(1), torch.full_like(tp, float("nan")))

    def miou(self, classes: Sequence[int] | None = None) -> float:
        """Mean IoU over classes that occur (NaN-mean), optionally over a subset of class ids.

        ``classes`` selects e.g. the 16 or 13 SYNTHIA→Cityscapes evaluation classes out of 19.
        """
        iou = self.iou()
        if classes is not None:
            idx = list(classes)
            bad = [k for k in idx if isinstance(k, bool) or not isinstance(k, int) or not 0 <= k < self.num_classes]
            if not idx or bad:
                raise ValueError(
                    f"ConfusionMatrix.miou: `classes` must be a non-empty list of ids in [0, {self.num_classes}), "
                    f"bad entries: {bad if bad else 'empty list'}"
                )
            iou = iou[torch.tensor(idx, device=iou.device)]
        return float(iou.nanmean().item())

    def pixel_accuracy(self) -> float:
        """Fraction of counted (non-ignored) pixels predicted correctly; NaN before any update."""
        total = self.matrix.sum()
        return float(self.matrix.diag().sum().item() / total.item()) if total > 0 else float("nan")

    def class_accuracy(self) -> torch.Tensor:
        """(C,) float64 per-class recall (mean class accuracy = ``.nanmean()``); NaN for classes with no target."""
        m = self.matrix.double()
        support = m.sum(1)
        return torch.where(support > 0, m.diag() / support.clamp_min(1), torch.full_like(support, float("nan")))

    def all_reduce(self, env: DistEnv) -> ConfusionMatrix:
        """Sum the counts over all processes in place (no-op for one process); returns ``self``."""
        if env.is_distributed and dist.is_initialized():
            if self.matrix.device != env.device:
                self.matrix = self.matrix.to(env.device)
            dist.all_reduce(self.matrix, op=dist.ReduceOp.SUM)
        return self

    def __repr__(self) -> str:
        return (
            f"ConfusionMatrix(num_classes={self.num_classes}, ignore_index={self.ignore_index}, "
            f"count={int(self.matrix.sum())})"
        )
