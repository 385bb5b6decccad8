"""Training and evaluation of MicroNet classifiers with the released recipe (spec "Training recipe").

SGD momentum 0.9 (not Nesterov), cosine learning-rate decay per iteration (optional linear warm-up), lr 0.2 at
batch 512 scaled linearly with the global batch, weight decay 3e-5 (M3: 4e-5) on all parameters, dropout per model,
no label smoothing, no mixup. ImageNet-style folders use RandomResizedCrop + flip for training and Resize(256/224·s) +
CenterCrop(s) for evaluation. Checkpoints (model, optimizer, scheduler, RNG) are written atomically every epoch by
:class:`dyncore.training.Checkpointer`; a run restarted with the same config resumes exactly. Works under torchrun
(DDP via :func:`dyncore.training.init_distributed`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from dyncore.training import (
    Checkpointer,
    DistEnv,
    JSONLLogger,
    NonFiniteError,
    accuracy,
    all_reduce_mean,
    check_finite,
    check_finite_state,
    progress,
    unwrap,
    wrap_ddp,
)

__all__ = ["TrainConfig", "evaluate", "make_loader", "make_optimizer", "make_scheduler", "recipe_lr", "train"]


def recipe_lr(batch_size: int, base_lr: float = 0.2, base_batch: int = 512) -> float:
    """Linear scaling of the released lr (0.2 at batch 512; 0.1 at 256)."""
    if batch_size <= 0:
        raise ValueError(f"recipe_lr: batch_size must be positive, got {batch_size}")
    return base_lr * batch_size / base_batch


@dataclass
class TrainConfig:
    """Hyper-parameters of one training run (defaults: the released ImageNet recipe, lr scaled to the batch)."""

    epochs: int = 600
    batch_size: int = 512
    lr: float | None = None  # None → recipe_lr(batch_size · world_size)
    momentum: float = 0.9
    weight_decay: float = 3e-5
    warmup_epochs: float = 0.0
    max_steps: int | None = None  # cap on optimisation steps (quick runs)
    num_workers: int = 0
    log_every: int = 20

    def __post_init__(self) -> None:
        if self.epochs <= 0 or self.batch_size <= 0:
            raise ValueError(
                f"TrainConfig: epochs and batch_size must be positive, got {self.epochs}, {self.batch_size}"
            )
        if self.lr is not None and not (math.isfinite(self.lr) and self.lr > 0):
            raise ValueError(f"TrainConfig: lr must be a positive finite number, got {self.lr}")


def make_loader(
    dataset: Dataset[Any],
    *,
    batch_size: int,
    train: bool,
    env: DistEnv | None = None,
    num_workers: int = 0,
    seed: int = 0,
) -> DataLoader[Any]:
    """A DataLoader (DistributedSampler under DDP; shuffling with a seeded generator otherwise)."""
    env = env or DistEnv()
    sampler: DistributedSampler[Any] | None = None
    if env.is_distributed:
        sampler = DistributedSampler(dataset, env.world_size, env.rank, shuffle=train, seed=seed)
    g = torch.Generator().manual_seed(seed)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=train and sampler is None,
        sampler=sampler,
        drop_last=train,
        num_workers=num_workers,
        generator=g,
    )


def make_optimizer(model: nn.Module, cfg: TrainConfig, lr: float) -> torch.optim.SGD:
    """SGD with momentum (not Nesterov), weight decay on all parameters (as released)."""
    return torch.optim.SGD(model.parameters(), lr=lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)


def make_scheduler(
    opt: torch.optim.Optimizer, total_steps: int, warmup_steps: int
) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up then cosine decay to 0, stepped every iteration."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        t = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, t)))

    return torch.optim.lr_scheduler.LambdaLR(opt, factor)


@torch.no_grad()
def evaluate(
    model: nn.Module, loader: DataLoader[Any], *, device: str = "cpu", env: DistEnv | None = None
) -> dict[str, float]:
    """Top-1/top-5 accuracy (percent) and mean cross-entropy over ``loader`` (averaged across DDP ranks)."""
    env = env or DistEnv()
    was = model.training
    model.eval()
    totals = torch.zeros(4, dtype=torch.float64)  # loss sum, top1 sum, top5 sum, count
    for x, y in loader:
        x, y = x.to(device), y.to(device)
        logits = model(x)
        top1, top5 = accuracy(logits, y, topk=(1, min(5, logits.shape[1])))
        n = y.shape[0]
        totals += torch.tensor([F.cross_entropy(logits, y, reduction="sum").item(), top1 * n, top5 * n, n])
    model.train(was)
    if env.is_distributed:
        totals = all_reduce_mean(totals, env) * env.world_size
    n = max(1.0, float(totals[3]))
    return {"loss": float(totals[0]) / n, "top1": float(totals[1]) / n, "top5": float(totals[2]) / n}


def train(
    model: nn.Module,
    train_set: Dataset[Any],
    val_set: Dataset[Any] | None,
    cfg: TrainConfig,
    *,
    device: str = "cpu",
    env: DistEnv | None = None,
    checkpoint_dir: str | Path | None = None,
    run_config: dict[str, Any] | None = None,
    logger: JSONLLogger | None = None,
    seed: int = 0,
    show_progress: bool = True,
    loss_fn: Callable[[Tensor, Tensor], Tensor] = F.cross_entropy,
    checkpoint_extra: dict[str, Any] | None = None,
    lr_flag: str = "lr",
    on_resume_checked: Callable[[], object] | None = None,
) -> dict[str, Any]:
    """Train ``model`` on ``train_set`` with the released recipe; returns final metrics and the loss history.

    Resumes from ``checkpoint_dir/last.pt`` when it exists (same ``run_config`` required, else
    :class:`dyncore.training.ConfigMismatchError`); ``on_resume_checked`` runs once that check passed (e.g. writing
    the run's config). Checkpoints after every epoch, with ``checkpoint_extra`` (e.g. the model spec) stored in each.
    A non-finite loss stops the run before the step is taken (:class:`dyncore.training.NonFiniteError` naming
    ``lr_flag`` and its value): no checkpoint of a diverged model is written.
    """
    env = env or DistEnv()
    model.to(device)
    net = wrap_ddp(model, env) if env.is_distributed else model
    loader = make_loader(
        train_set, batch_size=cfg.batch_size, train=True, env=env, num_workers=cfg.num_workers, seed=seed
    )
    if len(loader) == 0:
        raise ValueError(
            f"train: the training set has {len(train_set)} images, fewer than one batch of {cfg.batch_size}"  # type: ignore[arg-type]
        )
    steps_per_epoch = len(loader)
    total = steps_per_epoch * cfg.epochs if cfg.max_steps is None else min(cfg.max_steps, steps_per_epoch * cfg.epochs)
    lr = cfg.lr if cfg.lr is not None else recipe_lr(cfg.batch_size * env.world_size)
    opt = make_optimizer(net, cfg, lr)
    sched = make_scheduler(opt, total, int(cfg.warmup_epochs * steps_per_epoch))
    ckpt = None
    if checkpoint_dir is not None:
        # a run may be extended (more epochs / steps) or re-run with other loader settings; everything else must match
        extendable = ("train.epochs", "train.max_steps", "train.log_every", "train.num_workers")
        ckpt = Checkpointer(checkpoint_dir, {"train": asdict(cfg), **(run_config or {})}, ignore=extendable, env=env)
    step = 0
    if ckpt is not None:
        resumed = ckpt.resume(model=unwrap(net), optimizer=opt, scheduler=sched)
        if resumed is not None:
            step = int(resumed["step"])
    if on_resume_checked is not None:
        on_resume_checked()
    history: list[float] = []
    net.train()
    epoch = step // steps_per_epoch
    while step < total:
        if isinstance(loader.sampler, DistributedSampler):
            loader.sampler.set_epoch(epoch)
        else:
            assert loader.generator is not None
            loader.generator.manual_seed(seed * 100_003 + epoch)  # an epoch's order depends only on (seed, epoch)
        skip = step - epoch * steps_per_epoch  # resumed mid-epoch: skip the batches already seen
        it = progress(loader, desc=f"epoch {epoch + 1}", disable=not show_progress, leave=False)
        for i, (x, y) in enumerate(it):
            if i < skip:
                continue
            if step >= total:
                break
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            loss = loss_fn(net(x), y)
            check_finite(
                loss.detach(),
                what=f"the training loss at step {step + 1}",
                hint=f"the run diverged; lower {lr_flag} (now {lr:g}) and restart",
            )
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            step += 1
            history.append(float(loss.detach()))
            if logger is not None and env.is_main and (step % cfg.log_every == 0 or step == total):
                logger.log(step=step, epoch=epoch, loss=history[-1], lr=sched.get_last_lr()[0])
        epoch += 1
        if ckpt is not None:
            try:
                check_finite_state(unwrap(net), source=f"the model after step {step}")
            except NonFiniteError as exc:  # e.g. BatchNorm statistics overflowed before the loss did
                raise NonFiniteError(f"{exc}; lower {lr_flag} (now {lr:g}) and restart") from None
            ckpt.save(step, model=unwrap(net), optimizer=opt, scheduler=sched, extra=checkpoint_extra)
    result: dict[str, Any] = {"steps": step, "lr": lr, "loss_history": history}
    if val_set is not None:
        val_loader = make_loader(val_set, batch_size=cfg.batch_size, train=False, env=env)
        result.update(evaluate(unwrap(net), val_loader, device=device, env=env))
        if logger is not None and env.is_main:
            logger.log(step=step, **{k: result[k] for k in ("loss", "top1", "top5")}, split="val")
    return result
