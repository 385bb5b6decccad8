"""covnorm: Covariance Normalization for multi-domain learning (thesis Chapter 2).

Commands:
  train  pretrain a small backbone on the embedded source task (or load one), adapt it to target tasks with residual
         adapters, then CovNorm (independent or joint); writes checkpoints/model.pt, metrics.jsonl, result.json;
         checkpointed after every stage: rerun the same command to resume an interrupted run
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
    p.add_argument("--epochs", type=int, default=None, help="adapter (RA) fine-tuning epochs per task (default 3)")
    p.add_argument("--pretrain-epochs", type=int, default=None, help="source pretraining epochs (default 4)")


def _flag(field: str) -> str:
    """The command-line spelling of a config field (``train_limit`` → ``--train-limit``)."""
    return "--" + field.replace("_", "-")


#: flags copied into the config when given (the config field has the flag's name)
_OVERRIDES = (
    "train_limit",
    "test_limit",
    "source_limit",
    "epochs",
    "pretrain_epochs",
    "threshold",
    "lr",
    "weight_decay",
    "pretrain_lr",
    "covnorm_lr",
)


def _config(args: argparse.Namespace, cls: Any) -> Any:
    """``cls`` (an ExperimentConfig) from the defaults (``--quick``: the quick ones) and the given flags; a value
    that cannot work raises UsageError naming the flag."""
    from covnorm.train import ConfigError
    from dyncore.cli import UsageError

    fields: dict[str, Any] = {"seed": args.seed}
    if getattr(args, "tasks", None) is not None:
        fields["tasks"] = tuple(t.strip() for t in args.tasks.split(",") if t.strip())
    for key in _OVERRIDES:
        value = getattr(args, key, None)
        if value is not None:
            fields[key] = value
    cfg = cls.quick(**fields) if getattr(args, "quick", False) else cls(**fields)
    try:
        cfg.validate()
    except ConfigError as exc:
        raise UsageError(f"{_flag(exc.field)} {exc.message}") from None
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
    p.add_argument("--lr", type=float, default=None, help="adapter (RA) fine-tuning learning rate (default 1e-3)")
    p.add_argument("--covnorm-lr", type=float, default=None, help="CovNorm fine-tuning learning rate (default 3e-4)")
    p.add_argument("--pretrain-lr", type=float, default=None, help="source pretraining learning rate (default 2e-3)")
    p.add_argument(
        "--weight-decay", "--wd", dest="weight_decay", type=float, default=None, help="Adam weight decay (5e-4)"
    )
    p.add_argument(
        "--pretrained",
        "--source-checkpoint",
        dest="pretrained",
        type=Path,
        default=None,
        help="initial weights: a checkpoints/source.pt written by an earlier `covnorm train` (skips pretraining)",
    )
    p.add_argument("--no-absorb", action="store_true", help="keep M separate (independent mode)")


def _train(args: argparse.Namespace) -> int:
    from covnorm.pipeline import TrainConfig, train_multidomain
    from covnorm.stats import DEFAULT_THRESHOLD

    if args.threshold is None:
        args.threshold = DEFAULT_THRESHOLD[args.rule]
    cfg = _config(args, TrainConfig)
    cfg.mode, cfg.rule, cfg.init, cfg.absorb = args.mode, args.rule, args.init, not args.no_absorb
    cfg.pretrained = None if args.pretrained is None else str(args.pretrained)
    train_multidomain(cfg, args.out, flag=_flag)
    return 0


def _eval_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--checkpoint",
        "--weights",
        dest="checkpoint",
        type=Path,
        required=True,
        help="checkpoints/model.pt written by `covnorm train`",
    )
    p.add_argument("--test-limit", type=int, default=1000, help="test images per task")


def _eval(args: argparse.Namespace) -> int:
    from covnorm.accounting import task_parameters
    from covnorm.train import TensorBatches, evaluate, load_trained
    from dyncore.cli import UsageError
    from dyncore.data import multidomain_task, normalise
    from dyncore.io import atomic_write_json

    if args.test_limit < 1:
        raise UsageError(f"--test-limit must be an integer >= 1, got {args.test_limit}")
    model, ck = load_trained(args.checkpoint)
    rows = ["| task | accuracy % | % params |", "|---|---|---|"]
    scores: dict[str, dict[str, float]] = {}
    for name in ck["tasks"]:
        te = multidomain_task(name, "test", seed=args.seed)
        images, labels = normalise(te.images[: args.test_limit]), te.labels[: args.test_limit].long()
        acc = evaluate(model.set_domain(name), TensorBatches(images, labels, batch_size=256, shuffle=False))
        percent = task_parameters(model, name).adapter_percent
        scores[name] = {"accuracy": acc, "percent_params": percent}
        rows.append(f"| {name} | {acc:.2f} | {percent:.3f} |")
    print("\n".join(rows))
    atomic_write_json(Path(args.out) / "eval.json", {"checkpoint": str(args.checkpoint), "tasks": scores}, indent=2)
    return 0


def _demo_args(p: argparse.ArgumentParser) -> None:
    _add_data_args(p)
    p.add_argument("--threshold", type=float, default=None, help="CovNorm explained-variance threshold (0.99)")


def _demo(args: argparse.Namespace) -> int:
    from covnorm.demo import DemoConfig, claims, run_demo
    from dyncore.cli import RunDir
    from dyncore.report import write_summary
    from dyncore.training import seed_everything

    cfg = _config(args, DemoConfig)
    seed_everything(args.seed)
    run = RunDir(args.out)
    run.write_config(vars(args))
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
