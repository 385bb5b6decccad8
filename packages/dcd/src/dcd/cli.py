"""dcd — Dynamic Convolution Decomposition (thesis Chapter 3).

Commands:
  train   train a registered model on a folder: dataset (ImageNet recipe) or on embedded data (digits5:<domain>)
  eval    evaluate a checkpoint
  demo    static vs ΛW0 vs W0+PΦQᵀ vs full DCD vs DY-Conv on an embedded task (3 seeds) → summary.json
  bench   latency (batch 1, 1 thread, 224²) and training-step ratios → bench.json
  export  ONNX export of the explicit fast form, checked relative to PyTorch with onnxruntime
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from torch import nn

from dyncore.cli import Command, RunDir, UsageError, run_cli

__all__ = ["build_model", "main"]


def _model_args(p: argparse.ArgumentParser, default: str = "dcd_mobilenetv2_050") -> None:
    p.add_argument("--model", default=default, help="registered model name (see dcd.MODEL_NAMES)")
    p.add_argument("--num-classes", type=int, default=None, help="classes (default: from the dataset, or 1000)")
    p.add_argument("--mode", choices=("auto", "featurewise", "synthesis"), default="auto",
                   help="application form of the dynamic layers")  # fmt: skip
    p.add_argument("--pretrained", type=Path, default=None,
                   help="initial weights: the authors' released checkpoint (renamed) or a dcd state dict")  # fmt: skip


def _data_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", default="digits5:svhn",
                   help="'digits5:<domain>' (embedded, 32×32) or 'folder:<root>' (train/, val/; alias "
                        "'imagefolder:<root>')")  # fmt: skip
    p.add_argument("--img-size", "--image-size", dest="img_size", type=int, default=224,
                   help="crop size for folder data")  # fmt: skip
    p.add_argument("--limit", type=int, default=None, help="cap on embedded images per split")
    p.add_argument("--workers", type=int, default=2, help="DataLoader workers")
    p.add_argument("--batch-size", type=int, default=None, help="batch size (default: the recipe's)")


def build_model(name: str, *, num_classes: int, small_input: bool, mode: str = "featurewise", **kw: Any) -> nn.Module:
    """A registered model (``dcd.MODEL_NAMES``) through timm (its ``model_spec`` recorded); ``small_input`` for
    32×32 data."""
    import dcd

    if name not in dcd.MODEL_NAMES:
        raise UsageError(f"--model {name!r}: unknown model; choose one of {dcd.MODEL_NAMES}")
    kwargs = {"num_classes": num_classes, "small_input": small_input, **kw}
    if mode != "auto":
        kwargs["mode"] = mode
    return dcd.create(name, **kwargs)


def _load_pretrained(model: nn.Module, path: Path | None) -> None:
    """``--pretrained``: the authors' released file (renamed by :func:`dcd.released.rename_released`) or our names."""
    if path is None:
        return
    from dcd.released import filter_released
    from dyncore.models import read_state_dict
    from dyncore.training import check_finite_state

    state = read_state_dict(path)
    renamed = filter_released(state, model)
    check_finite_state(renamed, source=str(path))
    model.load_state_dict(renamed, strict=True)


def _min_size(model: nn.Module) -> int:
    """The total stride of a model (the smallest image that keeps a 1×1 last feature map)."""
    info = getattr(model, "feature_info", None)
    return int(max(f["reduction"] for f in info)) if info else 1


def _loaders(args: argparse.Namespace, batch_size: int, env: Any) -> tuple[Any, Any, int]:
    from torch.utils.data import DataLoader, DistributedSampler

    from dcd.data import load_dataset

    train = load_dataset(args.data, "train", img_size=args.img_size, limit=args.limit)
    val = load_dataset(args.data, "val", img_size=args.img_size, limit=args.limit)
    per_rank = len(train) // max(env.world_size, 1)
    if batch_size > per_rank:
        raise UsageError(
            f"--batch-size {batch_size} is larger than the training data ({len(train)} images"
            f"{f' over {env.world_size} processes' if env.world_size > 1 else ''}): no batch would be formed; "
            "lower --batch-size or raise --limit"
        )
    sampler: DistributedSampler[Any] | None = (
        DistributedSampler(train, env.world_size, env.rank, shuffle=True) if env.is_distributed else None
    )
    train_loader = DataLoader(train, batch_size, shuffle=sampler is None, sampler=sampler, drop_last=True,
                              num_workers=args.workers, pin_memory=env.device.type == "cuda")  # fmt: skip
    val_loader = DataLoader(val, batch_size, shuffle=False, num_workers=args.workers)
    return train_loader, val_loader, len(train.classes)


def _image_size(args: argparse.Namespace) -> int:
    from dcd.data import is_embedded

    return 32 if is_embedded(args.data) else int(args.img_size)


# ----------------------------------------------------------------------------------------------------------------------
def _train_args(p: argparse.ArgumentParser) -> None:
    _model_args(p)
    _data_args(p)
    p.add_argument("--epochs", type=int, default=None, help="epochs (default: the recipe's)")
    p.add_argument("--lr", type=float, default=None, help="initial learning rate (default: the recipe's)")
    p.add_argument("--weight-decay", "--wd", dest="weight_decay", type=float, default=None,
                   help="weight decay (default: the recipe's)")  # fmt: skip
    p.add_argument("--schedule", choices=("cosine", "step"), default=None, help="lr schedule (default: recipe)")
    p.add_argument("--label-smoothing", type=float, default=None, help="label smoothing (default: recipe)")
    p.add_argument("--mixup", type=float, default=None, help="final mixup α (default: recipe)")
    p.add_argument("--mixup-ramp", type=float, default=None, help="epochs over which α ramps from 0 (default: 100)")
    p.add_argument("--dropout", type=float, default=None, help="dropout before the classifier (default: recipe)")


def _train(args: argparse.Namespace) -> int:
    from dcd.data import is_embedded
    from dcd.train import evaluate, make_optimizer, make_scheduler, recipe_for, train_one_epoch
    from dyncore.bench import tune_malloc
    from dyncore.models import model_spec
    from dyncore.training import Checkpointer, init_distributed, progress, seed_everything, shutdown, unwrap, wrap_ddp

    tune_malloc()
    env = init_distributed(device=args.device)
    seed_everything(args.seed + env.rank)
    recipe = recipe_for(args.model)
    overrides = {"epochs": args.epochs, "lr": args.lr, "weight_decay": args.weight_decay, "schedule": args.schedule,
                 "label_smoothing": args.label_smoothing, "mixup": args.mixup, "mixup_ramp_epochs": args.mixup_ramp,
                 "dropout": args.dropout, "batch_size": args.batch_size}  # fmt: skip
    if args.quick:
        overrides.update(epochs=overrides["epochs"] or 1, batch_size=overrides["batch_size"] or 32)
        args.limit = args.limit or 256
    recipe = recipe.with_(**{k: v for k, v in overrides.items() if v is not None})
    train_loader, val_loader, n_classes = _loaders(args, recipe.batch_size, env)
    model = build_model(args.model, num_classes=args.num_classes or n_classes,
                        small_input=is_embedded(args.data), mode=args.mode,
                        drop_rate=recipe.dropout)  # fmt: skip
    size = _image_size(args)
    stride = _min_size(model)
    if size < stride:
        raise UsageError(
            f"--img-size {size} is smaller than {args.model}'s total stride {stride}: the last feature map would be "
            f"empty; use --img-size ≥ {stride}"
        )
    _load_pretrained(model, args.pretrained)
    model = model.to(env.device)
    run = RunDir(args.out)
    spec = model_spec(model)
    config = {"command": "train", "model": args.model, "model_spec": spec, "data": args.data,
              "recipe": recipe.as_dict(), "seed": args.seed, "mode": args.mode, "limit": args.limit,
              "img_size": args.img_size,
              "pretrained": None if args.pretrained is None else str(args.pretrained)}  # fmt: skip
    ddp_model = wrap_ddp(model, env)
    opt = make_optimizer(model, recipe)
    sched = make_scheduler(opt, recipe, len(train_loader))
    ckpt = Checkpointer(run.checkpoints, config, ignore=["recipe.epochs"], env=env)
    resumed = ckpt.resume(model=model, optimizer=opt, scheduler=sched)
    if env.is_main:
        run.write_config(config)  # only once the resume check passed
    start = 0 if resumed is None else resumed["step"]
    best = float(run.read_result().get("best_top1", 0.0)) if resumed is not None else 0.0
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
        ckpt.save(epoch + 1, model=model, optimizer=opt, scheduler=sched, extra={"model_spec": spec})
        if env.is_main:
            run.update_result(best_top1=best, epochs_done=epoch + 1)
    if env.is_main and not run.read_result():
        run.update_result(best_top1=best, epochs_done=start)
    shutdown(env)
    return 0


def _model_from_checkpoint(args: argparse.Namespace, **overrides: Any) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild exactly the model a ``dcd train`` checkpoint records (its ``model_spec``) and load its weights."""
    from dyncore.models import create_from_spec
    from dyncore.training import load_checkpoint, load_state_dict_strict

    state = load_checkpoint(args.checkpoint)
    spec = (state.get("extra") or {}).get("model_spec") if isinstance(state, dict) else None
    if not isinstance(spec, dict):
        raise UsageError(
            f"--checkpoint {args.checkpoint}: records no model spec (not written by `dcd train` of this version); "
            "cannot rebuild its model exactly"
        )
    if args.model is not None and args.model != spec["name"]:
        raise UsageError(f"--model {args.model} differs from the model {spec['name']} recorded in {args.checkpoint}")
    if args.num_classes is not None and args.num_classes != spec["kwargs"].get("num_classes", 1000):
        raise UsageError(
            f"--num-classes {args.num_classes} differs from the {spec['kwargs'].get('num_classes', 1000)} classes "
            f"recorded in {args.checkpoint}"
        )
    model = create_from_spec(spec, source=str(args.checkpoint), **overrides)
    load_state_dict_strict(model, state.get("model", state))
    return model, spec


# ----------------------------------------------------------------------------------------------------------------------
def _eval_args(p: argparse.ArgumentParser) -> None:
    _model_args(p, default=None)  # type: ignore[arg-type]
    _data_args(p)
    p.add_argument("--checkpoint", "--weights", dest="checkpoint", type=Path, default=None,
                   help="checkpoint written by `dcd train` (last.pt): its recorded model is rebuilt")  # fmt: skip


def _eval(args: argparse.Namespace) -> int:
    from torch.utils.data import DataLoader

    from dcd.data import is_embedded, load_dataset
    from dcd.train import evaluate

    val = load_dataset(args.data, "val", img_size=args.img_size, limit=args.limit)
    if args.checkpoint is not None:
        if args.pretrained is not None:
            raise UsageError("give --checkpoint or --pretrained, not both")
        model, _ = _model_from_checkpoint(args)
    elif args.pretrained is not None:
        model = build_model(args.model or "dcd_mobilenetv2_050", num_classes=args.num_classes or 1000,
                            small_input=is_embedded(args.data), mode=args.mode)  # fmt: skip
        _load_pretrained(model, args.pretrained)
    else:
        raise UsageError("nothing to evaluate: give --checkpoint (a `dcd train` checkpoint) or --pretrained FILE")
    res = evaluate(model.to(args.device), DataLoader(val, args.batch_size or 256, num_workers=args.workers),
                   device=args.device)  # fmt: skip
    run = RunDir(args.out)
    source = args.checkpoint or args.pretrained
    (run.path / "eval.json").write_text(json.dumps({"checkpoint": str(source), **res}, indent=2) + "\n")
    print(f"top-1 {res['top1']:.2f}%  loss {res['loss']:.4f}")
    return 0


# ----------------------------------------------------------------------------------------------------------------------
def _export_args(p: argparse.ArgumentParser) -> None:
    _model_args(p, default=None)  # type: ignore[arg-type]
    p.add_argument("--img-size", "--image-size", dest="img_size", type=int, default=224,
                   help="input size of the exported graph")  # fmt: skip
    p.add_argument("--checkpoint", "--weights", dest="checkpoint", type=Path, default=None,
                   help="a `dcd train` checkpoint (its recorded model is rebuilt); else --pretrained or "
                        "random init")  # fmt: skip
    p.add_argument("--legacy", action="store_true", help="the TorchScript ONNX exporter instead of torch.export's")
    p.add_argument("--eager-form", action="store_true",
                   help="export the model's own modules instead of the explicit fast form "
                        "(dcd.reparameterize)")  # fmt: skip
    p.add_argument("--rtol", type=float, default=5e-3,
                   help="largest relative error onnxruntime vs PyTorch (a random-weight model calibrated on noise has "
                        "a float32 error of ~1e-3 of its own vs float64)")  # fmt: skip


def _export(args: argparse.Namespace) -> int:
    import torch

    import dcd
    from dyncore.export import calibrate_batchnorm, export_onnx

    size = 32 if args.quick else args.img_size
    if args.checkpoint is not None:
        model, _ = _model_from_checkpoint(args)
    else:
        model = build_model(args.model or "dcd_mobilenetv2_050", num_classes=args.num_classes or 1000,
                            small_input=size <= 64, mode=args.mode)  # fmt: skip
        _load_pretrained(model, args.pretrained)
        if args.pretrained is None:
            # random weights: calibrate BN on random images so the check compares O(1) outputs, not ~1e-14
            gen = torch.Generator().manual_seed(args.seed)
            calibrate_batchnorm(model, [torch.randn(8, 3, size, size, generator=gen) for _ in range(2)])
    stride = _min_size(model)
    if size < stride:
        raise UsageError(f"--img-size {size} is smaller than the model's total stride {stride}")
    model.eval()
    # batch 2: torch.export specialises a batch of 1, which would fix the exported batch axis
    example = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(args.seed + 1))
    net = model if args.eager_form else dcd.reparameterize(model, example)
    run = RunDir(args.out)
    name = getattr(model, "model_spec", {}).get("name", "model")
    report = export_onnx(net, run.path / f"{name}.onnx", example, dynamo=not args.legacy, rtol=args.rtol,
                         output_names=("logits",))  # fmt: skip
    result = {"path": str(report.path), "exporter": report.exporter, "relative_errors": report.relative_errors,
              "batch_sizes": report.batch_sizes, "max_abs_reference": report.max_abs_reference, "rtol": report.rtol,
              "ok": report.ok, "form": "eager" if args.eager_form else "reparameterized",
              "input": [1, 3, size, size]}  # fmt: skip
    (run.path / "export.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return 0 if report.ok else 1


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
