"""covnorm: Covariance Normalization for multi-domain learning (thesis Chapter 2).

Commands:
  train  pretrain a small backbone on the embedded source task (or load one), adapt it to target tasks with residual
         adapters, then CovNorm (independent or joint); writes checkpoints/model.pt + metrics.jsonl
  eval   rebuild a trained multi-domain model from its checkpoint and report accuracy and % parameters per task
  demo   the miniature Table 2.1 (BN, RA, FTA, SVD+FTA, PCA+FTA, LoRA, FNFT, CovNorm, joint CovNorm) + plots
  bench  streaming statistics: peak memory as the number of images grows ×10
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch

__all__ = ["main"]


def _add_data_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--tasks", default=None, help="comma-separated target tasks (default: every embedded target task)")
    p.add_argument("--train-limit", type=int, default=None, help="training images per task (default: the demo's)")
    p.add_argument("--test-limit", type=int, default=None, help="test images per task (default: the demo's)")
    p.add_argument("--source-limit", type=int, default=None, help="source-task training images (default: the demo's)")


def _config(args: argparse.Namespace) -> Any:
    from covnorm.demo import DemoConfig

    cfg = DemoConfig.quick() if getattr(args, "quick", False) else DemoConfig()
    cfg.seed = args.seed
    if getattr(args, "tasks", None):
        cfg.tasks = tuple(t.strip() for t in args.tasks.split(",") if t.strip())
    for key in ("train_limit", "test_limit", "source_limit", "epochs", "pretrain_epochs", "threshold"):
        value = getattr(args, key, None)
        if value is not None:
            setattr(cfg, key, value)
    return cfg


def _train_args(p: argparse.ArgumentParser) -> None:
    _add_data_args(p)
    p.add_argument(
        "--mode",
        choices=("independent", "joint", "ra"),
        default="independent",
        help="CovNorm mode, or 'ra' to stop after the residual adapters",
    )
    p.add_argument(
        "--threshold",
        type=float,
        default=None,
        help="explained-variance threshold t in (0, 1] (default 0.99; 0.995 with --rule released)",
    )
    p.add_argument(
        "--rule",
        choices=("thesis", "released"),
        default="thesis",
        help="'thesis': smallest k with r_k > t; 'released': components with r_k < t, at least 2",
    )
    p.add_argument("--init", choices=("exact", "random", "identity"), default="exact", help="initialisation of M")
    p.add_argument("--epochs", type=int, default=None, help="adapter fine-tuning epochs per task")
    p.add_argument("--pretrain-epochs", type=int, default=None, help="source pretraining epochs")
    p.add_argument(
        "--source-checkpoint",
        type=Path,
        default=None,
        help="a source.pt written by an earlier `covnorm train` (skips pretraining)",
    )
    p.add_argument("--no-absorb", action="store_true", help="keep M separate (independent mode)")


def _train(args: argparse.Namespace) -> int:
    from covnorm.accounting import task_parameters
    from covnorm.demo import _fit_cfg, _load, pretrain, target_model
    from covnorm.train import CovNormSchedule, evaluate, fit, fit_covnorm
    from covnorm.transform import absorb, apply_covnorm, apply_joint_covnorm, collect_statistics, layout
    from dyncore.cli import RunDir
    from dyncore.training import load_checkpoint, load_state_dict_strict, save_checkpoint, seed_everything

    if args.threshold is not None and not 0.0 < args.threshold <= 1.0:
        print(f"covnorm train: error: --threshold must be in (0, 1], got {args.threshold}", file=sys.stderr)
        return 2
    seed_everything(args.seed)
    run = RunDir(args.out)
    run.write_config(vars(args))
    cfg = _config(args)
    from covnorm.stats import DEFAULT_THRESHOLD

    cfg.threshold = args.threshold if args.threshold is not None else DEFAULT_THRESHOLD[args.rule]
    source, tasks = _load(cfg, print)
    if args.source_checkpoint is not None:
        ck = load_checkpoint(args.source_checkpoint)
        from covnorm.demo import DemoConfig

        if ck.get("widths") != [list(w) for w in cfg.widths] or ck.get("hidden") != cfg.hidden:
            print(f"covnorm train: error: {args.source_checkpoint} has another backbone shape", file=sys.stderr)
            return 2
        pre = pretrain(DemoConfig(pretrain_epochs=0, widths=cfg.widths, hidden=cfg.hidden), source)
        load_state_dict_strict(pre, ck["model"])
    else:
        pre = pretrain(cfg, source)
        save_checkpoint(
            run.checkpoints / "source.pt",
            {
                "model": pre.state_dict(),
                "widths": [list(w) for w in cfg.widths],
                "hidden": cfg.hidden,
            },
        )
    model = target_model(pre, source.name, tasks, "residual")
    stats = {}
    for t in tasks:
        model.set_domain(t.name)
        fit(model, t.train, model.domain_parameters(), _fit_cfg(cfg.epochs, cfg.lr))
        acc = evaluate(model, t.test)
        run.metrics.log(task=t.name, stage="ra", accuracy=acc)
        print(f"{t.name}: RA {acc:.2f} %")
        stats[t.name] = collect_statistics(model, t.stats, domain=t.name)
    sched = CovNormSchedule(
        _fit_cfg(cfg.covnorm_mini_epochs, cfg.covnorm_lr), _fit_cfg(cfg.covnorm_all_epochs, cfg.covnorm_lr)
    )
    if args.mode == "joint":
        report = apply_joint_covnorm(model, stats, threshold=cfg.threshold, rule=args.rule, init=args.init)
        print(report)
    for t in tasks:
        if args.mode == "independent":
            report = apply_covnorm(
                model, stats[t.name], domain=t.name, threshold=cfg.threshold, rule=args.rule, init=args.init
            )
            print(report)
        if args.mode != "ra":
            model.set_domain(t.name)
            fit_covnorm(model, t.train, sched, shared=args.mode == "joint")
            if args.mode == "independent" and not args.no_absorb:
                absorb(model, domain=t.name)
        acc = evaluate(model.set_domain(t.name), t.test)
        tp = task_parameters(model, t.name)
        run.metrics.log(task=t.name, stage=args.mode, accuracy=acc, percent_params=tp.adapter_percent)
        print(f"{t.name}: {args.mode} {acc:.2f} % with {tp.adapter_percent:.3f} % task-specific parameters")
    save_checkpoint(
        run.checkpoints / "model.pt",
        {
            "model": model.state_dict(),
            "layout": layout(model),
            "tasks": [t.name for t in tasks],
            "classes": {t.name: t.classes for t in tasks},
            "widths": [list(w) for w in cfg.widths],
            "hidden": cfg.hidden,
        },
    )
    print(f"wrote {run.checkpoints / 'model.pt'}")
    return 0


def _eval_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", type=Path, required=True, help="checkpoints/model.pt written by `covnorm train`")
    p.add_argument("--test-limit", type=int, default=None, help="test images per task")


def _eval(args: argparse.Namespace) -> int:
    from covnorm.accounting import task_parameters
    from covnorm.models import MultiDomainModel, inject, small_vgg, vgg16_sites
    from covnorm.train import TensorBatches, evaluate
    from covnorm.transform import apply_layout
    from dyncore.data import multidomain_task, normalise
    from dyncore.training import CheckpointError, load_checkpoint, load_state_dict_strict

    try:
        ck = load_checkpoint(args.checkpoint)
    except CheckpointError as exc:
        print(f"covnorm eval: error: {exc}", file=sys.stderr)
        return 2
    missing = [k for k in ("model", "layout", "tasks", "classes", "widths", "hidden") if k not in ck]
    if missing:
        print(
            f"covnorm eval: error: {args.checkpoint} lacks {missing} (not written by `covnorm train`)", file=sys.stderr
        )
        return 2
    net = small_vgg(widths=tuple(tuple(w) for w in ck["widths"]), hidden=ck["hidden"], num_classes=1)
    inject(net, where=vgg16_sites, domains=ck["tasks"])
    model = MultiDomainModel(net, ck["classes"])
    apply_layout(model, ck["layout"])
    # the source classifier of the checkpoint may have another size: take the stored tensors' shapes
    state = ck["model"]
    model.backbone.classifier = torch.nn.Linear(*reversed(state["backbone.classifier.weight"].shape))
    load_state_dict_strict(model, state)
    limit = args.test_limit or 1000
    rows = ["| task | accuracy % | % params |", "|---|---|---|"]
    scores: dict[str, dict[str, float]] = {}
    for name in ck["tasks"]:
        te = multidomain_task(name, "test", seed=args.seed)
        data = TensorBatches(normalise(te.images[:limit]), te.labels[:limit].long(), batch_size=256, shuffle=False)
        acc = evaluate(model.set_domain(name), data)
        percent = task_parameters(model, name).adapter_percent
        scores[name] = {"accuracy": acc, "percent_params": percent}
        rows.append(f"| {name} | {acc:.2f} | {percent:.3f} |")
    print("\n".join(rows))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "eval.json").write_text(json.dumps({"checkpoint": str(args.checkpoint), "tasks": scores}, indent=2))
    return 0


def _demo_args(p: argparse.ArgumentParser) -> None:
    _add_data_args(p)
    p.add_argument("--epochs", type=int, default=None, help="adapter fine-tuning epochs (default 3; --quick 1)")
    p.add_argument("--pretrain-epochs", type=int, default=None, help="source pretraining epochs")
    p.add_argument("--threshold", type=float, default=None, help="CovNorm explained-variance threshold (0.99)")


def _demo(args: argparse.Namespace) -> int:
    from covnorm.demo import claims, run_demo
    from dyncore.cli import RunDir
    from dyncore.report import write_summary
    from dyncore.training import seed_everything

    seed_everything(args.seed)
    run = RunDir(args.out)
    run.write_config(vars(args))
    cfg = _config(args)
    t0 = time.time()
    summary = run_demo(cfg, run.path)
    write_summary(
        run.path,
        package="covnorm",
        title="CovNorm vs BN / RA / FTA / SVD+FTA / LoRA / FNFT on the embedded multi-domain tasks (Table 2.1)",
        claims=claims(summary),
        tables={"Table 2.1 analogue (accuracy % and task-specific % parameters)": summary["table"]},
        plots=["plots/eta_per_layer.png", "plots/explained_variance.png"],
        seconds=time.time() - t0,
    )
    print(f"wrote {run.path / 'summary.json'}")
    return 0


def _bench_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--images", type=int, default=256, help="images of the small run (the large one has 10×)")


def _bench(args: argparse.Namespace) -> int:
    from covnorm.models import MultiDomainModel, inject, small_vgg, vgg16_sites
    from covnorm.transform import collect_statistics
    from dyncore.bench import peak_memory_mb
    from dyncore.report import write_bench

    t0 = time.time()
    n_small = 16 if args.quick else args.images
    batch = min(32, n_small)
    torch.manual_seed(args.seed)
    net = small_vgg(num_classes=10)
    inject(net, where=vgg16_sites, domains=["target"], a_init="normal")
    model = MultiDomainModel(net, {"target": 10}).eval()

    def stream(n: int) -> Any:
        g = torch.Generator().manual_seed(args.seed)
        for _ in range(n // batch):
            yield torch.randn(batch, 3, 32, 32, generator=g)

    collected: dict[int, Any] = {}

    def run(n: int) -> None:
        collected[n] = collect_statistics(model, stream(n), domain="target")

    run(n_small)  # warm-up: allocator pools, lazy init
    # two interleaved rounds, the larger reading per size (RSS growth is noisy by a few MiB)
    peak = {n_small: 0.0, 10 * n_small: 0.0}
    for _ in range(2):
        for n in peak:
            peak[n] = max(peak[n], peak_memory_mb(lambda n=n: run(n)))
    # what the released code would hold: every (x, y) feature of every position, float32
    naive = {n: sum(2 * st.x.n * st.x.dim * 4 for st in collected[n].values()) / 2**20 for n in peak}
    state = sum(2 * (st.x.dim**2 + st.x.dim) * 8 for st in collected[n_small].values()) / 2**20
    ratio = peak[10 * n_small] / max(peak[n_small], 1e-3)
    details = {
        "images": list(peak),
        "peak_mb": [round(v, 2) for v in peak.values()],
        "moment_state_mb": round(state, 3),
        "all_features_mb": [round(v, 1) for v in naive.values()],
        "threads": torch.get_num_threads(),
    }
    write_bench(
        args.out,
        package="covnorm",
        ratios={"stats_memory_10x_images": ratio},
        details=details,
        seconds=time.time() - t0,
    )
    print(json.dumps({"stats_memory_10x_images": ratio, **details}, indent=2, default=str))
    return 0


def main(argv: list[str] | None = None) -> None:
    from dyncore.cli import Command, run_cli

    sys.exit(
        run_cli(
            "covnorm",
            __doc__,
            [
                Command("train", "pretrain, adapt with residual adapters, apply CovNorm, absorb", _train_args, _train),
                Command("eval", "evaluate a trained multi-domain checkpoint", _eval_args, _eval),
                Command("demo", "Table 2.1 analogue on the embedded multi-domain tasks (+ plots)", _demo_args, _demo),
                Command("bench", "statistics memory vs number of images", _bench_args, _bench),
            ],
            argv,
        )
    )
