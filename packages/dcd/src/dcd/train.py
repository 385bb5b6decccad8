"""Training recipe of Sec. 3.5.1 (as data) and a small, device-agnostic train / evaluate loop.

ImageNet recipes (spec): MobileNetV2 ×1.0 — SGD 0.9, lr 0.1 cosine per iteration, wd 2e-5, label smoothing 0.1,
dropout 0.2, mixup 0.2 with α ramped from 0 over the first 100 epochs, 300 epochs, batch 512; ×0.5/×0.35 — lr 0.05,
dropout 0.1; ResNet — lr 0.1 ÷10 every 30 epochs, 100 epochs, batch 256, wd 1e-4. DY-Conv's temperature is annealed
30 → 1 over the first ``temperature_epochs``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, replace
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dcd.layers import dyconv_temperature, set_temperature
from dyncore.training import check_finite

__all__ = [
    "Recipe",
    "evaluate",
    "make_optimizer",
    "make_scheduler",
    "mixup_alpha",
    "recipe_for",
    "tensor_batches",
    "train_one_epoch",
]


@dataclass(frozen=True)
class Recipe:
    """Optimisation settings. ``schedule`` "cosine" (per iteration, to 0) or "step" (× ``gamma`` every
    ``step_epochs``); ``mixup`` is the final Beta(α, α) parameter, ramped linearly from 0 over ``mixup_ramp_epochs``."""

    epochs: int = 300
    batch_size: int = 256
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 2e-5
    schedule: str = "cosine"
    step_epochs: int = 30
    gamma: float = 0.1
    warmup_epochs: float = 0.0
    label_smoothing: float = 0.0
    mixup: float = 0.0
    mixup_ramp_epochs: float = 100.0
    dropout: float = 0.1
    temperature_epochs: float = 10.0

    def __post_init__(self) -> None:
        if self.schedule not in ("cosine", "step"):
            raise ValueError(f"Recipe.schedule must be 'cosine' or 'step', got {self.schedule!r}")
        if self.epochs <= 0 or self.batch_size <= 0 or not self.lr > 0:
            raise ValueError(f"Recipe: epochs, batch_size and lr must be positive, got {self.epochs}, "
                             f"{self.batch_size}, {self.lr}")  # fmt: skip
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ValueError(f"Recipe.label_smoothing must be in [0, 1), got {self.label_smoothing}")
        if self.mixup < 0:
            raise ValueError(f"Recipe.mixup must be >= 0, got {self.mixup}")

    def with_(self, **changes: Any) -> Recipe:
        return replace(self, **changes)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def recipe_for(model_name: str) -> Recipe:
    """The thesis/released ImageNet recipe for a registered model name (``dcd_mobilenetv2_100``, ``dcd_resnet50``…)."""
    if "mobilenetv2_100" in model_name:
        return Recipe(epochs=300, batch_size=512, lr=0.1, weight_decay=2e-5, label_smoothing=0.1, mixup=0.2,
                      dropout=0.2)  # fmt: skip
    if "mobilenetv2" in model_name:
        return Recipe(epochs=300, batch_size=256, lr=0.05, weight_decay=2e-5, dropout=0.1)
    if "resnet50" in model_name:
        return Recipe(epochs=120, batch_size=256, lr=0.1, weight_decay=1e-4, schedule="step", label_smoothing=0.1,
                      mixup=0.2, dropout=0.1)  # fmt: skip
    return Recipe(epochs=100, batch_size=256, lr=0.1, weight_decay=1e-4, schedule="step", dropout=0.0)


def mixup_alpha(epoch: float, recipe: Recipe) -> float:
    """α at (fractional) ``epoch``: ramps linearly from 0 to ``recipe.mixup`` over ``mixup_ramp_epochs``."""
    if recipe.mixup <= 0:
        return 0.0
    if recipe.mixup_ramp_epochs <= 0:
        return recipe.mixup
    return recipe.mixup * min(max(epoch / recipe.mixup_ramp_epochs, 0.0), 1.0)


def make_optimizer(model: nn.Module, recipe: Recipe) -> torch.optim.Optimizer:
    """SGD with momentum; weight decay on weights only (not on BN parameters or biases)."""
    decay: list[nn.Parameter] = []
    no_decay: list[nn.Parameter] = []
    for p in model.parameters():
        if p.requires_grad:
            (no_decay if p.dim() <= 1 else decay).append(p)
    groups = [{"params": decay, "weight_decay": recipe.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.SGD(groups, lr=recipe.lr, momentum=recipe.momentum, nesterov=False)


def make_scheduler(
    optimizer: torch.optim.Optimizer, recipe: Recipe, steps_per_epoch: int
) -> torch.optim.lr_scheduler.LambdaLR:
    """Per-iteration multiplier: linear warm-up, then cosine to 0 or step decay."""
    total = max(1, recipe.epochs * steps_per_epoch)
    warm = int(recipe.warmup_epochs * steps_per_epoch)

    def factor(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        if recipe.schedule == "cosine":
            return 0.5 * (1.0 + math.cos(math.pi * min(step - warm, total - warm) / max(1, total - warm)))
        return recipe.gamma ** ((step // steps_per_epoch) // recipe.step_epochs)

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def tensor_batches(
    x: Tensor, y: Tensor, batch_size: int, *, shuffle: bool = False, generator: torch.Generator | None = None
) -> Iterator[tuple[Tensor, Tensor]]:
    """Mini-batches of in-memory tensors (drop_last when shuffling, as in training)."""
    n = x.shape[0]
    order = torch.randperm(n, generator=generator) if shuffle else torch.arange(n)
    stop = n - n % batch_size if shuffle and n >= batch_size else n
    for i in range(0, stop, batch_size):
        idx = order[i : i + batch_size]
        yield x[idx], y[idx]


def _loss(logits: Tensor, y: Tensor, smoothing: float) -> Tensor:
    return F.cross_entropy(logits, y, label_smoothing=smoothing)


def train_one_epoch(
    model: nn.Module,
    batches: Iterable[tuple[Tensor, Tensor]],
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None,
    recipe: Recipe,
    *,
    epoch: int,
    steps_per_epoch: int,
    device: str | torch.device = "cpu",
    generator: torch.Generator | None = None,
) -> dict[str, float]:
    """One epoch; returns mean loss and training top-1 (on the un-mixed labels). Anneals DY-Conv's τ per step."""
    model.train()
    total_loss, correct, seen = 0.0, 0, 0
    for i, (x, y) in enumerate(batches):
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        progress = epoch + i / max(1, steps_per_epoch)
        set_temperature(model, dyconv_temperature(progress, anneal_epochs=recipe.temperature_epochs))
        alpha = mixup_alpha(progress, recipe)
        if alpha > 0:
            lam = float(torch.distributions.Beta(alpha, alpha).sample())
            perm = torch.randperm(x.shape[0], generator=generator).to(x.device)
            logits = model(lam * x + (1 - lam) * x[perm])
            loss = lam * _loss(logits, y, recipe.label_smoothing) + (1 - lam) * _loss(
                logits, y[perm], recipe.label_smoothing
            )
        else:
            logits = model(x)
            loss = _loss(logits, y, recipe.label_smoothing)
        lr = optimizer.param_groups[0]["lr"]
        check_finite(loss.detach(), what=f"loss at epoch {epoch + 1} step {i + 1}",
                     hint=f"lower --lr (now {lr:g}) or check the data and --img-size")  # fmt: skip
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
        total_loss += loss.item() * x.shape[0]
        correct += int((logits.argmax(1) == y).sum())
        seen += x.shape[0]
    if not seen:
        raise ValueError("train_one_epoch: no batch")
    return {"loss": total_loss / seen, "top1": 100.0 * correct / seen}


@torch.no_grad()
def evaluate(
    model: nn.Module, batches: Iterable[tuple[Tensor, Tensor]], *, device: str | torch.device = "cpu"
) -> dict[str, float]:
    """Mean cross-entropy and top-1 (%) over ``batches`` in eval mode."""
    was_training = model.training
    model.eval()
    total_loss, correct, seen = 0.0, 0, 0
    for x, y in batches:
        x, y = x.to(device), y.to(device)
        logits = model(x)
        total_loss += F.cross_entropy(logits, y, reduction="sum").item()
        correct += int((logits.argmax(1) == y).sum())
        seen += x.shape[0]
    model.train(was_training)
    if not seen:
        raise ValueError("evaluate: no batch")
    return {"loss": total_loss / seen, "top1": 100.0 * correct / seen}
