"""Fine-tuning loops: the adapter schedule (released: Adam (0.9, 0.99), lr 1e-3, wd 5e-4, ×0.1 every 5 epochs) and the
CovNorm step-4 schedule (M alone, then all adapter parameters + head)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from covnorm.layers import CovNormConv1x1
from covnorm.models import MultiDomainModel

__all__ = ["CovNormSchedule", "FitConfig", "TensorBatches", "evaluate", "fit", "fit_covnorm", "mini_parameters"]


class TensorBatches:
    """Re-iterable minibatches over in-memory tensors (images (N, 3, H, W) float, labels (N,)), reshuffled each pass
    from a seeded generator; ``flip=True`` adds random horizontal flips."""

    def __init__(
        self,
        images: Tensor,
        labels: Tensor,
        *,
        batch_size: int = 64,
        shuffle: bool = True,
        seed: int = 0,
        flip: bool = False,
    ) -> None:
        if len(images) != len(labels):
            raise ValueError(f"TensorBatches: {len(images)} images but {len(labels)} labels")
        if batch_size <= 0:
            raise ValueError(f"TensorBatches: batch_size must be positive, got {batch_size}")
        self.images, self.labels, self.batch_size = images, labels, batch_size
        self.shuffle, self.flip = shuffle, flip
        self.generator = torch.Generator().manual_seed(seed)

    def __len__(self) -> int:
        return (len(self.images) + self.batch_size - 1) // self.batch_size

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        n = len(self.images)
        order = torch.randperm(n, generator=self.generator) if self.shuffle else torch.arange(n)
        for i in range(0, n, self.batch_size):
            idx = order[i : i + self.batch_size]
            x = self.images[idx]
            if self.flip:
                mask = torch.rand(len(idx), generator=self.generator) < 0.5
                x = torch.where(mask[:, None, None, None], x.flip(-1), x)
            yield x, self.labels[idx]


@dataclass
class FitConfig:
    """Adam (β = (0.9, 0.99)) with step decay ×``gamma`` every ``decay_every`` epochs (released schedule: lr 1e-3,
    wd 5e-4, batch 16, 40 epochs, ×0.1 every 5)."""

    epochs: int = 40
    lr: float = 1e-3
    weight_decay: float = 5e-4
    decay_every: int = 5
    gamma: float = 0.1


def fit(
    model: nn.Module, data: Iterable[tuple[Tensor, Tensor]], params: Sequence[nn.Parameter], config: FitConfig
) -> list[float]:
    """Minimise cross-entropy over ``params`` only (everything else stays as is). Returns the mean loss per epoch."""
    params = list(params)
    for p in params:
        p.requires_grad_(True)
    if not params:
        raise ValueError("fit: no parameters to train")
    opt = torch.optim.Adam(params, lr=config.lr, betas=(0.9, 0.99), weight_decay=config.weight_decay)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=max(1, config.decay_every), gamma=config.gamma)
    device = next(model.parameters()).device
    losses = []
    model.train()
    for _ in range(config.epochs):
        total, count = 0.0, 0
        for x, y in data:
            x, y = x.to(device), y.to(device)
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += float(loss.detach()) * len(y)
            count += len(y)
        sched.step()
        losses.append(total / max(count, 1))
    model.eval()
    return losses


@torch.no_grad()
def evaluate(model: nn.Module, data: Iterable[tuple[Tensor, Tensor]]) -> float:
    """Top-1 accuracy in percent (eval mode)."""
    model.eval()
    device = next(model.parameters()).device
    correct = total = 0
    for x, y in data:
        pred = model(x.to(device)).argmax(1).cpu()
        correct += int((pred == y).sum())
        total += len(y)
    return 100.0 * correct / max(total, 1)


def mini_parameters(model: MultiDomainModel, domain: str | None = None) -> list[nn.Parameter]:
    """The mini-adaptation matrices M (and the bias) of ``domain``'s CovNorm sites."""
    params: list[nn.Parameter] = []
    domain = domain or model.domain
    if domain is None:
        raise ValueError("mini_parameters: no domain given and none active")
    for sw in model.switches():
        if domain in sw.branches:
            for m in sw.branches[domain].modules():
                if isinstance(m, CovNormConv1x1):
                    params += [m.mini, m.bias]
    if not params:
        raise ValueError(f"mini_parameters: domain {domain!r} has no CovNorm site (apply_covnorm first)")
    return params


@dataclass
class CovNormSchedule:
    """Step 4 of Algorithm 1 (released: M alone for 5 epochs at lr 1e-4, then all adapter parameters + head).

    ``all_epochs = 0`` keeps W̃, C̃ fixed (and is forced in joint mode, where they are shared)."""

    mini: FitConfig
    all: FitConfig


def fit_covnorm(
    model: MultiDomainModel, data: Iterable[tuple[Tensor, Tensor]], schedule: CovNormSchedule, *, shared: bool = False
) -> list[float]:
    """Fine-tune M alone, then every task-specific parameter of the active domain (shared factors excluded)."""
    losses = fit(model, data, mini_parameters(model), schedule.mini) if schedule.mini.epochs else []
    if schedule.all.epochs:
        params = (
            [p for p in model.domain_parameters() if not _is_shared(model, p)] if shared else model.domain_parameters()
        )
        losses += fit(model, data, params, schedule.all)
    return losses


def _is_shared(model: MultiDomainModel, p: nn.Parameter) -> bool:
    for m in model.modules():
        if isinstance(m, CovNormConv1x1) and getattr(m, "shared", False) and (p is m.whitening or p is m.colouring):
            return True
    return False
