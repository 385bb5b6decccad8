"""Training machinery shared by ``covnorm train`` and the demo.

- Loops: :func:`fit` (the adapter schedule; released: Adam (0.9, 0.99), lr 1e-3, wd 5e-4, ×0.1 every 5 epochs),
  :func:`fit_covnorm` (Algorithm 1, step 4: M alone, then all adapter parameters + head), :func:`evaluate` (top-1 %).
- Data: :class:`TensorBatches` (seeded in-memory minibatches), :func:`load_tasks` (the embedded source and target
  tasks as :class:`TaskData`).
- Networks: :func:`source_network` / :func:`pretrain` (the frozen source backbone), :func:`target_model` (per-task
  residual adapters that start as the source network), :func:`load_trained` (rebuild a ``covnorm train`` checkpoint).
- The whole ``covnorm train`` run, staged and resumable, is :func:`covnorm.pipeline.train_multidomain`.

Every loop restores the caller's train/eval mode, refuses data that yields no batch, and stops with
:class:`dyncore.training.NonFiniteError` on a NaN/inf loss or output instead of carrying on with poisoned weights.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from covnorm.layers import CovNormConv1x1, ResidualAdapter
from covnorm.models import MultiDomainModel, inject, small_vgg, vgg16_sites

__all__ = [
    "ConfigError",
    "CovNormSchedule",
    "ExperimentConfig",
    "FitConfig",
    "TaskData",
    "TensorBatches",
    "evaluate",
    "fit",
    "fit_covnorm",
    "freeze_backbone",
    "load_tasks",
    "load_trained",
    "mini_parameters",
    "pretrain",
    "source_network",
    "step_schedule",
    "target_model",
]


# ----------------------------------------------------------------------------------------------------------------------
# data


class TensorBatches:
    """Re-iterable minibatches over in-memory tensors (images (N, 3, H, W) float, labels (N,)), reshuffled each pass
    from a seeded generator; ``flip=True`` adds random horizontal flips.

    ``min_batch`` drops a final batch smaller than it: training batches use 2, because BatchNorm in training mode
    cannot normalise a single sample per channel at the 1×1 fc6/fc7 sites (a final batch of one image would crash the
    run mid-epoch). A batch size larger than N gives one batch of all N images.
    """

    def __init__(
        self,
        images: Tensor,
        labels: Tensor,
        *,
        batch_size: int = 64,
        shuffle: bool = True,
        seed: int = 0,
        flip: bool = False,
        min_batch: int = 1,
    ) -> None:
        if len(images) != len(labels):
            raise ValueError(f"TensorBatches: {len(images)} images but {len(labels)} labels")
        if batch_size <= 0:
            raise ValueError(f"TensorBatches: batch_size must be positive, got {batch_size}")
        if min_batch < 1 or min_batch > batch_size:
            raise ValueError(f"TensorBatches: min_batch must be in [1, batch_size={batch_size}], got {min_batch}")
        if 0 < len(images) < min_batch:
            raise ValueError(f"TensorBatches: {len(images)} image(s) cannot make a batch of at least {min_batch}")
        self.images, self.labels, self.batch_size = images, labels, batch_size
        self.shuffle, self.flip, self.min_batch = shuffle, flip, min_batch
        self.generator = torch.Generator().manual_seed(seed)

    def __len__(self) -> int:
        full, rest = divmod(len(self.images), self.batch_size)
        return full + (rest >= self.min_batch)

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        n = len(self.images)
        order = torch.randperm(n, generator=self.generator) if self.shuffle else torch.arange(n)
        for i in range(0, n, self.batch_size):
            idx = order[i : i + self.batch_size]
            if len(idx) < self.min_batch:
                break
            x = self.images[idx]
            if self.flip:
                mask = torch.rand(len(idx), generator=self.generator) < 0.5
                x = torch.where(mask[:, None, None, None], x.flip(-1), x)
            yield x, self.labels[idx]


@dataclass
class TaskData:
    """One embedded task: shuffled training batches, an unshuffled pass over the same images for the statistics, and
    the test batches."""

    name: str
    classes: int
    train: TensorBatches
    stats: TensorBatches
    test: TensorBatches


def _task_data(name: str, limit: int, test_limit: int, *, batch_size: int, seed: int) -> TaskData:
    from dyncore.data import multidomain_task, normalise

    tr = multidomain_task(name, "train", seed=seed)
    te = multidomain_task(name, "test", seed=seed)
    x, y = normalise(tr.images[:limit]), tr.labels[:limit].long()
    xt, yt = normalise(te.images[:test_limit]), te.labels[:test_limit].long()
    if len(x) < 2:
        raise ValueError(f"task {name!r}: {len(x)} training image(s) (limit {limit}); training needs at least 2")
    return TaskData(
        name,
        len(tr.classes),
        TensorBatches(x, y, batch_size=batch_size, seed=seed, min_batch=2),
        TensorBatches(x, y, batch_size=256, shuffle=False),
        TensorBatches(xt, yt, batch_size=256, shuffle=False),
    )


# ----------------------------------------------------------------------------------------------------------------------
# configuration


class ConfigError(ValueError):
    """An unusable :class:`ExperimentConfig` field; ``field`` names it (the CLI shows the matching flag)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field} {message}")
        self.field, self.message = field, message


def _positive_int(value: object, name: str, minimum: int = 1) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(name, f"must be an integer >= {minimum}, got {value!r}")


def _positive_float(value: object, name: str, *, zero: bool = False) -> None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or value < 0 or (value == 0 and not zero):  # type: ignore[operator]
        raise ConfigError(name, f"must be a finite number {'>=' if zero else '>'} 0, got {value!r}")


@dataclass
class ExperimentConfig:
    """Data, backbone and schedules of the miniature experiments (defaults: the demo's full settings).

    ``tasks=None`` takes every embedded target task. Limits cap the images per task (a prefix of each split).
    ``widths``/``hidden`` shape the VGG-like backbone (:func:`covnorm.models.small_vgg`). The adapter (RA) stage
    trains ``epochs`` at ``lr``; CovNorm's step 4 trains M for ``covnorm_mini_epochs`` then everything
    task-specific for ``covnorm_all_epochs``, both at ``covnorm_lr``; every stage decays ×0.1 once, at its end.
    """

    tasks: tuple[str, ...] | None = None
    source_limit: int = 3000
    train_limit: int = 1000
    test_limit: int = 1000
    widths: tuple[tuple[int, ...], ...] = ((16,), (32,), (64, 64))
    hidden: int = 128
    batch_size: int = 64
    pretrain_epochs: int = 4
    pretrain_lr: float = 2e-3
    epochs: int = 3
    lr: float = 1e-3
    weight_decay: float = 5e-4
    covnorm_mini_epochs: int = 1
    covnorm_all_epochs: int = 2
    covnorm_lr: float = 3e-4
    threshold: float = 0.99
    seed: int = 0

    #: the ``--quick`` settings
    QUICK: ClassVar[dict[str, int]] = {
        "source_limit": 512,
        "train_limit": 128,
        "test_limit": 160,
        "pretrain_epochs": 2,
        "epochs": 1,
        "covnorm_mini_epochs": 1,
        "covnorm_all_epochs": 1,
    }

    @classmethod
    def quick(cls, **overrides: Any) -> Any:
        """Tiny settings for a fast smoke run (``--quick``)."""
        return cls(**{**cls.QUICK, **overrides})

    def validate(self) -> None:
        """Raise :class:`ConfigError` naming the first unusable field (a negative limit, zero epochs, a NaN lr...)."""
        if self.tasks is not None:
            if not self.tasks:
                raise ConfigError("tasks", "must name at least one task (None takes every target task)")
            dup = sorted({t for t in self.tasks if self.tasks.count(t) > 1})
            if dup:
                raise ConfigError("tasks", f"must name each task once, got {dup} more than once")
            from dyncore.data import multidomain_tasks

            unknown = [t for t in self.tasks if t not in multidomain_tasks()]
            if unknown:
                raise ConfigError("tasks", f"must be among {list(multidomain_tasks())}, got unknown {unknown}")
        for name in ("source_limit", "train_limit"):
            _positive_int(getattr(self, name), name, 2)
        for name in ("test_limit", "hidden", "batch_size", "pretrain_epochs", "epochs"):
            _positive_int(getattr(self, name), name)
        for name in ("covnorm_mini_epochs", "covnorm_all_epochs"):
            _positive_int(getattr(self, name), name, 0)
        for name in ("pretrain_lr", "lr", "covnorm_lr"):
            _positive_float(getattr(self, name), name)
        _positive_float(self.weight_decay, "weight_decay", zero=True)
        if not isinstance(self.threshold, (int, float)) or not 0.0 < self.threshold <= 1.0:
            raise ConfigError("threshold", f"must be in (0, 1], got {self.threshold!r}")


def step_schedule(epochs: int, lr: float, weight_decay: float = 5e-4) -> FitConfig:
    """One stage's schedule: ``epochs`` at ``lr``, decayed ×0.1 once after the last epoch (i.e. a constant lr)."""
    return FitConfig(epochs=epochs, lr=lr, weight_decay=weight_decay, decay_every=max(epochs, 1), gamma=0.1)


# ----------------------------------------------------------------------------------------------------------------------
# loops


@dataclass
class FitConfig:
    """Adam (β = (0.9, 0.99)) with step decay ×``gamma`` every ``decay_every`` epochs (released schedule: lr 1e-3,
    wd 5e-4, batch 16, 40 epochs, ×0.1 every 5)."""

    epochs: int = 40
    lr: float = 1e-3
    weight_decay: float = 5e-4
    decay_every: int = 5
    gamma: float = 0.1


@contextmanager
def _keep_modes(model: nn.Module) -> Iterator[None]:
    """Restore every sub-module's train/eval flag on exit (MultiDomainModel keeps frozen BNs in eval inside train
    mode, so one ``model.train(flag)`` would not reproduce the caller's state exactly)."""
    modes = [(m, m.training) for m in model.modules()]
    try:
        yield
    finally:
        for m, mode in modes:
            m.training = mode


def fit(
    model: nn.Module,
    data: Iterable[tuple[Tensor, Tensor]],
    params: Sequence[nn.Parameter],
    config: FitConfig,
    *,
    hint: str = "",
) -> list[float]:
    """Minimise cross-entropy over ``params`` only (everything else stays as is). Returns the mean loss per epoch.

    The model trains in train mode and is left in the mode it was in. A NaN/inf loss raises
    :class:`dyncore.training.NonFiniteError` (before the step that would spread it to the weights) with ``hint``
    appended, e.g. ``"lower --lr (now 1e+06)"``; data that yields no batch raises ValueError.
    """
    from dyncore.training import check_finite

    params = list(params)
    for p in params:
        p.requires_grad_(True)
    if not params:
        raise ValueError("fit: no parameters to train")
    if isinstance(config.epochs, bool) or not isinstance(config.epochs, int) or config.epochs < 0:
        raise ValueError(f"fit: epochs must be a non-negative integer, got {config.epochs!r}")
    opt = torch.optim.Adam(params, lr=config.lr, betas=(0.9, 0.99), weight_decay=config.weight_decay)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=max(1, config.decay_every), gamma=config.gamma)
    device = next(model.parameters()).device
    losses = []
    step = 0
    with _keep_modes(model):
        model.train()
        for epoch in range(config.epochs):
            total, count = 0.0, 0
            for x, y in data:
                x, y = x.to(device), y.to(device)
                loss = F.cross_entropy(model(x), y)
                value = float(loss.detach())
                check_finite(value, what=f"loss at step {step} (epoch {epoch + 1} of {config.epochs})", hint=hint)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                total += value * len(y)
                count += len(y)
                step += 1
            if count == 0:
                raise ValueError("fit: the data yielded no batch (empty data set, or fewer images than one batch)")
            sched.step()
            losses.append(total / count)
    _check_weights(model, params, f"after {step} training step(s)", hint)
    return losses


def _check_weights(model: nn.Module, params: Sequence[nn.Parameter], when: str, hint: str) -> None:
    """NonFiniteError naming the first NaN/inf parameter of ``params`` (one sync per tensor, once per fit)."""
    from dyncore.training import NonFiniteError

    bad = [p for p in params if not bool(torch.isfinite(p.detach()).all())]
    if bad:
        names = {id(p): n for n, p in model.named_parameters()}
        raise NonFiniteError(
            f"training diverged: {names.get(id(bad[0]), 'a parameter')!r} holds NaN/inf {when}"
            + (f"; {hint}" if hint else "")
        )


@torch.no_grad()
def evaluate(model: nn.Module, data: Iterable[tuple[Tensor, Tensor]], *, hint: str = "") -> float:
    """Top-1 accuracy in percent, computed in eval mode; the model is left in the mode it was in.

    Non-finite outputs raise :class:`dyncore.training.NonFiniteError` with ``hint`` appended (an argmax over NaN
    logits would score the frequency of class 0, not the model); data with no sample raises ValueError.
    """
    from dyncore.training import NonFiniteError

    device = next(model.parameters()).device
    correct = total = 0
    with _keep_modes(model):
        model.eval()
        for x, y in data:
            logits = model(x.to(device))
            if not bool(torch.isfinite(logits).all()):
                raise NonFiniteError(
                    "evaluate: the model's outputs hold NaN/inf (diverged weights or non-finite inputs)"
                    + (f"; {hint}" if hint else "")
                )
            pred = logits.argmax(1).cpu()
            correct += int((pred == y).sum())
            total += len(y)
    if total == 0:
        raise ValueError("evaluate: the data yielded no sample")
    return 100.0 * correct / total


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
    model: MultiDomainModel,
    data: Iterable[tuple[Tensor, Tensor]],
    schedule: CovNormSchedule,
    *,
    shared: bool = False,
    hint: str = "",
) -> list[float]:
    """Fine-tune M alone, then every task-specific parameter of the active domain (shared factors excluded)."""
    losses = fit(model, data, mini_parameters(model), schedule.mini, hint=hint) if schedule.mini.epochs else []
    if schedule.all.epochs:
        params = (
            [p for p in model.domain_parameters() if not _is_shared(model, p)] if shared else model.domain_parameters()
        )
        losses += fit(model, data, params, schedule.all, hint=hint)
    return losses


def _is_shared(model: MultiDomainModel, p: nn.Parameter) -> bool:
    for m in model.modules():
        if isinstance(m, CovNormConv1x1) and getattr(m, "shared", False) and (p is m.whitening or p is m.colouring):
            return True
    return False


# ----------------------------------------------------------------------------------------------------------------------
# networks


def load_tasks(cfg: ExperimentConfig, log: Callable[[str], None] = print) -> tuple[TaskData, list[TaskData]]:
    """The embedded source task and ``cfg.tasks`` (default: every target task), limited and batched per ``cfg``."""
    from dyncore.data import SOURCE_TASK, multidomain_tasks

    t0 = time.time()
    source = _task_data(SOURCE_TASK, cfg.source_limit, cfg.test_limit, batch_size=cfg.batch_size, seed=cfg.seed)
    names = cfg.tasks or multidomain_tasks()
    targets = [_task_data(n, cfg.train_limit, cfg.test_limit, batch_size=cfg.batch_size, seed=cfg.seed) for n in names]
    n_src = len(source.train.images)
    log(f"data: source {SOURCE_TASK} ({n_src} train), targets {list(names)} ({time.time() - t0:.1f} s)")
    return source, targets


def source_network(cfg: ExperimentConfig, source: TaskData) -> MultiDomainModel:
    """The untrained source network: VGG-like convs, each followed by the source domain's BN (its B2)."""
    net = small_vgg(widths=cfg.widths, hidden=cfg.hidden, num_classes=source.classes)
    inject(net, where=vgg16_sites, domains=[source.name], kind="bn", freeze=False)
    return MultiDomainModel(net, {source.name: source.classes})


def pretrain(cfg: ExperimentConfig, source: TaskData, *, hint: str = "") -> MultiDomainModel:
    """Train :func:`source_network` on the source task (``pretrain_epochs`` at ``pretrain_lr``), then freeze it."""
    model = source_network(cfg, source)
    schedule = step_schedule(cfg.pretrain_epochs, cfg.pretrain_lr, cfg.weight_decay)
    fit(model, source.train, list(model.parameters()), schedule, hint=hint)
    return freeze_backbone(model)


def freeze_backbone(model: MultiDomainModel) -> MultiDomainModel:
    """Freeze the shared backbone (adapters and heads keep their flags); returns the model."""
    for p in model.backbone.parameters():
        p.requires_grad_(False)
    return model


def target_model(pre: MultiDomainModel, source: str, tasks: Sequence[TaskData], kind: str) -> MultiDomainModel:
    """A copy of the frozen source backbone with fresh per-task adapters of ``kind`` whose B1/B2 start as the source
    BN (so every task starts from the source network) and fresh heads."""
    backbone = copy.deepcopy(pre.backbone)
    for _name, module in backbone.named_modules():
        inserted = getattr(module, "inserted", None)
        if isinstance(inserted, ResidualAdapter):
            src = inserted.branch(source).b2.state_dict()
            adapter = ResidualAdapter(inserted.channels, [t.name for t in tasks], kind=kind)  # type: ignore[arg-type]
            for d in adapter.domains:
                branch = adapter.branch(d)
                branch.b2.load_state_dict(src)
                if branch.b1 is not None:
                    branch.b1.load_state_dict(src)
            module.inserted = adapter
    for p in backbone.parameters():
        p.requires_grad_(False)
    return MultiDomainModel(backbone, {t.name: t.classes for t in tasks}, feature_dim=pre.feature_dim)


_TRAINED_KEYS = ("model", "layout", "tasks", "classes", "widths", "hidden")


def load_trained(path: str | Path) -> tuple[MultiDomainModel, dict[str, Any]]:
    """Rebuild the multi-domain model of a ``checkpoints/model.pt`` written by ``covnorm train``; returns it (eval
    mode) and the checkpoint dict. Raises CheckpointError for a file that is not such a checkpoint and
    NonFiniteError for one whose weights hold NaN/inf (a diverged run)."""
    from covnorm.transform import apply_layout
    from dyncore.training import CheckpointError, check_finite_state, load_checkpoint, load_state_dict_strict

    ck = load_checkpoint(path)
    missing = [k for k in _TRAINED_KEYS if k not in ck]
    if missing:
        raise CheckpointError(f"{path} lacks {missing} (not a model.pt written by `covnorm train`)")
    check_finite_state(ck["model"], source=str(path))
    net = small_vgg(widths=tuple(tuple(w) for w in ck["widths"]), hidden=ck["hidden"], num_classes=1)
    inject(net, where=vgg16_sites, domains=ck["tasks"])
    model = MultiDomainModel(net, ck["classes"])
    apply_layout(model, ck["layout"])
    # the source classifier of the checkpoint may have another size: take the stored tensors' shapes
    state = ck["model"]
    model.backbone.classifier = nn.Linear(*reversed(state["backbone.classifier.weight"].shape))
    load_state_dict_strict(model, state)
    return model.eval(), ck
