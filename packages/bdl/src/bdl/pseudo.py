"""Pseudo labels for self-training (thesis Sections 5.3.2–5.3.3 "max probability threshold", 5.4.3, Figure 5.5).

Two selection rules (``mode``):

- ``"global"`` (thesis): keep a target pixel when its max class probability exceeds 0.9 (m_T of Eq. 5.9);
- ``"class_median"`` (released code): per class c, threshold_c = min(0.9, median confidence of the pixels predicted as
  c over the whole target set); pixels below their class threshold become 255.

The statistics are streamed: per-class histograms of the max probability (:class:`ConfidenceHistogram`, C × bins
integers), so memory does not grow with the number of target images (the released script kept every probability map,
~25 GB on Cityscapes). The per-class medians come from the histograms (error ≤ 1/bins). Labels are written as PNGs into
a folder with a manifest naming the target items, so a folder made for another target list is refused.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn
from torch.utils.data import Dataset

from bdl.data.labels import IGNORE_INDEX
from dyncore.io import atomic_directory

Mode = Literal["global", "class_median"]
MANIFEST = "pseudo_labels.json"


class PseudoLabelMismatchError(ValueError):
    """A pseudo-label folder does not belong to the given target list (names, count or sizes differ)."""


class ConfidenceHistogram:
    """Streamed per-class histograms of the max class probability.

    ``counts[c, b]`` = number of pixels predicted as class c whose confidence falls in bin b = ⌊conf·bins⌋.
    Memory: C × bins int64, independent of the number of pixels seen.
    """

    def __init__(self, num_classes: int, bins: int = 1000) -> None:
        if num_classes < 1 or bins < 2:
            raise ValueError(f"need num_classes ≥ 1 and bins ≥ 2, got {num_classes}, {bins}")
        self.num_classes, self.bins = num_classes, bins
        self.counts = torch.zeros(num_classes, bins, dtype=torch.int64)

    @property
    def nbytes(self) -> int:
        return self.counts.numel() * self.counts.element_size()

    @torch.no_grad()
    def update(self, prob: torch.Tensor) -> None:
        """Add (B, C, H, W) class probabilities."""
        if prob.ndim != 4 or prob.shape[1] != self.num_classes:
            raise ValueError(f"expected (B, {self.num_classes}, H, W) probabilities, got {tuple(prob.shape)}")
        conf, pred = prob.max(dim=1)
        self.update_conf(conf, pred)

    @torch.no_grad()
    def update_conf(self, conf: torch.Tensor, pred: torch.Tensor) -> None:
        """Add confidences ``conf`` with predicted classes ``pred`` (same shape)."""
        b = (conf.reshape(-1).double() * self.bins).long().clamp_(0, self.bins - 1)
        idx = pred.reshape(-1).long().cpu() * self.bins + b.cpu()
        self.counts += torch.bincount(idx, minlength=self.num_classes * self.bins).reshape(self.num_classes, -1)

    def total(self) -> int:
        return int(self.counts.sum())

    def class_medians(self) -> torch.Tensor:
        """(C,) median confidence per predicted class from the histogram (linear within a bin); NaN if unseen."""
        out = torch.full((self.num_classes,), float("nan"), dtype=torch.float64)
        for c in range(self.num_classes):
            h = self.counts[c].double()
            n = float(h.sum())
            if n == 0:
                continue
            cum = h.cumsum(0)
            k = int(torch.searchsorted(cum, torch.tensor([n / 2], dtype=torch.float64)).item())
            k = min(k, self.bins - 1)
            before = float(cum[k - 1]) if k > 0 else 0.0
            frac = (n / 2 - before) / max(float(h[k]), 1.0)
            out[c] = (k + frac) / self.bins
        return out

    def ratio_above(self, thresholds: Sequence[float] | torch.Tensor | np.ndarray) -> torch.Tensor:
        """Fraction of all pixels with confidence ≥ t (t rounded down to a bin edge), for each t."""
        total = max(self.total(), 1)
        per_bin = self.counts.sum(0)
        tail = per_bin.flip(0).cumsum(0).flip(0)  # tail[b] = pixels in bins ≥ b
        t = torch.as_tensor(thresholds, dtype=torch.float64)
        idx = (t * self.bins).floor().long().clamp(0, self.bins - 1)
        return tail[idx].double() / total

    def merge(self, other: ConfidenceHistogram) -> None:
        self.counts += other.counts


def class_thresholds(hist: ConfidenceHistogram, *, mode: Mode = "global", threshold: float = 0.9) -> torch.Tensor:
    """(C,) per-class thresholds: all ``threshold`` (global) or min(threshold, class median) (class_median)."""
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"threshold must be in [0, 1], got {threshold}")
    if mode == "global":
        return torch.full((hist.num_classes,), threshold, dtype=torch.float64)
    if mode == "class_median":
        med = hist.class_medians()
        return torch.where(torch.isnan(med), torch.full_like(med, threshold), med.clamp(max=threshold))
    raise ValueError(f"mode must be 'global' or 'class_median', got {mode!r}")


def select_pseudo_labels(prob: torch.Tensor, thresholds: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) probabilities → (B, H, W) uint8 pseudo labels: argmax where conf > threshold[argmax], else 255."""
    conf, pred = prob.max(dim=1)
    thr = thresholds.to(prob.device, torch.float64)[pred]
    labels = pred.to(torch.uint8)
    labels[conf.double() <= thr] = IGNORE_INDEX
    return labels


@torch.no_grad()
def predict_probabilities(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """softmax(M(x)) in eval mode.  (B, 3, H, W) → (B, C, H, W)."""
    was_training = model.training
    model.eval()
    prob = F.softmax(model(images), dim=1)
    model.train(was_training)
    return prob


@dataclass
class PseudoLabelResult:
    """Outcome of one pseudo-labelling round."""

    folder: Path
    mode: str
    thresholds: list[float]
    pixel_ratio: float  # selected pixels / all target pixels (Table 5.3b)
    class_pixel_ratio: list[float]  # per class: selected / predicted
    histogram: ConfidenceHistogram = field(repr=False)


def _batches(dataset: Dataset, batch_size: int) -> list[list[int]]:
    n = len(dataset)  # type: ignore[arg-type]
    return [list(range(i, min(i + batch_size, n))) for i in range(0, n, batch_size)]


def _stack_images(dataset: Dataset, idx: list[int]) -> torch.Tensor:
    return torch.stack([dataset[i][0] for i in idx])


def generate_pseudo_labels(
    model: nn.Module,
    target: Dataset,
    folder: str | os.PathLike[str],
    *,
    mode: Mode = "global",
    threshold: float = 0.9,
    batch_size: int = 8,
    bins: int = 1000,
    device: str | torch.device = "cpu",
    num_classes: int | None = None,
) -> PseudoLabelResult:
    """Predict the target set with M and write pseudo labels Ŷ_T into ``folder`` (one PNG per item + manifest).

    Streams predictions batch by batch (one pass for ``"global"``, two passes for ``"class_median"``: statistics,
    then labels). The folder is written under a temporary name and renamed when complete; an existing ``folder`` is
    never overwritten (FileExistsError).
    """
    from bdl.checks import check_choice, check_number

    check_choice(mode, "mode", "--mode", ("global", "class_median"))
    check_number(threshold, "threshold", "--threshold", low=0, high=1, low_open=True, high_open=True)
    check_number(batch_size, "batch_size", "--batch-size", low=1, integer=True)
    out = Path(folder)
    if out.exists():
        raise FileExistsError(f"pseudo-label folder {out} already exists; refusing to overwrite it")
    names = list(getattr(target, "names", [str(i) for i in range(len(target))]))  # type: ignore[arg-type]
    c = num_classes if num_classes is not None else int(getattr(model, "num_classes", 0) or 0)
    model = model.to(device)
    hist: ConfidenceHistogram | None = None
    if mode == "class_median":
        for idx in _batches(target, batch_size):
            prob = predict_probabilities(model, _stack_images(target, idx).to(device))
            if hist is None:
                hist = ConfidenceHistogram(c or prob.shape[1], bins)
            hist.update(prob)
    with atomic_directory(out, overwrite=False) as tmp:  # renamed to `out` only when complete
        thresholds: torch.Tensor | None = None
        selected = torch.zeros(0, dtype=torch.int64)
        predicted = torch.zeros(0, dtype=torch.int64)
        stats = hist is None  # global mode: histogram in the labelling pass
        sizes: list[list[int]] = []
        for idx in _batches(target, batch_size):
            prob = predict_probabilities(model, _stack_images(target, idx).to(device))
            k = prob.shape[1]
            if stats:
                if hist is None:
                    hist = ConfidenceHistogram(c or k, bins)
                hist.update(prob)
            if thresholds is None:
                assert hist is not None
                thresholds = class_thresholds(hist, mode=mode, threshold=threshold)
                selected = torch.zeros(k, dtype=torch.int64)
                predicted = torch.zeros(k, dtype=torch.int64)
            labels = select_pseudo_labels(prob, thresholds).cpu()
            pred = prob.argmax(1).cpu()
            predicted += torch.bincount(pred.reshape(-1), minlength=k)
            keep = labels != IGNORE_INDEX
            selected += torch.bincount(labels[keep].long(), minlength=k)
            for j, i in enumerate(idx):
                Image.fromarray(labels[j].numpy()).save(tmp / f"{i:06d}.png")
                sizes.append(list(labels[j].shape))
        assert hist is not None and thresholds is not None
        total = max(int(predicted.sum()), 1)
        result = PseudoLabelResult(
            folder=out,
            mode=mode,
            thresholds=[float(t) for t in thresholds],
            pixel_ratio=float(selected.sum()) / total,
            class_pixel_ratio=[float(s) / max(int(p), 1) for s, p in zip(selected, predicted)],
            histogram=hist,
        )
        manifest = {
            "names": names,
            "sizes": sizes,
            "mode": mode,
            "threshold": threshold,
            "thresholds": result.thresholds,
            "pixel_ratio": result.pixel_ratio,
            "class_pixel_ratio": result.class_pixel_ratio,
            "num_pixels": total,
        }
        (tmp / MANIFEST).write_text(json.dumps(manifest))
        torch.save(hist.counts, tmp / "confidence_histogram.pt")
    return result


class PseudoLabeledTarget(Dataset):
    """The target set with pseudo labels from ``folder``: items (image (3, H, W), Ŷ_T (H, W) int64, 255 = unused).

    Raises PseudoLabelMismatchError if the folder's manifest does not list exactly ``target.names`` (same order) or a
    label's size differs from its image's; FileNotFoundError if the folder or a label file is missing.
    """

    def __init__(self, target: Dataset, folder: str | os.PathLike[str]) -> None:
        self.target, self.folder = target, Path(folder)
        mf = self.folder / MANIFEST
        if not mf.is_file():
            raise FileNotFoundError(f"pseudo-label folder {self.folder} has no {MANIFEST} (not a pseudo-label folder)")
        self.manifest = json.loads(mf.read_text())
        names = list(getattr(target, "names", [str(i) for i in range(len(target))]))  # type: ignore[arg-type]
        saved = self.manifest["names"]
        if len(saved) != len(names):
            raise PseudoLabelMismatchError(
                f"pseudo-label folder {self.folder} holds {len(saved)} labels but the target list has "
                f"{len(names)} items"
            )
        for i, (a, b) in enumerate(zip(saved, names)):
            if a != b:
                raise PseudoLabelMismatchError(
                    f"pseudo-label folder {self.folder} does not match the target list: item {i} is {a!r} in the "
                    f"folder but {b!r} in the target set"
                )
        size = getattr(target, "size", None)
        if size is not None:
            bad = [i for i, s in enumerate(self.manifest.get("sizes", [])) if tuple(s) != tuple(size)]
            if bad:
                raise PseudoLabelMismatchError(
                    f"pseudo-label folder {self.folder}: label {bad[0]:06d}.png is "
                    f"{tuple(self.manifest['sizes'][bad[0]])}"
                    f" but the target images are {tuple(size)}"
                )

    def __len__(self) -> int:
        return len(self.target)  # type: ignore[arg-type]

    def label(self, index: int) -> torch.Tensor:
        path = self.folder / f"{index:06d}.png"  # read on demand: memory does not grow with the target set
        if not path.is_file():
            raise FileNotFoundError(f"pseudo-label file {path} is missing")
        with Image.open(path) as im:
            return torch.from_numpy(np.array(im, dtype=np.uint8)).long()

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image, _ = self.target[index]  # the target's true label is never used for training
        label = self.label(index)
        if tuple(label.shape) != tuple(image.shape[-2:]):
            raise PseudoLabelMismatchError(
                f"pseudo label {self.folder / f'{index:06d}.png'} is {tuple(label.shape)} but its image is "
                f"{tuple(image.shape[-2:])}"
            )
        return image, label


def plot_confidence_curve(hist: ConfidenceHistogram, path: str | os.PathLike[str], *, title: str = "") -> Path:
    """Figure 5.5: selected-pixel ratio vs confidence threshold (left) and its slope (right), as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = np.linspace(0.5, 0.99, 50)
    ratio = hist.ratio_above(t).numpy()
    slope = np.gradient(ratio, t)
    fig, axes = plt.subplots(1, 2, figsize=(8, 3))
    axes[0].plot(t, ratio * 100)
    axes[0].set_xlabel("prediction confidence")
    axes[0].set_ylabel("selected pixels (%)")
    axes[1].plot(t, slope)
    axes[1].set_xlabel("prediction confidence")
    axes[1].set_ylabel("slope")
    for ax in axes:
        ax.axvline(0.9, color="grey", ls="--", lw=0.8)
        ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(p, dpi=80)
    plt.close(fig)
    return p
