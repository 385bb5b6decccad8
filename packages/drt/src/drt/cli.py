"""drt — Dynamic Residual Transfer for multi-source domain adaptation (thesis Chapter 6).

Commands:
  train   train a static or DRT network on Digits-5 (embedded, offline) or DomainNet lists you already have;
          re-running with the same --out resumes every seed from its last checkpoint (finished seeds are re-evaluated)
  eval    evaluate a checkpoint written by `drt train` (F1, F2, ensemble accuracy on the target test split)
  demo    Digits-5 leave-one-domain-out: static vs DRT, source-only / MCD / DRT+ST, seeds → summary.json
  bench   ResNet-50-DRT ÷ ResNet-50: MAdds and CPU latency ratios → bench.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import torch

from drt.layers import RESIDUAL_KINDS, DynamicResidualConfig
from drt.models import DomainAdaptationNet, digit_cnn, resnet_backbone
from drt.train import METHODS, SELECTION, DATask, TrainConfig, digits5_task, domainnet_task, evaluate, mean_std
from dyncore.cli import Command, RunDir, run_cli
from dyncore.training import (
    ConfigMismatchError,
    get_logger,
    init_distributed,
    load_checkpoint,
    load_state_dict_strict,
)

__all__ = ["main"]


def _model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", choices=("digits5", "domainnet"), default="digits5", help="dataset")
    p.add_argument("--root", type=Path, default=None, help="DomainNet root holding <domain>_{train,test}.txt lists")
    p.add_argument("--target", default="mnistm", help="target domain (the sources are all other domains)")
    p.add_argument("--sources", nargs="*", default=None, help="source domains (default: leave-one-domain-out)")
    p.add_argument("--static", action="store_true", help="the static twin (no dynamic residual)")
    p.add_argument("--residual", choices=RESIDUAL_KINDS, default="routing", help="Eq. 6.4 routing, 6.3 or 6.5")
    p.add_argument("--num-bases", type=int, default=4, help="K residual bases (Eq. 6.4)")
    p.add_argument("--width", type=float, default=1.0, help="digit CNN width multiplier (M3SDA widths at 1.0)")
    p.add_argument("--depth", type=int, choices=(50, 101), default=101, help="ResNet depth for DomainNet")
    p.add_argument("--limit", type=int, default=None, help="cap Digits-5 images per split (smoke runs)")
    p.add_argument(
        "--method", choices=METHODS, default="mcd", help="alignment loss L_d (Table 6.2); m3sda: per-source heads"
    )


#: the arguments that define the model and the task; a resumed run must agree on them (Checkpointer config). Paths
#: (--root, --pretrained: only the initialisation, which a resume replaces) may move between runs.
_RUN_KEYS = ("data", "target", "sources", "static", "residual", "num_bases", "width", "depth", "limit")


def _train_args(p: argparse.ArgumentParser) -> None:
    _model_args(p)
    p.add_argument("--steps", type=int, default=2000, help="optimisation steps")
    p.add_argument("--batch-size", type=int, default=64, help="source and target images per step (each)")
    p.add_argument("--lr", type=float, default=0.002, help="SGD learning rate")
    p.add_argument("--eval-every", type=int, default=250, help="evaluate/select every N steps")
    p.add_argument(
        "--trade-off", type=float, default=None,
        help="λ of Eq. 6.6 for dann/m3sda (default 1.0 for dann, 0.01 for m3sda: moments scale with the features)",
    )  # fmt: skip
    p.add_argument("--num-k", type=int, default=4, help="feature-extractor updates per step (mcd3, m3sda)")
    p.add_argument(
        "--select-on",
        choices=SELECTION,
        default="source",
        help="checkpoint selection: held-out source data (default), last, or target (oracle; logged)",
    )
    p.add_argument("--self-training", action="store_true", help="DRT+ST: pseudo labels > --st-threshold, retrain")
    p.add_argument("--st-threshold", type=float, default=0.8, help="pseudo-label confidence threshold")
    p.add_argument("--st-steps", type=int, default=500, help="steps of the self-training stage")
    p.add_argument("--seeds", type=int, nargs="*", default=None, help="several seeds → mean ± std (default --seed)")
    p.add_argument(
        "--pretrained",
        type=Path,
        default=None,
        help="static ResNet state_dict (.pt) to load into the static part (DomainNet)",
    )


def _task(args: argparse.Namespace, seed: int) -> DATask:
    with_domain = args.method == "m3sda"  # M³SDA-β alone reads source domain labels
    if args.data == "digits5":
        return digits5_task(args.target, sources=args.sources, seed=seed, limit=args.limit, with_domain=with_domain)
    if args.root is None:
        raise ValueError("--root is required with --data domainnet")
    from torchvision.transforms import v2 as T

    norm = [
        T.ToImage(),
        T.ToDtype(torch.float32, scale=True),
        T.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225]),
    ]
    train_tf = T.Compose([T.Resize(256), T.RandomHorizontalFlip(), T.RandomCrop(224), *norm])
    test_tf = T.Compose([T.Resize(256), T.CenterCrop(224), *norm])
    return domainnet_task(
        args.root,
        args.target,
        sources=args.sources,
        train_transform=train_tf,
        test_transform=test_tf,
        seed=seed,
        with_domain=with_domain,
    )


def _build(args: argparse.Namespace, task: DATask) -> DomainAdaptationNet:
    dyn = None if args.static else DynamicResidualConfig(kind=args.residual, num_bases=args.num_bases)
    num_classes = task.num_classes
    num_sources = len(task.source_names) if args.method == "m3sda" else None  # M³SDA-β: a head pair per source
    if args.data == "digits5":
        return DomainAdaptationNet(digit_cnn(width=args.width, dynamic=dyn), num_classes, num_sources=num_sources)
    backbone = resnet_backbone(args.depth, dynamic=dyn)
    if getattr(args, "pretrained", None) is not None:
        state = torch.load(args.pretrained, map_location="cpu", weights_only=True)
        state = {k: v for k, v in state.items() if not k.startswith("fc.")}
        res = backbone.load_state_dict(state, strict=False)
        unexpected = list(res.unexpected_keys)
        missing = [k for k in res.missing_keys if ".coefficients." not in k and not k.endswith(".bases")]
        if unexpected or missing:
            raise ValueError(f"--pretrained {args.pretrained}: missing {missing[:5]}, unexpected {unexpected[:5]}")
    return DomainAdaptationNet(backbone, num_classes, head_hidden=(1000, 1000), num_sources=num_sources)


def _train(args: argparse.Namespace) -> int:
    from drt.train import train, train_with_self_training

    run = RunDir(args.out)
    run.write_config({k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()})
    log = get_logger("drt", run.path / "train.log")
    env = init_distributed()
    seeds = args.seeds or [args.seed]
    finals: dict[str, list[float]] = {}
    for seed in seeds:
        task = _task(args, seed)
        torch.manual_seed(seed)
        model = _build(args, task)
        cfg = TrainConfig(
            method=args.method,
            steps=args.steps,
            batch_size=args.batch_size,
            lr=args.lr,
            eval_every=args.eval_every,
            select_on=args.select_on,
            st_threshold=args.st_threshold,
            st_steps=args.st_steps,
            seed=seed,
            device=args.device,
            new_lr_mult=10.0 if args.data == "domainnet" else 1.0,
            trade_off=args.trade_off if args.trade_off is not None else (0.01 if args.method == "m3sda" else 1.0),
            num_k=args.num_k,
        )
        seed_dir = run.path / f"seed{seed}"  # checkpoints/last.pt there: an interrupted seed resumes
        run_config = {k: getattr(args, k) for k in _RUN_KEYS}
        kw: dict[str, Any] = {
            "source_val": task.source_val,
            "target_test": task.target_test,
            "config": cfg,
            "run_config": run_config,
        }
        try:
            if args.self_training:
                _, result = train_with_self_training(model, task.sources, task.target, out_dir=seed_dir, env=env, **kw)
            else:
                result = train(model, task.sources, task.target, out_dir=seed_dir, env=env, **kw)
        except ConfigMismatchError as e:  # --out holds a run with other settings: refuse, do not overwrite it
            log.error("%s", e)
            return 2
        torch.save(model.state_dict(), seed_dir / "model.pt")
        log.info(
            "seed %d: selected step %d (on %s) target %s",
            seed,
            result.best_step,
            result.select_on,
            {k: round(v, 2) for k, v in result.target_test.items()},
        )
        for k, v in result.target_test.items():
            finals.setdefault(k, []).append(v)
        run.metrics.log(step=seed, seed=seed, **{f"target/{k}": v for k, v in result.target_test.items()})
    summary = {k: dict(zip(("mean", "std"), mean_std(v))) for k, v in finals.items()}
    (run.path / "result.json").write_text(json.dumps({"seeds": seeds, "target_test": summary}, indent=1))
    log.info(
        "target accuracy over %d seed(s): %s",
        len(seeds),
        {k: f"{s['mean']:.2f} ± {s['std']:.2f}" for k, s in summary.items()},
    )
    return 0


def _eval_args(p: argparse.ArgumentParser) -> None:
    _model_args(p)
    p.add_argument("--checkpoint", type=Path, required=True, help="model.pt written by `drt train`")


def _eval(args: argparse.Namespace) -> int:
    task = _task(args, args.seed)
    model = _build(args, task)
    state = load_checkpoint(args.checkpoint)
    load_state_dict_strict(model, state.get("model", state) if isinstance(state, dict) else state)
    res = {
        "target_test": evaluate(model.to(args.device), task.target_test, device=args.device),
        "source_val": evaluate(model, task.source_val, device=args.device),
    }
    print(json.dumps(res, indent=1))
    RunDir(args.out).metrics.log(**{f"{s}/{k}": v for s, d in res.items() for k, v in d.items()})
    return 0


def _demo_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--workers", type=int, default=2, help="parallel worker processes (1 thread each)")
    p.add_argument("--targets", nargs="*", default=None, help="target domains (default mnistm svhn)")


def _demo(args: argparse.Namespace) -> int:
    from drt.experiments import DemoConfig, run_demo

    cfg = DemoConfig.quick() if args.quick else DemoConfig()
    cfg.workers = args.workers
    if args.targets:
        cfg.targets = tuple(args.targets)
    run_demo(args.out, cfg)
    return 0


def _bench_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--bench-threads", type=int, default=2, help="CPU threads for the latency measurement")


def _bench(args: argparse.Namespace) -> int:
    from drt.experiments import run_bench

    run_bench(args.out, quick=args.quick, threads=args.bench_threads)
    return 0


COMMANDS = [
    Command("train", "train a static or DRT network (Digits-5 or DomainNet lists)", _train_args, _train),
    Command("eval", "evaluate a trained model on the target test split", _eval_args, _eval),
    Command(
        "demo", "Digits-5 leave-one-domain-out demo (Table 6.3 analogue + t-SNE) → summary.json", _demo_args, _demo
    ),
    Command("bench", "ResNet-50-DRT vs ResNet-50: MAdds and CPU latency ratios → bench.json", _bench_args, _bench),
]


def main(argv: list[str] | None = None) -> None:
    """Entry point of the ``drt`` console script."""
    sys.exit(run_cli("drt", __doc__, COMMANDS, argv))
