"""Learning (thesis Section 6.3.4, Eq. 6.6): L = L_ce(source) + λ·L_d(source, target) for every alignment loss of
Table 6.2, self-training (DRT+ST), evaluation of F1, F2 and the ensemble, checkpoint selection on held-out SOURCE data,
and seed aggregation (mean ± std).

Methods (``TrainConfig.method``; each is one module of :mod:`drt.methods`, looked up in its registry):

* ``source_only`` — CE on the pooled sources (both heads).
* ``dann``        — CE + λ·DANN (gradient reversal + domain discriminator).
* ``adda``        — source-only pre-training, then the target encoder is trained against a discriminator (GAN loss,
  inverted labels) with the source encoder and the heads frozen.
* ``mcd``         — the released one-pass MCD with gradient reversal (:class:`drt.losses.MCDLoss`).
* ``mcd3``        — classic three-step MCD (A: source CE; B: heads maximise the discrepancy; C: features minimise it
  ``num_k`` times).
* ``m3sda``       — M³SDA-β (Peng et al. 2019): a pair of classifiers per source domain
  (``DomainAdaptationNet(..., num_sources=N)``), each trained on its own source; CE + λ·moment matching between
  source domains and the target, then the MCD schedule per pair (B: pairs maximise their target discrepancy; C: the
  features minimise it ``num_k`` times). Needs source domain labels.

Sources are pooled without domain labels (multi-source = single-source for DRT); ``m3sda`` alone reads them.
With ``out_dir`` a run writes ``checkpoints/last.pt`` after every evaluation and resumes from it bit-exactly.

Collapse detection: the selected model is checked for the failure that adversarial alignment runs into — features
that no longer carry the class (source held-out accuracy near chance) or target predictions that collapse onto one
class (a class predicted for most target images, or a prediction histogram whose entropy is far below log C). A
collapse is logged as a loud warning and reported in ``TrainResult.collapse`` (:class:`CollapseCheck`).
"""

from __future__ import annotations

import copy
import dataclasses
import math
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args

import torch
from torch import Tensor
from torch.utils.data import ConcatDataset, DataLoader, Dataset, Subset

from drt.losses import DomainLabelsRequiredError, MCDConfig
from drt.methods import Learner
from drt.models import DomainAdaptationNet
from dyncore.io import atomic_write_text
from dyncore.training import (
    Checkpointer,
    DistEnv,
    InfiniteLoader,
    JSONLLogger,
    accuracy,
    all_reduce_mean,
    check_finite,
    get_logger,
    seed_everything,
    unwrap,
)

__all__ = [
    "METHODS",
    "RESUME_IGNORED",
    "SELECTION",
    "CollapseCheck",
    "DATask",
    "DomainMismatchError",
    "PseudoLabelled",
    "TrainConfig",
    "TrainResult",
    "check_domains",
    "collapse_report",
    "digits5_task",
    "domainnet_task",
    "evaluate",
    "mean_std",
    "pseudo_labels",
    "train",
    "train_with_self_training",
]

Method = Literal["source_only", "dann", "adda", "mcd", "mcd3", "m3sda"]
METHODS: tuple[str, ...] = get_args(Method)
Selection = Literal["source", "target", "last"]
SELECTION: tuple[str, ...] = get_args(Selection)
log = get_logger("drt")


class DomainMismatchError(ValueError):
    """Source/target domains that cannot form an adaptation task (target among the sources, class counts differ)."""


@dataclass
class TrainConfig:
    """One training run (Digit-Five defaults scaled to a CPU budget; spec: SGD lr 0.002, momentum 0.9, wd 5e-4).

    Attributes:
        method: one of :data:`METHODS`.
        steps: optimisation steps; each step reads ``batch_size`` source + ``batch_size`` target images.
        lr, momentum, weight_decay: SGD; ``new_lr_mult`` multiplies the lr of the dynamic-residual parameters,
            the heads and the discriminator (spec DomainNet: ×10 on an ImageNet-pretrained backbone).
        lr_milestones: steps at which the lr is multiplied by 0.1.
        trade_off: λ of Eq. 6.6 for ``dann``/``m3sda`` (MCD's weights are in ``mcd``); for ``m3sda`` it weighs the
            moment matching, whose scale follows the features' (λ = 1 collapsed the tiny test CNN, 0.01 did not).
        mcd: the released MCD values (GRL 4.0, η 50, γ 0.01, label smoothing 0.01).
        num_k: feature-extractor updates per step in ``mcd3``.
        align_warmup: fraction of ``steps`` over which the alignment weight (λ, or MCD's η) ramps up from 0 with the
            DANN schedule 2/(1 + exp(−10·p)) − 1 (0 = constant weight, the spec setting).
        adda_pretrain: fraction of ``steps`` spent on source-only pre-training in ``adda``.
        eval_every: evaluate (and select) every this many steps (and at the end); with an ``out_dir`` also the
            resume checkpoint interval.
        select_on: ``"source"`` (held-out source data, default), ``"last"``, or ``"target"`` — selection on the
            target test set, an explicit opt-in that is logged as a warning and recorded in the result.
        self_training: ``st_threshold`` (confidence, spec 0.8) and ``st_steps`` for :func:`train_with_self_training`.
        seed: seeds python/numpy/torch and the loaders.
        device: "cpu" or "cuda".
    """

    method: Method = "mcd"
    steps: int = 1000
    batch_size: int = 64
    lr: float = 0.002
    momentum: float = 0.9
    weight_decay: float = 5e-4
    new_lr_mult: float = 1.0
    lr_milestones: tuple[int, ...] = ()
    trade_off: float = 1.0
    mcd: MCDConfig = field(default_factory=MCDConfig)
    num_k: int = 4
    align_warmup: float = 0.0
    adda_pretrain: float = 0.5
    eval_every: int = 200
    select_on: Selection = "source"
    st_threshold: float = 0.8
    st_steps: int = 500
    seed: int = 0
    device: str = "cpu"
    eval_batch_size: int = 256
    num_workers: int = 0

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"TrainConfig.method must be one of {METHODS}, got {self.method!r}")
        if self.select_on not in SELECTION:
            raise ValueError(f"TrainConfig.select_on must be one of {SELECTION}, got {self.select_on!r}")
        if self.steps < 1 or self.batch_size < 2 or self.eval_every < 1:
            raise ValueError(
                f"TrainConfig: steps >= 1, batch_size >= 2 and eval_every >= 1 required, got steps={self.steps}, "
                f"batch_size={self.batch_size}, eval_every={self.eval_every}"
            )
        if self.trade_off < 0 or self.num_k < 1:
            raise ValueError(
                f"TrainConfig: trade_off >= 0 and num_k >= 1 required, got trade_off={self.trade_off}, "
                f"num_k={self.num_k}"
            )
        if not 0.0 < self.st_threshold < 1.0:
            raise ValueError(f"TrainConfig.st_threshold must lie in (0, 1), got {self.st_threshold}")
        if not 0.0 <= self.align_warmup <= 1.0:
            raise ValueError(f"TrainConfig.align_warmup must lie in [0, 1], got {self.align_warmup}")
        if not 0.0 <= self.adda_pretrain < 1.0:
            raise ValueError(f"TrainConfig.adda_pretrain must lie in [0, 1), got {self.adda_pretrain}")
        if isinstance(self.mcd, Mapping):
            self.mcd = MCDConfig(**self.mcd)
        self.lr_milestones = tuple(self.lr_milestones)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["lr_milestones"] = list(self.lr_milestones)
        return d


@dataclass
class TrainResult:
    """Outcome of :func:`train`: the selected step, its source-val and target-test accuracies (F1, F2, ensemble),
    the selection rule, the per-evaluation history, the wall time (of this call) and the step a resumed run
    continued from (``None`` for a fresh run)."""

    best_step: int
    source_val: dict[str, float]
    target_test: dict[str, float]
    select_on: str
    history: list[dict[str, Any]]
    seconds: float
    pseudo_labels: int | None = None
    resumed_at: int | None = None
    collapse: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class CollapseCheck:
    """When the selected model counts as collapsed (any one rule suffices).

    Attributes:
        max_class_fraction: one class predicted for more than this fraction of the target images.
        min_entropy_ratio: the entropy of the target prediction histogram below this fraction of log C (uniform
            predictions have ratio 1; all images in one class 0).
        min_source_chance_ratio: the source held-out ensemble accuracy below this multiple of chance (100 / C %):
            the features no longer carry the class.
    """

    max_class_fraction: float = 0.5
    min_entropy_ratio: float = 0.5
    min_source_chance_ratio: float = 2.0


def collapse_report(
    target_counts: Sequence[int] | Tensor, source_accuracy: float, *, check: CollapseCheck | None = None
) -> dict[str, Any]:
    """Collapse diagnostics from the target prediction histogram (``target_counts[c]`` = number of target images
    predicted as class c, (C,)) and the source held-out ensemble accuracy (%).

    Returns ``{"collapsed", "reasons", "top_class", "top_class_fraction", "entropy", "entropy_ratio",
    "source_val_ensemble", "chance"}``: ``reasons`` lists the rules of ``check`` that fired (empty when none did).
    No target label is read: the histogram holds predictions only."""
    check = check or CollapseCheck()
    counts = torch.as_tensor(target_counts, dtype=torch.float64).flatten()
    n_classes, total = counts.numel(), float(counts.sum())
    if n_classes < 2 or total <= 0:
        raise ValueError(f"collapse_report: need >= 2 classes and >= 1 prediction, got counts {counts.tolist()}")
    p = counts / total
    entropy = float(-(p[p > 0] * p[p > 0].log()).sum())
    ratio = entropy / math.log(n_classes)
    top = int(p.argmax())
    chance = 100.0 / n_classes
    reasons = []
    if float(p[top]) > check.max_class_fraction:
        reasons.append(f"class {top} is predicted for {100 * float(p[top]):.1f} % of the target images")
    if ratio < check.min_entropy_ratio:
        reasons.append(f"target prediction entropy {entropy:.3f} is {ratio:.2f} × log C = {math.log(n_classes):.3f}")
    if source_accuracy < check.min_source_chance_ratio * chance:
        reasons.append(f"source held-out accuracy {source_accuracy:.2f} % is near chance ({chance:.2f} %)")
    return {
        "collapsed": bool(reasons),
        "reasons": reasons,
        "top_class": top,
        "top_class_fraction": float(p[top]),
        "entropy": entropy,
        "entropy_ratio": ratio,
        "source_val_ensemble": float(source_accuracy),
        "chance": chance,
    }


# ----------------------------------------------------------------------------------------------------------------------
# Data checks


def _num_classes(ds: Dataset[Any]) -> int | None:
    n = getattr(ds, "num_classes", None)
    if isinstance(n, int):
        return n
    classes = getattr(ds, "classes", None)
    return len(classes) if classes is not None else None


def check_domains(sources: Mapping[str, Dataset[Any]], target: tuple[str, Dataset[Any]] | str) -> int:
    """Validate a (multi-)source → target task; returns the shared number of classes.

    Raises:
        DomainMismatchError: no sources, the target domain is also a source, or the domains' class counts differ.
    """
    if not sources:
        raise DomainMismatchError("sources: at least one source domain is needed")
    target_name, target_ds = (target, None) if isinstance(target, str) else target
    if target_name in sources:
        raise DomainMismatchError(
            f"target domain {target_name!r} is also a source domain (sources: {sorted(sources)}); leave it out"
        )
    counts = {name: _num_classes(ds) for name, ds in sources.items()}
    if target_ds is not None:
        counts[target_name] = _num_classes(target_ds)
    known = {k: v for k, v in counts.items() if v is not None}
    if len(set(known.values())) > 1:
        raise DomainMismatchError(f"domains have different numbers of classes: {known}; they must share a label space")
    if not known:
        raise DomainMismatchError("cannot tell the number of classes: datasets need .classes or .num_classes")
    return next(iter(known.values()))


class PseudoLabelled(Dataset[tuple[Any, int]]):
    """Target samples with pseudo labels: ``dataset[indices[i]][0]`` paired with ``labels[i]`` (and ``domain`` when
    the source set yields domain ids, so it can be concatenated with it)."""

    def __init__(self, dataset: Dataset[Any], indices: Sequence[int], labels: Sequence[int], domain: int | None = None):
        if len(indices) != len(labels):
            raise ValueError(f"PseudoLabelled: {len(indices)} indices but {len(labels)} labels")
        self.dataset, self.indices, self.labels, self.domain = dataset, list(indices), list(labels), domain

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> tuple[Any, ...]:
        x = self.dataset[self.indices[i]][0]
        return (x, self.labels[i]) if self.domain is None else (x, self.labels[i], self.domain)


@dataclass
class DATask:
    """A (multi-)source → target adaptation task: pooled labelled sources (train part), held-out source data for
    checkpoint selection, the unlabelled target train split and the target test split."""

    sources: Dataset[Any]
    source_val: Dataset[Any]
    target: Dataset[Any]
    target_test: Dataset[Any]
    source_names: tuple[str, ...]
    target_name: str
    num_classes: int


def _hold_out(pooled: Dataset[Any], fraction: float, seed: int) -> tuple[Subset[Any], Subset[Any]]:
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"val_fraction must lie in (0, 1), got {fraction}")
    n = len(pooled)  # type: ignore[arg-type]
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()
    n_val = max(1, round(fraction * n))
    return Subset(pooled, perm[n_val:]), Subset(pooled, perm[:n_val])


def _make_task(
    sources: Mapping[str, Dataset[Any]],
    target: tuple[str, Dataset[Any], Dataset[Any]],
    *,
    val_fraction: float,
    seed: int,
    with_domain: bool,
) -> DATask:
    from dyncore.data import MultiSourceDataset

    name, target_train, target_test = target
    n_classes = check_domains(sources, (name, target_train))
    pooled = MultiSourceDataset(dict(sources), with_domain=with_domain)
    train_part, val_part = _hold_out(pooled, val_fraction, seed)
    return DATask(train_part, val_part, target_train, target_test, tuple(sources), name, n_classes)


def digits5_task(
    target: str,
    *,
    sources: Sequence[str] | None = None,
    seed: int = 0,
    limit: int | None = None,
    val_fraction: float = 0.1,
    with_domain: bool = False,
    root: str | Path | None = None,
) -> DATask:
    """A Digits-5 task: ``sources`` (default: leave-one-domain-out, the other four; one name = single-source) → target.

    10 % of the pooled source train images (``val_fraction``) are held out for checkpoint selection; the target's
    labels are only read from its test split, for evaluation. ``limit`` caps images per split (tests).
    """
    from dyncore.data import DIGITS5_DOMAINS, digits5, leave_one_out

    if target not in DIGITS5_DOMAINS:
        raise DomainMismatchError(f"unknown Digits-5 target domain {target!r}; choose one of {DIGITS5_DOMAINS}")
    names = tuple(sources) if sources is not None else leave_one_out(target)[0]
    if target in names:
        raise DomainMismatchError(f"target domain {target!r} is also a source domain (sources: {list(names)})")
    src = {d: digits5(d, "train", seed=0, limit=limit, root=root) for d in names}
    tgt = (target, digits5(target, "train", limit=limit, root=root), digits5(target, "test", limit=limit, root=root))
    return _make_task(src, tgt, val_fraction=val_fraction, seed=seed, with_domain=with_domain)


def domainnet_task(
    root: str | Path,
    target: str,
    *,
    sources: Sequence[str] | None = None,
    train_transform: Callable[[Any], Any] | None = None,
    test_transform: Callable[[Any], Any] | None = None,
    seed: int = 0,
    val_fraction: float = 0.05,
    with_domain: bool = False,
) -> DATask:
    """A DomainNet task from the user's lists (``root/<domain>_{train,test}.txt``); default leave-one-domain-out."""
    from dyncore.data import DOMAINNET_DOMAINS, domainnet

    if target not in DOMAINNET_DOMAINS:
        raise DomainMismatchError(f"unknown DomainNet target domain {target!r}; choose one of {DOMAINNET_DOMAINS}")
    names = tuple(sources) if sources is not None else tuple(d for d in DOMAINNET_DOMAINS if d != target)
    if target in names:
        raise DomainMismatchError(f"target domain {target!r} is also a source domain (sources: {list(names)})")
    src = {d: domainnet(root, d, "train", transform=train_transform) for d in names}
    tgt = (
        target,
        domainnet(root, target, "train", transform=train_transform),
        domainnet(root, target, "test", transform=test_transform),
    )
    return _make_task(src, tgt, val_fraction=val_fraction, seed=seed, with_domain=with_domain)


# ----------------------------------------------------------------------------------------------------------------------
# Evaluation


@torch.no_grad()
def evaluate(
    model: DomainAdaptationNet, dataset: Dataset[Any], *, batch_size: int = 256, device: str | torch.device = "cpu"
) -> dict[str, float]:
    """Top-1 accuracy (%) of F1, F2 (each head) and the ensemble (per sample the head with the larger max logit).

    For an M³SDA-β model (``num_sources`` set) F1 / F2 are the weighted mixtures of the first / second classifier of
    every per-source pair (:class:`drt.models.SourceClassifiers`); the ensemble rule is the same."""
    return _evaluate(model, dataset, batch_size=batch_size, device=device)[0]


@torch.no_grad()
def _evaluate(
    model: DomainAdaptationNet, dataset: Dataset[Any], *, batch_size: int, device: str | torch.device
) -> tuple[dict[str, float], Tensor]:
    """:func:`evaluate` and the histogram of the ensemble's predicted classes, (C,) int64."""
    net = unwrap(model)
    was_training = net.training
    net.eval()
    correct: dict[str, float] = {}
    counts = torch.zeros(net.num_classes, dtype=torch.int64)
    total = 0
    for batch in DataLoader(dataset, batch_size=batch_size, shuffle=False):
        x, y = batch[0].to(device), batch[1].to(device)
        for name, logits in net.predict(x).items():
            correct[name] = correct.get(name, 0.0) + accuracy(logits, y)[0] * len(y) / 100.0
            if name == "ensemble":
                counts += torch.bincount(logits.argmax(1).cpu(), minlength=net.num_classes)
        total += len(y)
    net.train(was_training)
    if total == 0:
        raise ValueError("evaluate: empty dataset")
    return {k: 100.0 * v / total for k, v in correct.items()}, counts


@torch.no_grad()
def pseudo_labels(
    model: DomainAdaptationNet,
    dataset: Dataset[Any],
    *,
    threshold: float = 0.8,
    batch_size: int = 256,
    device: str | torch.device = "cpu",
) -> tuple[list[int], list[int]]:
    """Indices and ensemble labels of the target samples whose softmax confidence exceeds ``threshold`` (spec 0.8)."""
    net = unwrap(model)
    was_training = net.training
    net.eval()
    indices: list[int] = []
    labels: list[int] = []
    offset = 0
    for batch in DataLoader(dataset, batch_size=batch_size, shuffle=False):
        conf, pred = net(batch[0].to(device)).softmax(dim=1).max(dim=1)
        keep = torch.nonzero(conf > threshold).flatten()
        indices += (keep + offset).tolist()
        labels += pred[keep].tolist()
        offset += len(batch[0])
    net.train(was_training)
    return indices, labels


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value)."""
    if not values:
        raise ValueError("mean_std: no values")
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


# ----------------------------------------------------------------------------------------------------------------------
# The learning loop


def _split_batch(batch: Sequence[Any], device: torch.device) -> tuple[Tensor, Tensor, Tensor | None]:
    x, y = batch[0].to(device), torch.as_tensor(batch[1]).to(device)
    d = torch.as_tensor(batch[2]).to(device) if len(batch) > 2 else None
    return x, y, d


def _loader(ds: Dataset[Any], cfg: TrainConfig, seed: int, env: DistEnv | None, what: str) -> InfiniteLoader:
    g = torch.Generator().manual_seed(seed)
    sampler: Any = None
    if env is not None and env.is_distributed:
        from torch.utils.data.distributed import DistributedSampler

        sampler = DistributedSampler(ds, num_replicas=env.world_size, rank=env.rank, seed=seed, drop_last=True)
    loader = DataLoader(
        ds,
        batch_size=cfg.batch_size,
        shuffle=sampler is None,
        sampler=sampler,
        drop_last=True,
        generator=g,
        num_workers=cfg.num_workers,
    )
    if len(loader) == 0:
        n = len(sampler) if sampler is not None else len(ds)  # type: ignore[arg-type]
        per_process = "" if sampler is None else " per process"
        raise ValueError(
            f"batch_size={cfg.batch_size} (CLI --batch-size) exceeds the {n} images of the {what}{per_process}: no "
            "full batch can be drawn; lower --batch-size (or use more data, e.g. a larger --limit)"
        )
    return InfiniteLoader(loader)


def _check_image_size(model: DomainAdaptationNet, dataset: Dataset[Any], what: str) -> None:
    """Reject images the backbone cannot take (smaller than its stride, or not the digit CNN's fixed size) before
    the first step, naming the split."""
    x = dataset[0][0]
    if not isinstance(x, Tensor) or x.dim() != 3:
        return  # not an image tensor: the backbone's own checks apply
    try:
        unwrap(model).check_image_size((int(x.shape[-2]), int(x.shape[-1])))
    except ValueError as e:
        raise ValueError(f"{what}: {e}") from None


def _check_m3sda(model: DomainAdaptationNet, sources: Dataset[Any]) -> None:
    sample = sources[0]
    if not isinstance(sample, (tuple, list)) or len(sample) < 3:
        raise DomainLabelsRequiredError(
            "method 'm3sda' (M³SDA-β) needs source domain labels: build the sources with "
            "MultiSourceDataset(..., with_domain=True)"
        )
    net = unwrap(model)
    if net.num_sources is None or len(net.heads) != 2:
        raise ValueError(
            "method 'm3sda' (M³SDA-β) needs a pair of classifiers per source domain: build the model with "
            "DomainAdaptationNet(..., num_sources=len(task.source_names)) (and the default num_heads=2)"
        )


def _resume_config(cfg: TrainConfig, run_config: Mapping[str, Any] | None, env: DistEnv | None) -> dict[str, Any]:
    """What a checkpoint must agree with to be resumed: the TrainConfig, the world size and the caller's run
    settings (model/data, under ``run``)."""
    out = {**cfg.to_dict(), "world_size": 1 if env is None else env.world_size}
    if run_config:
        out["run"] = dict(run_config)
    return out


#: TrainConfig keys that may differ between a checkpoint and its resumption (where it runs, not what it computes).
RESUME_IGNORED = ("device", "num_workers")


def _resume(
    ckpt: Checkpointer, model: DomainAdaptationNet, learner: Learner, src: InfiniteLoader, tgt: InfiniteLoader
) -> tuple[int, list[dict[str, Any]], tuple[float, int, dict[str, Tensor]] | None] | None:
    """Restore a run from ``last.pt`` (model, optimisers, learner, loaders, RNG); returns (step, history, best)
    or ``None`` when there is nothing to resume."""
    resumed = ckpt.resume(model=model, optimizer=learner.opt_g)
    if resumed is None:
        return None
    extra = resumed["extra"]
    learner.load_state_dict(extra["learner"])
    src.load_state_dict(extra["loaders"]["source"])
    tgt.load_state_dict(extra["loaders"]["target"])
    best = None
    if extra["best"] is not None:
        sel = extra["best"]  # its state is None when the selected step is the checkpoint's own step
        state = sel["state"] if sel["state"] is not None else unwrap(model).state_dict()
        best = (float(sel["score"]), int(sel["step"]), copy.deepcopy(state))
    step = int(resumed["step"])
    log.info("resuming from %s at step %d of %d", resumed["path"], step, learner.cfg.steps)
    return step, [dict(h) for h in extra["history"]], best


def _mean_over_processes(values: list[float], env: DistEnv | None, device: torch.device) -> list[float]:
    """The mean of each value over the processes of a distributed run (the values themselves otherwise)."""
    if env is None or not env.is_distributed:
        return values
    return all_reduce_mean(torch.tensor(values, dtype=torch.float64, device=device), env).tolist()  # type: ignore[no-any-return]


def train(
    model: DomainAdaptationNet,
    sources: Dataset[Any],
    target: Dataset[Any],
    *,
    source_val: Dataset[Any],
    target_test: Dataset[Any],
    config: TrainConfig,
    out_dir: str | Path | None = None,
    env: DistEnv | None = None,
    callback: Callable[[int, dict[str, float]], None] | None = None,
    run_config: Mapping[str, Any] | None = None,
    on_start: Callable[[int], None] | None = None,
    collapse_check: CollapseCheck | None = None,
) -> TrainResult:
    """Train ``model`` on labelled ``sources`` (pooled; (x, y) or (x, y, domain)) and unlabelled ``target`` (its
    labels are never read), select a checkpoint, and report F1/F2/ensemble accuracy.

    Selection: every ``eval_every`` steps the model is evaluated on ``source_val`` (held-out source data, default) —
    or on ``target_test`` when ``select_on="target"`` (an explicit opt-in, logged as a warning: it reports an
    optimistic, oracle-selected number) — and the best state is kept (``out_dir/checkpoints/best.pt`` when
    ``out_dir`` is given; metrics in ``out_dir/metrics.jsonl``). The returned ``target_test`` accuracies are those of
    the selected state.

    Exact resume (``out_dir`` given): after every evaluation (every ``eval_every`` steps and at the end)
    ``out_dir/checkpoints/last.pt`` is written by :class:`dyncore.training.Checkpointer` with the model, every
    optimiser, the discriminator(s) and ADDA's frozen source encoder, both loaders' positions, the selection so far
    (best score/step/state) and history, and every RNG. When ``last.pt`` exists on entry the run continues from it
    and ends bit-identical to an uninterrupted run (a finished run is only re-evaluated). The checkpoint must match
    ``config`` (except :data:`RESUME_IGNORED`), the world size and ``run_config`` (model/data settings the caller
    wants checked, e.g. the CLI's target domain and backbone), else
    :class:`dyncore.training.ConfigMismatchError` names the differing keys.

    ``callback(step, stats)`` runs after every optimisation step (0-based ``step``), before that step's evaluation.
    ``on_start(step)`` runs once the resume check has passed, before the first step (``step`` = where training
    continues, 0 for a fresh run): the CLI writes ``config.json`` there, so a refused resume leaves it alone.

    ``out_dir/metrics.jsonl`` holds one line per evaluation (``step`` = optimisation steps done) and a final
    ``selected`` line at ``step = config.steps``; a resumed run first drops the lines logged after its checkpoint
    (an evaluation written just before a kill, the previous final line), so steps stay increasing and unique.

    Raises:
        dyncore.training.NonFiniteError: a non-finite training loss (naming the step and the learning rate).
        ValueError: a batch size larger than a split, or images the backbone cannot take (naming the split).
    """
    cfg = config
    t0 = time.perf_counter()
    seed_everything(cfg.seed)
    device = torch.device(cfg.device)
    if cfg.select_on == "target":
        log.warning(
            "SELECTING CHECKPOINTS ON THE TARGET TEST SET (select_on='target'): an oracle choice that uses target "
            "labels; the reported accuracy is optimistic and not comparable to source-selected results"
        )
    if cfg.method == "m3sda":
        _check_m3sda(model, sources)
    for ds_, what in ((sources, "source train split"), (target, "target train split")):
        _check_image_size(model, ds_, what)
    model.to(device)
    learner = Learner(model, cfg, env)
    src = _loader(sources, cfg, cfg.seed, env, "source train split")
    tgt = _loader(target, cfg, cfg.seed + 1, env, "target train split")
    logger: JSONLLogger | None = None
    ckpt: Checkpointer | None = None
    is_main = env is None or env.is_main
    if out_dir is not None:
        logger = JSONLLogger(Path(out_dir) / "metrics.jsonl", enabled=is_main)
        ckpt = Checkpointer(
            Path(out_dir) / "checkpoints", _resume_config(cfg, run_config, env), ignore=RESUME_IGNORED, env=env
        )
    history: list[dict[str, Any]] = []
    best: tuple[float, int, dict[str, Tensor]] | None = None  # (score, step, state) selected so far
    start = 0
    resumed = _resume(ckpt, model, learner, src, tgt) if ckpt is not None else None
    if resumed is not None:
        start, history, best = resumed
    if logger is not None and is_main:
        _truncate_log(logger.path, start)
    if on_start is not None:
        on_start(start)
    model.train()
    for step in range(start, cfg.steps):
        xs, ys, ds = _split_batch(next(src), device)
        xt, _, _ = _split_batch(next(tgt), device)
        learner.set_lr(step)
        stats = learner.step(step, xs, ys, ds, xt)
        for name, value in stats.items():
            check_finite(
                value,
                what=f"train: the {cfg.method} loss term {name!r} at step {step}",
                hint=f"the run diverged: lower the learning rate (lr={cfg.lr:g}, CLI --lr) or check the inputs",
            )
        if callback is not None:
            callback(step, stats)
        done = step + 1
        if done % cfg.eval_every and done != cfg.steps:
            continue
        learner.sync_buffers()
        stats = dict(zip(stats, _mean_over_processes(list(stats.values()), env, device)))  # same on every rank
        val = evaluate(model, source_val, batch_size=cfg.eval_batch_size, device=device)
        record: dict[str, Any] = {"step": done, **{f"train/{k}": v for k, v in stats.items()}}
        record.update({f"source_val/{k}": v for k, v in val.items()})
        if cfg.select_on == "target":
            tst = evaluate(model, target_test, batch_size=cfg.eval_batch_size, device=device)
            record.update({f"target_test/{k}": v for k, v in tst.items()})
            score = tst["ensemble"]
        else:
            score = val["ensemble"] if cfg.select_on == "source" else float(done)
        (score,) = _mean_over_processes([score], env, device)  # one selection decision on every rank
        history.append(record)
        if logger is not None:
            logger.log(**record)
        if best is None or score >= best[0]:
            best = (score, done, copy.deepcopy(unwrap(model).state_dict()))
            if ckpt is not None:
                ckpt.save(done, model=model, extra={"selected_on": cfg.select_on, "score": score}, name="best.pt")
        if ckpt is not None:
            selection = {"score": best[0], "step": best[1], "state": None if best[1] == done else best[2]}
            extra = {
                "learner": learner.state_dict(),
                "loaders": {"source": src.state_dict(), "target": tgt.state_dict()},
                "history": history,
                "best": selection,
            }
            ckpt.save(done, model=model, optimizer=learner.opt_g, extra=extra)
    assert best is not None
    unwrap(model).load_state_dict(best[2])
    val = evaluate(model, source_val, batch_size=cfg.eval_batch_size, device=device)
    tst, counts = _evaluate(model, target_test, batch_size=cfg.eval_batch_size, device=device)
    collapse = collapse_report(counts, val["ensemble"], check=collapse_check)
    if collapse["collapsed"]:
        log.warning(
            "COLLAPSE: the selected model (step %d, method %s) has collapsed — %s. Its target accuracy (%.2f %%) is "
            "not a result: lower the alignment weights (MCD --eta/--grl-coeff, --trade-off) or the --lr",
            best[1],
            cfg.method,
            "; ".join(collapse["reasons"]),
            tst["ensemble"],
        )
    if logger is not None:
        logger.log(
            step=cfg.steps,
            selected=True,
            selected_step=best[1],
            select_on=cfg.select_on,
            collapsed=collapse["collapsed"],
            **{f"final/{k}": v for k, v in tst.items()},
        )
    seconds = time.perf_counter() - t0
    return TrainResult(
        best[1], val, tst, cfg.select_on, history, seconds, resumed_at=start if resumed else None, collapse=collapse
    )


def _truncate_log(path: Path, step: int) -> None:
    """Keep the evaluation lines of ``path`` up to ``step`` (where a resumed run continues; 0: none) and drop the
    rest — lines of evaluations after the last checkpoint and the final ``selected`` line — so a resumed run's
    log has increasing, unique steps."""
    if not path.exists():
        return
    import json

    records = JSONLLogger.read(path)
    kept = [r for r in records if int(r.get("step", 0)) <= step and not r.get("selected")]
    if len(kept) != len(records):
        atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in kept))


def train_with_self_training(
    model: DomainAdaptationNet,
    sources: Dataset[Any],
    target: Dataset[Any],
    *,
    source_val: Dataset[Any],
    target_test: Dataset[Any],
    config: TrainConfig,
    out_dir: str | Path | None = None,
    env: DistEnv | None = None,
    run_config: Mapping[str, Any] | None = None,
    on_start: Callable[[int], None] | None = None,
) -> tuple[TrainResult, TrainResult]:
    """DRT+ST: train, pseudo-label the target samples with confidence > ``config.st_threshold`` (0.8), then train
    again (``config.st_steps`` steps, same method) with the source samples plus the pseudo-labelled target samples.
    Returns (first-stage result, self-training result).

    With ``out_dir`` both stages resume (:func:`train`): the first stage from ``out_dir/checkpoints/last.pt`` (a
    finished first stage is only re-evaluated, so the pseudo labels come out the same), the second from
    ``out_dir/self_training/checkpoints/last.pt``."""
    first = train(
        model,
        sources,
        target,
        source_val=source_val,
        target_test=target_test,
        config=config,
        out_dir=out_dir,
        env=env,
        run_config=run_config,
        on_start=on_start,
    )
    idx, labels = pseudo_labels(model, target, threshold=config.st_threshold, device=config.device)
    log.info("self-training: %d of %d target samples above confidence %.2f", len(idx), len(target), config.st_threshold)  # type: ignore[arg-type]
    if len(idx) < config.batch_size:
        log.warning("self-training: only %d pseudo labels (< batch size); keeping the first-stage model", len(idx))
        return first, TrainResult(**{**first.to_dict(), "pseudo_labels": len(idx)})
    sample = sources[0]
    domain = -1 if isinstance(sample, (tuple, list)) and len(sample) > 2 else None
    augmented: ConcatDataset[Any] = ConcatDataset([sources, PseudoLabelled(target, idx, labels, domain)])
    st_cfg = dataclasses.replace(config, steps=config.st_steps, eval_every=min(config.eval_every, config.st_steps))
    second = train(
        model,
        augmented,
        target,
        source_val=source_val,
        target_test=target_test,
        config=st_cfg,
        out_dir=None if out_dir is None else Path(out_dir) / "self_training",
        env=env,
        run_config=run_config,
    )
    second.pseudo_labels = len(idx)
    return first, second
