"""micronet — MicroNet (thesis Chapter 4): train, evaluate, demo, benchmark and export.

  micronet train  --data folder:/path/imagenet --model micronet_m0 --out runs/m0     (ImageNet recipe; torchrun-ready)
  micronet train  --data digits5:mnistm --model micronet_m0 --epochs 3             (embedded dataset, 32×32)
  micronet eval   --data digits5:mnistm --model micronet_m0 --checkpoint runs/m0/checkpoints/last.pt
  micronet demo   --out runs/demo [--quick]
  micronet bench  --out runs/bench [--quick]
  micronet export --model micronet_m0 --out runs/export [--checkpoint FILE | --pretrained micronet-m0.pth]
  micronet eval   --data folder:/path/imagenet --model micronet_m0 --pretrained micronet-m0.pth   (released weights)

Images smaller than 64×64 (the embedded datasets are 32×32) use the model with stem stride 1 (total stride 16); the
stride is part of the model spec every checkpoint stores, so eval/export rebuild exactly the trained model.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import torch
from torch import nn

from dyncore.cli import Command, RunDir, UsageError, run_cli
from dyncore.training import (
    CheckpointError,
    check_finite,
    init_distributed,
    load_checkpoint,
    load_state_dict_strict,
    seed_everything,
    shutdown,
)
from micronet.config import CONFIGS

__all__ = ["build_model", "checkpoint_spec", "main", "model_from_checkpoint"]

SMALL_INPUT = 64  # inputs below 64×64 get stem stride 1 (total stride 16)


def build_model(
    name: str,
    *,
    num_classes: int,
    image_size: int,
    drop_rate: float | None = None,
    pretrained: Path | None = None,
    init: str | None = None,
) -> nn.Module:
    """A MicroNet by timm name (or ``mobilenetv3_small_<width>``, e.g. ``mobilenetv3_small_0.15``) with
    ``model_spec`` recorded; inputs below 64×64 get stem stride 1. ``pretrained``: initial weights (the authors'
    released file or a checkpoint of ours; a classifier for another class count is replaced)."""
    small = image_size < SMALL_INPUT
    if name.startswith("mobilenetv3_small_"):
        if pretrained is not None:
            raise UsageError(f"--pretrained: the {name} baseline has no released weights to load")
        return _baseline(name, num_classes=num_classes, small_input=small)
    if name not in CONFIGS:
        raise ValueError(f"--model {name!r}: unknown MicroNet config; choose one of {sorted(CONFIGS)}")
    import timm

    kwargs: dict[str, Any] = {"num_classes": num_classes, "in_chans": 3, "stem_stride": 1 if small else 2}
    if drop_rate is not None:
        kwargs["drop_rate"] = drop_rate
    if init is not None:
        kwargs["init"] = init
    if pretrained is not None:
        if not Path(pretrained).is_file():
            raise FileNotFoundError(f"--pretrained {pretrained}: no such file")
        kwargs.update(pretrained=True, pretrained_cfg_overlay={"file": str(pretrained)})
    return timm.create_model(name, **kwargs)  # type: ignore[no-any-return]


def _baseline(name: str, *, num_classes: int, small_input: bool) -> nn.Module:
    from micronet.baselines import mobilenetv3_small

    try:
        width = float(name.rsplit("_", 1)[1])
    except ValueError as exc:
        raise ValueError(f"--model {name!r}: expected mobilenetv3_small_<width>, e.g. mobilenetv3_small_0.5") from exc
    model = mobilenetv3_small(width, num_classes=num_classes)
    if small_input:
        stem = model.conv_stem
        assert isinstance(stem, nn.Conv2d)
        stem.stride = (1, 1)
    object.__setattr__(
        model, "model_spec", {"name": name, "kwargs": {"num_classes": num_classes, "small_input": small_input}}
    )
    return model


def _spec(model: nn.Module) -> dict[str, Any]:
    from dyncore.models import model_spec

    return model_spec(model)


def checkpoint_spec(ckpt: dict[str, Any], path: Path) -> dict[str, Any]:
    """The model spec a checkpoint written by ``micronet train`` carries (CheckpointError naming the file if none)."""
    spec = ckpt.get("model_spec") or (ckpt.get("extra") or {}).get("model_spec")
    if not isinstance(spec, dict) or "name" not in spec:
        raise CheckpointError(
            f"{path}: the checkpoint records no model spec (written by an older micronet?), so the exact model "
            "(stem stride, classes) cannot be rebuilt; retrain, or load its weights with --pretrained and an explicit "
            "--model"
        )
    return spec


def model_from_checkpoint(path: Path) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild exactly the model a ``micronet train`` checkpoint describes and load its weights strictly."""
    from dyncore.models import create_from_spec
    from dyncore.training import check_finite_state

    ckpt = load_checkpoint(path)
    spec = checkpoint_spec(ckpt, path)
    name, kwargs = spec["name"], dict(spec.get("kwargs", {}))
    if name.startswith("mobilenetv3_small_"):
        model = _baseline(name, num_classes=int(kwargs["num_classes"]), small_input=bool(kwargs["small_input"]))
    else:
        import micronet  # noqa: F401  (registers the entrypoints)

        model = create_from_spec(spec, source=str(path))
    state = ckpt.get("model", ckpt)
    check_finite_state(state, source=str(path))
    load_state_dict_strict(model, state)
    return model, spec


def _total_stride(model: nn.Module, image_size: int) -> int:
    stride = getattr(model, "total_stride", None)
    return int(stride) if stride is not None else (16 if image_size < SMALL_INPUT else 32)


def _check_image_size(model: nn.Module, name: str, size: int) -> None:
    stride = _total_stride(model, size)
    if size < stride:
        raise UsageError(
            f"--img-size {size}: {size}×{size} images are smaller than {name}'s total stride {stride} "
            f"(stem stride {'1' if size < SMALL_INPUT else '2'}); use --img-size {stride} or larger"
        )


def _data_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--data",
        default="digits5:mnistm",
        help="digits5:<domain> | multidomain:<task> | folder:<root with train/ and val/> (alias imagefolder:)",
    )
    p.add_argument("--model", default="micronet_m0", help=f"one of {sorted(CONFIGS)} or mobilenetv3_small_<width>")
    p.add_argument("--img-size", "--image-size", dest="img_size", type=int, default=224, help="crop size for folders")
    p.add_argument("--batch-size", type=int, default=64, help="per-process batch size")
    p.add_argument("--workers", type=int, default=0, help="DataLoader worker processes")
    p.add_argument(
        "--limit",
        type=int,
        nargs=2,
        default=None,
        metavar=("TRAIN", "TEST"),
        help="cap the number of train/test images",
    )


def _train_args(p: argparse.ArgumentParser) -> None:
    _data_args(p)
    p.add_argument("--epochs", type=int, default=600, help="epochs (released: 600)")
    p.add_argument("--lr", type=float, default=None, help="peak lr (default: 0.2 × global batch / 512)")
    p.add_argument(
        "--weight-decay", "--wd", dest="weight_decay", type=float, default=None, help="default 3e-5 (M3: 4e-5)"
    )
    p.add_argument("--pretrained", type=Path, default=None, help="initial weights (e.g. the authors' released file)")
    p.add_argument("--init", choices=("default", "released"), default=None, help="initialisation (default: default)")
    p.add_argument("--dropout", type=float, default=None, help="default per model (M0/M1 0.05, M2/M3 0.1)")
    p.add_argument("--warmup-epochs", type=float, default=None, help="linear warm-up (default: 5 for M3, else 0)")
    p.add_argument("--max-steps", type=int, default=None, help="stop after this many optimisation steps")


def _train(args: argparse.Namespace) -> int:
    from micronet.data import load_dataset
    from micronet.train import TrainConfig, train

    if args.lr is not None:
        check_finite(args.lr, what="--lr", hint="pass a positive finite learning rate")
        if args.lr <= 0:
            raise UsageError(f"--lr must be positive, got {args.lr:g}")
    env = init_distributed(device=args.device)
    try:
        seed_everything(args.seed + env.rank)
        run = RunDir(args.out)
        tr, te, classes, size = load_dataset(
            args.data, limit=tuple(args.limit) if args.limit else None, image_size=args.img_size
        )
        m3 = args.model == "micronet_m3"
        cfg = TrainConfig(
            epochs=args.epochs,
            batch_size=args.batch_size,
            lr=args.lr,
            weight_decay=args.weight_decay if args.weight_decay is not None else (4e-5 if m3 else 3e-5),
            warmup_epochs=args.warmup_epochs if args.warmup_epochs is not None else (5.0 if m3 else 0.0),
            max_steps=args.max_steps,
            num_workers=args.workers,
        )
        model = build_model(
            args.model,
            num_classes=classes,
            image_size=size,
            drop_rate=args.dropout,
            pretrained=args.pretrained,
            init=args.init,
        )
        _check_image_size(model, args.model, size)
        spec = _spec(model)
        keys = {
            "model": args.model,
            "data": args.data,
            "seed": args.seed,
            "limit": args.limit,
            "dropout": args.dropout,
            "model_spec": spec,
            "pretrained": str(args.pretrained) if args.pretrained else None,
        }
        result = train(
            model,
            tr,
            te,
            cfg,
            device=str(env.device),
            env=env,
            checkpoint_dir=run.checkpoints,
            run_config=keys,
            logger=run.metrics,
            seed=args.seed,
            checkpoint_extra={"model_spec": spec},
            lr_flag="--lr",
            on_resume_checked=(lambda: run.write_config(args)) if env.is_main else None,
        )
        if env.is_main:
            print(
                f"{args.model} on {args.data}: top-1 {result['top1']:.2f}%  top-5 {result['top5']:.2f}%  "
                f"({result['steps']} steps) → {run.path}"
            )
    finally:
        shutdown(env)
    return 0


def _eval_args(p: argparse.ArgumentParser) -> None:
    _data_args(p)
    p.set_defaults(model=None)
    weights = p.add_mutually_exclusive_group(required=True)
    weights.add_argument(
        "--checkpoint",
        "--weights",
        dest="checkpoint",
        type=Path,
        default=None,
        help="checkpoint written by `micronet train` (rebuilds exactly its model from the stored model_spec)",
    )
    weights.add_argument("--pretrained", type=Path, default=None, help="the authors' released file (with --model)")


def _weights_model(args: argparse.Namespace, *, num_classes: int, image_size: int) -> tuple[nn.Module, str, str]:
    """(model, its name, where its weights came from) for eval/export."""
    if args.checkpoint is not None:
        model, spec = model_from_checkpoint(args.checkpoint)
        if args.model is not None and args.model != spec["name"]:
            raise UsageError(f"--model {args.model}: {args.checkpoint} holds a {spec['name']} ({spec['kwargs']})")
        return model, str(spec["name"]), str(args.checkpoint)
    name = args.model or "micronet_m0"
    if args.pretrained is not None:
        num_classes = _file_classes(args.pretrained)  # evaluate / export the file's own classifier
    model = build_model(name, num_classes=num_classes, image_size=image_size, pretrained=args.pretrained)
    return model, name, str(args.pretrained) if args.pretrained is not None else "random init"


def _file_classes(path: Path) -> int:
    """The class count of a weights file (ours or the authors' layout)."""
    from dyncore.models import read_state_dict

    sd = read_state_dict(path)
    for key in ("head.fc2.0.weight", "classifier.2.linear.0.weight"):
        if key in sd:
            return int(sd[key].shape[0])
    raise CheckpointError(f"--pretrained {path}: no MicroNet classifier (head.fc2 / classifier.2) in the file")


def _eval(args: argparse.Namespace) -> int:
    from micronet.data import load_dataset
    from micronet.train import evaluate, make_loader

    _, te, classes, size = load_dataset(
        args.data, limit=tuple(args.limit) if args.limit else None, image_size=args.img_size
    )
    model, name, source = _weights_model(args, num_classes=classes, image_size=size)
    n_out = getattr(model, "num_classes", classes)
    if n_out != classes:
        raise UsageError(f"{source}: the model has {n_out} classes but --data {args.data} has {classes}")
    _check_image_size(model, name, size)
    metrics = evaluate(
        model.to(args.device), make_loader(te, batch_size=args.batch_size, train=False), device=args.device
    )
    RunDir(args.out).metrics.log(split="eval", checkpoint=source, **metrics)
    print(f"{name} {source}: top-1 {metrics['top1']:.2f}%  top-5 {metrics['top5']:.2f}%  loss {metrics['loss']:.4f}")
    return 0


def _demo_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", default="digits5:mnistm", help="embedded dataset (digits5:<domain> | multidomain:<task>)")
    p.add_argument(
        "--epochs", type=int, default=None, help="epochs per run (default 2 on 1,500 images; --quick: 1 on 128)"
    )
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="seeds (mean ± std over them)")


def _demo(args: argparse.Namespace) -> int:
    from micronet.demo import run_demo

    run_demo(
        args.out, quick=args.quick, dataset=args.data, seeds=tuple(args.seeds), epochs=args.epochs, device=args.device
    )
    return 0


def _bench_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--img-size", "--image-size", dest="img_size", type=int, default=224, help="input size (224)")


def _bench(args: argparse.Namespace) -> int:
    from micronet.bench import run_bench

    run_bench(args.out, quick=args.quick, image_size=args.img_size, device=args.device)
    return 0


def _export_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--model", default=None, help=f"one of {sorted(CONFIGS)} (default micronet_m0; a checkpoint names its own)"
    )
    weights = p.add_mutually_exclusive_group()
    weights.add_argument(
        "--checkpoint",
        "--weights",
        dest="checkpoint",
        type=Path,
        default=None,
        help="checkpoint written by `micronet train` (default: random init, BN calibrated on random images)",
    )
    weights.add_argument("--pretrained", type=Path, default=None, help="the authors' released file")
    p.add_argument("--num-classes", type=int, default=1000, help="classifier outputs (without --checkpoint)")
    p.add_argument("--img-size", "--image-size", dest="img_size", type=int, default=224, help="export input size")
    p.add_argument("--exporter", choices=("dynamo", "legacy"), default="dynamo", help="torch.onnx exporter")
    p.add_argument("--rtol", type=float, default=1e-4, help="largest relative error (to max |logit|) accepted")
    p.add_argument("--training-form", action="store_true", help="export the training form, not reparameterize(model)")


def _export(args: argparse.Namespace) -> int:
    from dyncore.export import calibrate_batchnorm
    from micronet.deploy import export_onnx

    model, name, source = _weights_model(args, num_classes=args.num_classes, image_size=args.img_size)
    _check_image_size(model, name, args.img_size)
    if args.checkpoint is None and args.pretrained is None:
        # a fresh model's BatchNorms hold their initial statistics: calibrate them on random images so that the
        # export check compares a well-scaled function
        g = torch.Generator().manual_seed(args.seed)
        calibrate_batchnorm(model, [torch.randn(8, 3, args.img_size, args.img_size, generator=g) for _ in range(2)])
    run = RunDir(args.out)
    result = export_onnx(
        model,
        run.path / f"{name}.onnx",
        image_size=args.img_size,
        dynamo=args.exporter == "dynamo",
        fast=not args.training_form,
        rtol=args.rtol,
    )
    rep = result.report
    run.metrics.log(onnx=str(rep.path), weights=source, vs_training_form=result.vs_training_form, **rep.as_dict())
    errors = ", ".join(f"{e:.2g}" for e in rep.relative_errors)
    extra = f"; vs the training form {result.vs_training_form:.2g}" if result.vs_training_form is not None else ""
    print(
        f"wrote {rep.path} ({rep.exporter}, {'reparameterized' if not args.training_form else 'training form'}); "
        f"onnxruntime vs PyTorch relative errors {errors} on batch sizes {rep.batch_sizes}{extra} "
        f"(max |logit| {rep.max_abs_reference:.3g}, rtol {rep.rtol:g})"
    )
    return 0


COMMANDS = [
    Command("train", "train a MicroNet (released recipe) on a folder or an embedded dataset", _train_args, _train),
    Command("eval", "evaluate a checkpoint", _eval_args, _eval),
    Command(
        "demo", "M0 vs MobileNetV3-Small (matched MAdds) vs M0-ReLU on an embedded task, 3 seeds", _demo_args, _demo
    ),
    Command(
        "bench", "latency and training-throughput ratios to mobilenetv3_small_050 (bench.json)", _bench_args, _bench
    ),
    Command("export", "export to ONNX and check it with onnxruntime", _export_args, _export),
]


def main(argv: list[str] | None = None) -> None:
    sys.exit(run_cli("micronet", __doc__, COMMANDS, argv))
