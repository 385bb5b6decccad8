"""micronet — MicroNet (thesis Chapter 4): train, evaluate, demo, benchmark and export.

  micronet train  --data folder:/path/imagenet --model micronet_m0 --out runs/m0     (ImageNet recipe; torchrun-ready)
  micronet train  --data digits5:mnistm --model micronet_m0 --epochs 3             (embedded dataset, 32×32)
  micronet eval   --data digits5:mnistm --model micronet_m0 --checkpoint runs/m0/checkpoints/last.pt
  micronet demo   --out runs/demo [--quick]
  micronet bench  --out runs/bench [--quick]
  micronet export --model micronet_m0 --out runs/export [--checkpoint FILE]

Images smaller than 64×64 (the embedded datasets are 32×32) use the model with stem stride 1 (total stride 16).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from torch import nn

from dyncore.cli import Command, RunDir, run_cli
from dyncore.training import init_distributed, load_checkpoint, load_state_dict_strict, seed_everything, shutdown
from micronet.config import CONFIGS, get_config

__all__ = ["build_model", "main"]

DROPOUT = {"micronet_m0": 0.05, "micronet_m1": 0.05, "micronet_m2": 0.1, "micronet_m3": 0.1}


def build_model(name: str, *, num_classes: int, image_size: int, drop_rate: float | None = None) -> nn.Module:
    """A MicroNet config name (or ``mobilenetv3_small_<width>``, e.g. ``mobilenetv3_small_0.15``); inputs below
    64×64 get stem stride 1."""
    small = image_size < 64
    if name.startswith("mobilenetv3_small_"):
        from micronet.baselines import mobilenetv3_small

        try:
            width = float(name.rsplit("_", 1)[1])
        except ValueError as exc:
            raise ValueError(
                f"--model {name!r}: expected mobilenetv3_small_<width>, e.g. mobilenetv3_small_0.5"
            ) from exc
        model = mobilenetv3_small(width, num_classes=num_classes)
        if small:
            stem = model.conv_stem
            assert isinstance(stem, nn.Conv2d)
            stem.stride = (1, 1)
        return model
    from micronet.demo import for_small_inputs
    from micronet.model import MicroNet

    cfg = get_config(name)
    return MicroNet(for_small_inputs(cfg) if small else cfg, num_classes=num_classes, drop_rate=drop_rate)


def _data_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--data",
        default="digits5:mnistm",
        help="digits5:<domain> | multidomain:<task> | folder:<root with train/ and val/>",
    )
    p.add_argument("--model", default="micronet_m0", help=f"one of {sorted(CONFIGS)} or mobilenetv3_small_<width>")
    p.add_argument("--image-size", type=int, default=224, help="crop size for folder datasets")
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
    p.add_argument("--weight-decay", type=float, default=None, help="default 3e-5 (M3: 4e-5), on all parameters")
    p.add_argument("--dropout", type=float, default=None, help="default per model (M0/M1 0.05, M2/M3 0.1)")
    p.add_argument("--warmup-epochs", type=float, default=None, help="linear warm-up (default: 5 for M3, else 0)")
    p.add_argument("--max-steps", type=int, default=None, help="stop after this many optimisation steps")


def _train(args: argparse.Namespace) -> int:
    from micronet.data import load_dataset
    from micronet.train import TrainConfig, train

    env = init_distributed(device=args.device)
    try:
        seed_everything(args.seed + env.rank)
        run = RunDir(args.out)
        if env.is_main:
            run.write_config(args)
        tr, te, classes, size = load_dataset(
            args.data, limit=tuple(args.limit) if args.limit else None, image_size=args.image_size
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
            drop_rate=args.dropout if args.dropout is not None else DROPOUT.get(args.model),
        )
        keys = {"model": args.model, "data": args.data, "seed": args.seed, "limit": args.limit, "dropout": args.dropout}
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
    p.add_argument("--checkpoint", type=Path, required=True, help="checkpoint file written by `micronet train`")


def _load_weights(model: nn.Module, path: Path) -> None:
    ckpt = load_checkpoint(path)
    load_state_dict_strict(model, ckpt.get("model", ckpt))


def _eval(args: argparse.Namespace) -> int:
    from micronet.data import load_dataset
    from micronet.train import evaluate, make_loader

    _, te, classes, size = load_dataset(
        args.data, limit=tuple(args.limit) if args.limit else None, image_size=args.image_size
    )
    model = build_model(args.model, num_classes=classes, image_size=size)
    _load_weights(model, args.checkpoint)
    metrics = evaluate(
        model.to(args.device), make_loader(te, batch_size=args.batch_size, train=False), device=args.device
    )
    RunDir(args.out).metrics.log(split="eval", checkpoint=str(args.checkpoint), **metrics)
    print(
        f"{args.model} {args.checkpoint}: top-1 {metrics['top1']:.2f}%  top-5 {metrics['top5']:.2f}%  "
        f"loss {metrics['loss']:.4f}"
    )
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
    p.add_argument("--image-size", type=int, default=224, help="input size (paper protocol: 224)")


def _bench(args: argparse.Namespace) -> int:
    from micronet.bench import run_bench

    run_bench(args.out, quick=args.quick, image_size=args.image_size, device=args.device)
    return 0


def _export_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="micronet_m0", help=f"one of {sorted(CONFIGS)}")
    p.add_argument("--checkpoint", type=Path, default=None, help="weights to export (default: random init)")
    p.add_argument("--num-classes", type=int, default=1000, help="classifier outputs")
    p.add_argument("--image-size", type=int, default=224, help="export input size (batch axis is dynamic)")
    p.add_argument("--training-form", action="store_true", help="export the training form instead of the fused one")


def _export(args: argparse.Namespace) -> int:
    from micronet.deploy import export_onnx, onnx_max_abs_diff, to_inference
    from micronet.model import MicroNet

    model = MicroNet(get_config(args.model), num_classes=args.num_classes)
    if args.checkpoint is not None:
        _load_weights(model, args.checkpoint)
    model.eval()
    target = model if args.training_form else to_inference(model)
    run = RunDir(args.out)
    path = export_onnx(target, run.path / f"{args.model}.onnx", image_size=args.image_size)
    x = torch.randn(2, 3, args.image_size, args.image_size)
    diff = onnx_max_abs_diff(model, path, x)
    run.metrics.log(onnx=str(path), max_abs_diff=diff)
    print(f"wrote {path}; onnxruntime vs PyTorch training form (eval): max abs diff {diff:.3g}")
    return 0 if diff < 1e-4 else 1


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
