"""The ``covnorm train`` run: staged, checkpointed after every stage, resumable bit-identically.

:func:`train_multidomain` runs Algorithm 1 over the embedded tasks with the building blocks of
:mod:`covnorm.train`: pretrain the source network (or load ``--pretrained``), fine-tune residual adapters per task
(RA), then CovNorm per task (independent or joint) — and writes ``checkpoints/model.pt`` (rebuilt by
:func:`covnorm.train.load_trained`), ``metrics.jsonl`` and ``result.json`` into a :class:`dyncore.cli.RunDir`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

from torch import Tensor

from covnorm.models import MultiDomainModel
from covnorm.stats import DEFAULT_THRESHOLD, Moments, SiteStatistics
from covnorm.train import (
    ConfigError,
    CovNormSchedule,
    ExperimentConfig,
    TaskData,
    evaluate,
    fit,
    fit_covnorm,
    freeze_backbone,
    load_tasks,
    pretrain,
    source_network,
    step_schedule,
    target_model,
)

__all__ = ["TrainConfig", "train_multidomain"]

Mode = Literal["independent", "joint", "ra"]


@dataclass
class TrainConfig(ExperimentConfig):
    """:class:`ExperimentConfig` plus the CovNorm choices of ``covnorm train``.

    ``mode``: CovNorm per task (``independent``), one shared PCA per site (``joint``, Eq. 2.10) or stop after the
    residual adapters (``ra``). ``rule``/``init``: :func:`covnorm.transform.apply_covnorm`'s. ``absorb``: fold M after
    fine-tuning (independent mode). ``pretrained``: a ``source.pt`` of an earlier run instead of pretraining.
    """

    mode: Mode = "independent"
    rule: Literal["thesis", "released"] = "thesis"
    init: Literal["exact", "random", "identity"] = "exact"
    absorb: bool = True
    pretrained: str | None = None

    def validate(self) -> None:
        super().validate()
        for name, allowed in (
            ("mode", ("independent", "joint", "ra")),
            ("rule", tuple(DEFAULT_THRESHOLD)),
            ("init", ("exact", "random", "identity")),
        ):
            if getattr(self, name) not in allowed:
                raise ConfigError(name, f"must be one of {allowed}, got {getattr(self, name)!r}")


def _stats_state(stats: dict[str, SiteStatistics]) -> dict[str, dict[str, Any]]:
    return {site: {"x": st.x.state_dict(), "y": st.y.state_dict()} for site, st in stats.items()}


def _stats_from_state(state: dict[str, dict[str, Any]]) -> dict[str, SiteStatistics]:
    return {site: SiteStatistics(Moments(**s["x"]), Moments(**s["y"])) for site, s in state.items()}


class _StagedRun:
    """The state of one ``covnorm train`` run between stages; see :func:`train_multidomain`.

    Stages, in order: ``("pretrain", None)``, ``("ra", task)`` per task, then ``(mode, task)`` per task unless
    mode is ``ra``. After stage i the run is checkpointed with step = i + 1 (stages done).
    """

    def __init__(self, cfg: TrainConfig, out: str | Path, log: Callable[[str], None], flag: Callable[[str], str]):
        from dyncore.cli import RunDir, UsageError
        from dyncore.training import Checkpointer

        self.cfg, self.log, self.flag = cfg, log, flag
        self.config = asdict(cfg)
        self.run = RunDir(out)
        self.ckpt = Checkpointer(self.run.checkpoints, self.config)
        self.saved = self.ckpt.load() if self.ckpt.exists() else None
        if self.saved is not None:
            diffs = _resume_differences(self.saved["config"], self.ckpt.config)
            if diffs:
                raise UsageError(
                    f"{self.ckpt.path()} belongs to a run with another config ({'; '.join(diffs)}); rerun with the "
                    "same flags to resume it, or use another --out"
                )
        self.pre: MultiDomainModel | None = None
        self.model: MultiDomainModel | None = None
        self.stats: dict[str, dict[str, SiteStatistics]] = {}
        self.done = self.records = 0
        self.pretrained: dict[str, Tensor] | None = None

    def start(self) -> None:
        """Load the data; restore the saved state, or check ``cfg.pretrained``; only then write ``config.json``."""
        from dyncore.training import seed_everything

        seed_everything(self.cfg.seed)
        self.source, self.tasks = load_tasks(self.cfg, self.log)
        self.by_name = {t.name: t for t in self.tasks}
        self.stages: list[tuple[str, str | None]] = [("pretrain", None), *(("ra", t.name) for t in self.tasks)]
        if self.cfg.mode != "ra":
            self.stages += [(self.cfg.mode, t.name) for t in self.tasks]
        if self.saved is not None:
            self._restore(self.saved)
        elif self.cfg.pretrained is not None:
            self.pretrained = _load_source(self.cfg, Path(self.cfg.pretrained), self.flag("pretrained"))
        self.run.write_config(self.config)
        if self.saved is None:  # a fresh run: what an earlier, unfinished attempt wrote is stale
            self.run.metrics_path.unlink(missing_ok=True)
            self.run.result_path.unlink(missing_ok=True)
        self.result = self.run.read_result()

    def _restore(self, saved: dict[str, Any]) -> None:
        """Rebuild the structure, then restore weights, statistics, every RNG and batch order exactly."""
        from covnorm.transform import apply_layout
        from dyncore.io import atomic_write_text
        from dyncore.training import JSONLLogger, load_state_dict_strict

        extra = saved["extra"]
        self.pre = source_network(self.cfg, self.source)
        load_state_dict_strict(self.pre, extra["source"])
        freeze_backbone(self.pre)
        self.model = target_model(self.pre, self.source.name, self.tasks, "residual")
        apply_layout(self.model, extra["layout"])
        self.ckpt.resume(model=self.model)  # strict load + the global RNGs
        for name, state in extra["generators"].items():
            (self.source if name == self.source.name else self.by_name[name]).train.generator.set_state(state)
        self.stats = {name: _stats_from_state(s) for name, s in extra["stats"].items()}
        self.done, self.records = int(saved["step"]), int(extra["records"])
        if self.run.metrics_path.exists():  # drop the lines of a stage cut short before its checkpoint
            kept = [r for r in JSONLLogger.read(self.run.metrics_path) if int(r["step"]) < self.records]
            atomic_write_text(self.run.metrics_path, "".join(_json_line(r) for r in kept))
        kind = self.stages[self.done - 1][0]
        self.log(f"resuming {self.run.path} after stage {self.done} of {len(self.stages)} ({kind})")

    def hint(self, *names: str) -> str:
        """ "lower --lr (now 1e+06)": what to change when a stage trained with these learning rates diverges."""
        shown = [f"{self.flag(n)} (now {getattr(self.cfg, n):g})" for n in names]
        return "lower " + " or ".join(shown)

    def log_record(self, **fields_: Any) -> None:
        self.run.metrics.log(step=self.records, **fields_)
        self.records += 1

    def checkpoint(self, stages_done: int) -> None:
        from covnorm.transform import layout

        assert self.pre is not None and self.model is not None
        extra = {
            "source": self.pre.state_dict(),
            "layout": layout(self.model),
            "stats": {name: _stats_state(s) for name, s in self.stats.items()},
            "generators": {t.name: t.train.generator.get_state() for t in (self.source, *self.tasks)},
            "records": self.records,
            "stages": [list(s) for s in self.stages],
        }
        self.ckpt.save(stages_done, model=self.model, extra=extra)

    def pretrain_stage(self) -> None:
        from dyncore.training import check_finite_state, load_state_dict_strict, save_checkpoint

        cfg = self.cfg
        if self.pretrained is not None:
            self.pre = source_network(cfg, self.source)
            load_state_dict_strict(self.pre, self.pretrained)
            freeze_backbone(self.pre)
        else:
            self.pre = pretrain(cfg, self.source, hint=self.hint("pretrain_lr"))
            check_finite_state(self.pre, source="the pretrained source network")
            save_checkpoint(
                self.run.checkpoints / "source.pt",
                {"model": self.pre.state_dict(), "widths": [list(w) for w in cfg.widths], "hidden": cfg.hidden},
            )
        self.model = target_model(self.pre, self.source.name, self.tasks, "residual")

    def ra_stage(self, task: TaskData) -> None:
        from covnorm.transform import collect_statistics

        model, cfg = self.model, self.cfg
        assert model is not None
        model.set_domain(task.name)
        schedule = step_schedule(cfg.epochs, cfg.lr, cfg.weight_decay)
        fit(model, task.train, model.domain_parameters(), schedule, hint=self.hint("lr", "pretrain_lr"))
        acc = evaluate(model, task.test, hint=self.hint("lr", "pretrain_lr"))
        self.log_record(task=task.name, stage="ra", accuracy=acc)
        self.log(f"{task.name}: RA {acc:.2f} %")
        if cfg.mode != "ra":
            self.stats[task.name] = collect_statistics(model, task.stats, domain=task.name)
        self.result = self.run.update_result(ra={**self.result.get("ra", {}), task.name: acc})

    def covnorm_stage(self, task: TaskData, *, first: bool) -> None:
        from covnorm.accounting import task_parameters
        from covnorm.transform import absorb, apply_covnorm, apply_joint_covnorm

        model, cfg = self.model, self.cfg
        assert model is not None
        joint = cfg.mode == "joint"
        options = {"threshold": cfg.threshold, "rule": cfg.rule, "init": cfg.init}
        if joint and first:  # one PCA per site from every task (Eq. 2.10), before the first task's fine-tuning
            self.log(str(apply_joint_covnorm(model, self.stats, **options)))  # type: ignore[arg-type]
            self.stats = {}
        if not joint:
            self.log(str(apply_covnorm(model, self.stats.pop(task.name), domain=task.name, **options)))  # type: ignore[arg-type]
        model.set_domain(task.name)
        schedule = CovNormSchedule(
            step_schedule(cfg.covnorm_mini_epochs, cfg.covnorm_lr, cfg.weight_decay),
            step_schedule(cfg.covnorm_all_epochs, cfg.covnorm_lr, cfg.weight_decay),
        )
        fit_covnorm(model, task.train, schedule, shared=joint, hint=self.hint("covnorm_lr", "lr"))
        if not joint and cfg.absorb:
            absorb(model, domain=task.name)
        acc = evaluate(model.set_domain(task.name), task.test, hint=self.hint("covnorm_lr", "lr"))
        percent = task_parameters(model, task.name).adapter_percent
        self.log_record(task=task.name, stage=cfg.mode, accuracy=acc, percent_params=percent)
        self.log(f"{task.name}: {cfg.mode} {acc:.2f} % with {percent:.3f} % task-specific parameters")
        entry = {"accuracy": acc, "percent_params": percent}
        self.result = self.run.update_result(tasks={**self.result.get("tasks", {}), task.name: entry})

    def finish(self) -> dict[str, Any]:
        from covnorm.transform import layout
        from dyncore.training import check_finite_state, save_checkpoint

        model = self.model
        assert model is not None
        check_finite_state(model, source=f"the trained model of {self.run.path}")
        final = self.run.checkpoints / "model.pt"
        save_checkpoint(
            final,
            {
                "model": model.state_dict(),
                "layout": layout(model),
                "tasks": [t.name for t in self.tasks],
                "classes": {t.name: t.classes for t in self.tasks},
                "widths": [list(w) for w in self.cfg.widths],
                "hidden": self.cfg.hidden,
            },
        )
        self.log(f"wrote {final}")
        return self.run.update_result(complete=True, checkpoint=str(final))


def _resume_differences(saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
    keys = sorted(set(saved) | set(current))
    return [f"{k}: {saved.get(k)!r} → {current.get(k)!r}" for k in keys if saved.get(k) != current.get(k)]


def train_multidomain(
    cfg: TrainConfig,
    out: str | Path,
    *,
    log: Callable[[str], None] = print,
    flag: Callable[[str], str] = lambda name: name,
) -> dict[str, Any]:
    """The ``covnorm train`` run: pretrain (or load ``cfg.pretrained``), residual adapters per task, then CovNorm
    per task (independent or joint, Algorithm 1), writing ``out/checkpoints/model.pt``, ``metrics.jsonl`` (one record
    per RA/CovNorm stage and task, ``step`` global) and ``result.json`` (per-task accuracies, merged as they come).

    Resumable: after every stage the whole state (model, layout, source network, the statistics still needed, every
    RNG and batch order) goes to ``checkpoints/last.pt``; rerunning with the same config continues after the last
    finished stage and ends bit-identical to an uninterrupted run (metrics lines of a stage that was cut short are
    dropped, so no step repeats and none is skipped). A different config refuses to resume (UsageError naming the
    fields) and leaves ``config.json`` as it was: ``config.json`` is written only once the run is known to proceed.

    ``flag(field)`` maps a config field to the name shown in messages (the CLI passes ``--train-limit`` style).
    Returns the result dict (also in ``result.json``).
    """
    from dyncore.cli import UsageError

    try:
        cfg.validate()
    except ConfigError as exc:
        raise UsageError(f"{flag(exc.field)} {exc.message}") from None
    state = _StagedRun(cfg, out, log, flag)
    state.start()
    for index in range(state.done, len(state.stages)):
        kind, name = state.stages[index]
        if kind == "pretrain":
            state.pretrain_stage()
        elif kind == "ra":
            state.ra_stage(state.by_name[str(name)])
        else:
            state.covnorm_stage(state.by_name[str(name)], first=index == len(state.tasks) + 1)
        state.checkpoint(index + 1)
    return state.finish()


def _json_line(record: dict[str, Any]) -> str:
    import json

    return json.dumps(record, allow_nan=False) + "\n"


def _load_source(cfg: ExperimentConfig, path: Path, flag: str) -> dict[str, Tensor]:
    """The source network's state from a ``source.pt`` of an earlier run, checked against ``cfg``'s backbone."""
    from dyncore.cli import UsageError
    from dyncore.training import CheckpointError, check_finite_state, load_checkpoint

    try:
        ck = load_checkpoint(path)
    except CheckpointError as exc:
        raise UsageError(f"{flag}: {exc}") from None
    if "model" not in ck:
        raise UsageError(f"{flag}: {path} is not a source.pt written by `covnorm train` (no 'model')")
    if ck.get("widths") != [list(w) for w in cfg.widths] or ck.get("hidden") != cfg.hidden:
        raise UsageError(
            f"{flag}: {path} has another backbone shape (widths {ck.get('widths')}, hidden {ck.get('hidden')}; "
            f"this run: {[list(w) for w in cfg.widths]}, {cfg.hidden})"
        )
    check_finite_state(ck["model"], source=f"{flag} {path}")
    return dict(ck["model"])
