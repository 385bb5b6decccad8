"""dcd — Dynamic Convolution Decomposition (thesis Chapter 3).

Commands:
  train   train a registered model on an ImageFolder (ImageNet recipe) or on embedded data (digits5:<domain>)
  eval    evaluate a checkpoint
  demo    static vs ΛW0 vs W0+PΦQᵀ vs full DCD vs DY-Conv on an embedded task (3 seeds) → summary.json
  bench   latency (batch 1, 1 thread, 224²) and training-step ratios → bench.json
  export  ONNX export checked against PyTorch with onnxruntime
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from torch import nn

from dyncore.cli import Command, RunDir, run_cli

__all__ = ["build_model", "main"]


def _model_args(p: argparse.ArgumentParser, default: str = "dcd_mobilenetv2_050") -> None:
    p.add_argument("--model", default=default, help="registered model name (see dcd.MODEL_NAMES)")
    p.add_argument("--num-classes", type=int, default=None, help="classes (default: from the dataset, or 1000)")
    p.add_argument("--mode", choices=("auto", "featurewise", "synthesis"), default="auto",
                   help="application form of the dynamic layers")  # fmt: skip


def _data_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", default="digits5:svhn",
                   help="'digits5:<domain>' (embedded, 32×32) or 'imagefolder:<root>' (train/, val/)")  # fmt: skip
    p.add_argument("--img-size", type=int, default=224, help="crop size for ImageFolder data")
    p.add_argument("--limit", type=int, default=None, help="cap on embedded images per split")
    p.add_argument("--workers", type=int, default=2, help="DataLoader workers")
    p.add_argument("--batch-size", type=int, default=None, help="batch size (default: the recipe's)")


def build_model(name: str, *, num_classes: int, small_input: bool, mode: str = "featurewise", **kw: Any) -> nn.Module:
    """A registered model (``dcd.MODEL_NAMES``); ``small_input`` for 32×32 data."""
    import dcd

    model = dcd.create(name, num_classes=num_classes, small_input=small_input, **kw)
    dcd.set_apply_mode(model, mode)
    return model


def _loaders(args: argparse.Namespace, batch_size: int, env: Any) -> tuple[Any, Any, int]:
    from torch.utils.data import DataLoader, DistributedSampler

    from dcd.data import load_dataset

    train = load_dataset(args.data, "train", img_size=args.img_size, limit=args.limit)
    val = load_dataset(args.data, "val", img_size=args.img_size, limit=args.limit)
    sampler: DistributedSampler[Any] | None = (
        DistributedSampler(train, env.world_size, env.rank, shuffle=True) if env.is_distributed else None
    )
    train_loader = DataLoader(train, batch_size, shuffle=sampler is None, sampler=sampler, drop_last=True,
                              num_workers=args.workers, pin_memory=env.device.type == "cuda")  # fmt: skip
    val_loader = DataLoader(val, batch_size, shuffle=False, num_workers=args.workers)
    return train_loader, val_loader, len(train.classes)


# ----------------------------------------------------------------------------------------------------------------------
def _train_args(p: argparse.ArgumentParser) -> None:
    _model_args(p)
    _data_args(p)
    p.add_argument("--epochs", type=int, default=None, help="epochs (default: the recipe's)")
    p.add_argument("--lr", type=float, default=None, help="initial learning rate (default: the recipe's)")
    p.add_argument("--wd", type=float, default=None, help="weight decay (default: the recipe's)")
    p.add_argument("--schedule", choices=("cosine", "step"), default=None, help="lr schedule (default: recipe)")
    p.add_argument("--label-smoothing", type=float, default=None, help="label smoothing (default: recipe)")
    p.add_argument("--mixup", type=float, default=None, help="final mixup α (default: recipe)")
    p.add_argument("--mixup-ramp", type=float, default=None, help="epochs over which α ramps from 0 (default: 100)")
    p.add_argument("--dropout", type=float, default=None, help="dropout before the classifier (default: recipe)")


def _train(args: argparse.Namespace) -> int:
    from dcd.train import evaluate, make_optimizer, make_scheduler, recipe_for, train_one_epoch
    from dyncore.bench import tune_malloc
    from dyncore.training import Checkpointer, init_distributed, progress, seed_everything, shutdown, unwrap, wrap_ddp

    tune_malloc()
    env = init_distributed(device=args.device)
    seed_everything(args.seed + env.rank)
    recipe = recipe_for(args.model)
    overrides = {"epochs": args.epochs, "lr": args.lr, "weight_decay": args.wd, "schedule": args.schedule,
                 "label_smoothing": args.label_smoothing, "mixup": args.mixup, "mixup_ramp_epochs": args.mixup_ramp,
                 "dropout": args.dropout, "batch_size": args.batch_size}  # fmt: skip
    if args.quick:
        overrides.update(epochs=overrides["epochs"] or 1, batch_size=overrides["batch_size"] or 32)
        args.limit = args.limit or 256
    recipe = recipe.with_(**{k: v for k, v in overrides.items() if v is not None})
    train_loader, val_loader, n_classes = _loaders(args, recipe.batch_size, env)
    from dcd.data import is_embedded

    model = build_model(args.model, num_classes=args.num_classes or n_classes, small_input=is_embedded(args.data),
                        mode=args.mode, dropout=recipe.dropout).to(env.device)  # fmt: skip
    run = RunDir(args.out)
    config = {"command": "train", "model": args.model, "data": args.data, "recipe": recipe.as_dict(),
              "seed": args.seed, "mode": args.mode, "limit": args.limit, "img_size": args.img_size}  # fmt: skip
    if env.is_main:
        run.write_config(config)
    ddp_model = wrap_ddp(model, env)
    opt = make_optimizer(model, recipe)
    sched = make_scheduler(opt, recipe, len(train_loader))
    ckpt = Checkpointer(run.checkpoints, config, ignore=["recipe.epochs"], env=env)
    resumed = ckpt.resume(model=model, optimizer=opt, scheduler=sched)
    start = 0 if resumed is None else resumed["step"]
    best = 0.0
    for epoch in progress(range(start, recipe.epochs), desc="epochs", disable=not env.is_main):
        if hasattr(train_loader.sampler, "set_epoch"):
            train_loader.sampler.set_epoch(epoch)
        t0 = time.perf_counter()
        tr = train_one_epoch(ddp_model, train_loader, opt, sched, recipe, epoch=epoch,
                             steps_per_epoch=len(train_loader), device=env.device)  # fmt: skip
        ev = evaluate(unwrap(ddp_model), val_loader, device=env.device)
        best = max(best, ev["top1"])
        if env.is_main:
            run.metrics.log(epoch=epoch + 1, train_loss=tr["loss"], train_top1=tr["top1"], val_loss=ev["loss"],
                            val_top1=ev["top1"], lr=opt.param_groups[0]["lr"],
                            seconds=time.perf_counter() - t0)  # fmt: skip
            print(f"epoch {epoch + 1}/{recipe.epochs}: train loss {tr['loss']:.3f}  val top-1 {ev['top1']:.2f}%")
        ckpt.save(epoch + 1, model=model, optimizer=opt, scheduler=sched)
    if env.is_main:
        (run.path / "result.json").write_text(json.dumps({"best_top1": best}, indent=2) + "\n")
    shutdown(env)
    return 0


# ----------------------------------------------------------------------------------------------------------------------
def _eval_args(p: argparse.ArgumentParser) -> None:
    _model_args(p)
    _data_args(p)
    p.add_argument("--checkpoint", type=Path, required=True, help="checkpoint written by `dcd train` (last.pt)")


def _eval(args: argparse.Namespace) -> int:
    from torch.utils.data import DataLoader

    from dcd.data import is_embedded, load_dataset
    from dcd.train import evaluate
    from dyncore.training import load_checkpoint, load_state_dict_strict

    val = load_dataset(args.data, "val", img_size=args.img_size, limit=args.limit)
    model = build_model(args.model, num_classes=args.num_classes or len(val.classes),
                        small_input=is_embedded(args.data), mode=args.mode)  # fmt: skip
    state = load_checkpoint(args.checkpoint)
    load_state_dict_strict(model, state.get("model", state))
    res = evaluate(model.to(args.device), DataLoader(val, args.batch_size or 256, num_workers=args.workers),
                   device=args.device)  # fmt: skip
    run = RunDir(args.out)
    (run.path / "eval.json").write_text(json.dumps({"checkpoint": str(args.checkpoint), **res}, indent=2) + "\n")
    print(f"top-1 {res['top1']:.2f}%  loss {res['loss']:.4f}")
    return 0


# ----------------------------------------------------------------------------------------------------------------------
def _export_args(p: argparse.ArgumentParser) -> None:
    _model_args(p, default="dcd_mobilenetv2_050")
    p.add_argument("--img-size", type=int, default=224, help="input size of the exported graph")
    p.add_argument("--checkpoint", type=Path, default=None, help="optional weights (else random init)")
    p.add_argument("--inference-form", action="store_true",
                   help="fold BNs and choose each dynamic layer's form by measured cost before exporting")  # fmt: skip


def _export(args: argparse.Namespace) -> int:
    from dcd.export import export_onnx

    num_classes = args.num_classes or 1000
    size = 32 if args.quick else args.img_size
    model = build_model(args.model, num_classes=num_classes, small_input=size <= 64, mode=args.mode)
    if args.checkpoint is not None:
        from dyncore.training import load_checkpoint, load_state_dict_strict

        state = load_checkpoint(args.checkpoint)
        load_state_dict_strict(model, state.get("model", state))
    run = RunDir(args.out)
    result = export_onnx(model, run.path / f"{args.model}.onnx", size=size, inference_form=args.inference_form)
    (run.path / "export.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return 0 if result["ok"] else 1


# ----------------------------------------------------------------------------------------------------------------------
def _demo_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", default="digits5:svhn", help="embedded task 'digits5:<domain>'")
    p.add_argument("--seeds", type=int, default=3, help="seeds per model")
    p.add_argument("--steps", type=int, default=None, help="training steps per run (default 300; --quick 8)")


def _demo(args: argparse.Namespace) -> int:
    from dcd.demo import run_demo

    run_demo(args)
    return 0


def _bench_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--width", type=float, default=0.5, help="MobileNetV2 width for the latency and training cases")


def _bench(args: argparse.Namespace) -> int:
    from dcd.bench import run_bench

    run_bench(args)
    return 0


COMMANDS = [
    Command("train", "train a model (ImageNet recipe on an ImageFolder, or embedded data)", _train_args, _train),
    Command("eval", "evaluate a checkpoint", _eval_args, _eval),
    Command("demo", "static vs ΛW0 vs W0+PΦQᵀ vs DCD vs DY-Conv on an embedded task", _demo_args, _demo),
    Command("bench", "latency and training-step ratios → bench.json", _bench_args, _bench),
    Command("export", "export to ONNX and check it with onnxruntime", _export_args, _export),
]


def main(argv: list[str] | None = None) -> None:
    sys.exit(run_cli("dcd", __doc__, COMMANDS, argv))
