"""bdl — Bidirectional Learning for domain adaptation of semantic segmentation (thesis Chapter 5).

Commands:
  run                Algorithm 2 (K outer rounds of F → S' → M₀, N self-training rounds), resumable
  train-seg          train one segmentation model M (source only, + adversarial on a target, + pseudo labels)
  train-translation  train the translation model F, F⁻¹ (CycleGAN, optional perceptual loss with a frozen M)
  pseudo-label       write pseudo labels for a target set with a trained M
  eval               per-class IoU and 19/16/13-class mIoU of a trained M
  demo               Algorithm 2 on the embedded street scenes (K=2, N=2), stage table, PNGs, summary.json
  bench              pseudo-label statistics memory as the target set grows ×10 → bench.json

Data: --source scenes|gta5|synthia (+ --source-root), --target scenes|cityscapes (+ --target-root); "scenes" is the
embedded procedural benchmark (synthetic → real street scenes, generated and cached offline).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch.utils.data import Dataset

from bdl.adaptation import AdaptationConfig
from bdl.checks import run_register
from bdl.data import DEFAULT_LONG_SIDE, StreetScenes, cityscapes, gta5, synthia
from bdl.pseudo import PseudoLabeledTarget
from bdl.translation import CycleGANConfig
from dyncore.cli import UsageError

if TYPE_CHECKING:
    from dyncore.cli import RunDir
    from dyncore.training import Checkpointer


# ------------------------------------------------------------------------------------------------------------ args
def _data_args(p: argparse.ArgumentParser, *, source: bool = True, target: bool = True) -> None:
    g = p.add_argument_group("data")
    size_help = (
        "L (resize to a long side of L, keeping the aspect ratio) or H W (exactly); default: {default}. "
        "Embedded scenes: H W, the generated size"
    )
    if source:
        g.add_argument("--source", default="scenes", choices=("scenes", "gta5", "synthia"), help="source data set")
        g.add_argument("--source-root", type=Path, default=None, help="root of the GTA5/SYNTHIA tree")
        g.add_argument("--num-source", type=int, default=300, help="embedded scenes: source images")
        g.add_argument(
            "--source-size",
            type=int,
            nargs="+",
            default=None,
            metavar="N",
            help=size_help.format(default=f"{DEFAULT_LONG_SIDE} for gta5/synthia (thesis), --size for scenes"),
        )
    if target:
        g.add_argument("--target", default="scenes", choices=("scenes", "cityscapes"), help="target data set")
        g.add_argument("--target-root", type=Path, default=None, help="root of the Cityscapes tree")
        g.add_argument("--num-target", type=int, default=300, help="embedded scenes: unlabeled target images")
        g.add_argument("--num-val", type=int, default=100, help="embedded scenes: labeled target validation images")
        g.add_argument("--target-split", default="train", help="Cityscapes split used as the unlabeled target")
        g.add_argument("--val-split", default="val", help="Cityscapes split used for evaluation")
        g.add_argument(
            "--target-size",
            type=int,
            nargs="+",
            default=None,
            metavar="N",
            help=size_help.format(default=f"{DEFAULT_LONG_SIDE} for cityscapes (1024×512), --size for scenes")
            + "; validation labels stay at full resolution and predictions are upsampled to them for scoring",
        )
    g.add_argument(
        "--size",
        type=int,
        nargs=2,
        default=None,
        metavar=("H", "W"),
        help="embedded scenes of both domains: generated size (default 64 128); real data: use "
        "--source-size/--target-size",
    )
    g.add_argument("--cache", type=Path, default=None, help="embedded data cache dir (default $DYNCORE_CACHE)")


def _model_args(p: argparse.ArgumentParser, *, weights: str = "pretrained") -> None:
    """``weights="pretrained"``: ``--pretrained PATH`` (initial weights); ``"checkpoint"``: ``--checkpoint PATH``
    (a trained M). Both keep ``--weights`` as an alias."""
    g = p.add_argument_group("segmentation model M")
    g.add_argument("--model", default="deeplabv2", help="deeplabv2 | fcn8s | deeplabv3 | deeplabv3plus | unet")
    g.add_argument("--encoder", default="resnet101", help="any segmentation-models-pytorch encoder name")
    g.add_argument(
        "--register",
        action="append",
        default=[],
        metavar="MODULE:FUNCTION",
        help="call a function that registers more smp encoders before M is built, e.g. "
        "micronet.segmentation:register_smp_encoders (then --encoder micronet_m0); repeatable",
    )
    if weights == "pretrained":
        g.add_argument(
            "--pretrained",
            "--weights",
            dest="pretrained",
            type=Path,
            default=None,
            help="initial weights of M: an ImageNet backbone state dict or a full model",
        )
    else:
        g.add_argument(
            "--checkpoint",
            "--weights",
            dest="checkpoint",
            type=Path,
            default=None,
            help="the trained segmentation model M (e.g. model.pt of train-seg, final_model.pt of run)",
        )
    g.add_argument("--num-classes", type=int, default=19, help="classes predicted by M")


def _train_args(g: argparse._ArgumentGroup | argparse.ArgumentParser) -> None:
    g.add_argument("--lr", type=float, default=2.5e-4, help="M learning rate (backbone), poly decay 0.9")
    g.add_argument(
        "--head-lr-mult",
        type=float,
        default=None,
        help="lr multiplier of M's head; default per model: 10 for DeepLab (ASPP classifier, released), 1 for "
        "FCN-8s (fc6/fc7 are VGG16 layers; released FCN-8s uses one lr)",
    )
    g.add_argument("--optimizer", default="sgd", choices=("sgd", "adam"), help="M optimizer")
    g.add_argument("--weight-decay", "--wd", dest="weight_decay", type=float, default=5e-4, help="M weight decay")
    g.add_argument(
        "--lr-policy",
        default="poly",
        choices=("poly", "step"),
        help="poly (power 0.9, DeepLab-V2) or step (×0.1 every 5000 steps, FCN-8s)",
    )
    g.add_argument("--lambda-adv", type=float, default=1e-3, help="λ_adv of Eq. 5.1 (1e-4 for FCN-8s)")
    g.add_argument("--d-lr", type=float, default=1e-4, help="output-space discriminator learning rate")
    g.add_argument("--batch-size", type=int, default=1, help="source (and target) images per M step")
    g.add_argument("--ckpt-every", type=int, default=500, help="checkpoint every N steps")


def _translation_args(g: argparse._ArgumentGroup | argparse.ArgumentParser) -> None:
    g.add_argument("--translation-lr", type=float, default=2e-4, help="CycleGAN Adam lr (constant, then linear to 0)")
    g.add_argument("--ngf", type=int, default=64, help="generator width")
    g.add_argument("--ndf", type=int, default=64, help="PatchGAN width")
    g.add_argument("--n-blocks", type=int, default=9, help="generator residual blocks")
    g.add_argument("--translation-batch", type=int, default=4, help="images per CycleGAN step")
    g.add_argument("--translation-crop", type=int, default=None, help="random square crops for F (paper: 452)")


def _adaptation_config(args: argparse.Namespace) -> AdaptationConfig:
    return AdaptationConfig(
        lr_policy=args.lr_policy,
        lr=args.lr,
        head_lr_mult=args.head_lr_mult,
        optimizer=args.optimizer,
        weight_decay=args.weight_decay,
        lambda_adv=args.lambda_adv,
        d_lr=args.d_lr,
    )


def _translation_config(args: argparse.Namespace) -> CycleGANConfig:
    return CycleGANConfig(ngf=args.ngf, ndf=args.ndf, n_blocks=args.n_blocks, lr=args.translation_lr)


def _positive(args: argparse.Namespace, *flags: str) -> None:
    """UsageError naming the first of ``flags`` (``--num-source`` …) whose value is not a positive integer."""
    for flag in flags:
        value = getattr(args, flag.removeprefix("--").replace("-", "_"), None)
        if value is not None and value < 1:
            raise UsageError(f"{flag} must be a positive integer, got {value}")


def _resize(args: argparse.Namespace, flag: str, dataset: str) -> Any:
    """The resize of ``--source-size``/``--target-size`` for ``dataset``: (H, W) for embedded scenes (default
    ``--size``), a long side or (H, W) for real data (default :data:`~bdl.data.DEFAULT_LONG_SIDE`)."""
    values = getattr(args, flag.removeprefix("--").replace("-", "_"))
    if values is not None:
        if len(values) not in (1, 2) or min(values) < 1:
            raise UsageError(f"{flag} takes L (long side) or H W, positive, got {' '.join(map(str, values))}")
        if dataset == "scenes" and len(values) != 2:
            raise UsageError(f"{flag}: embedded scenes are generated at an exact size: give H W, got {values[0]}")
        return values[0] if len(values) == 1 else (values[0], values[1])
    if dataset == "scenes":
        return tuple(args.size) if args.size is not None else (64, 128)
    return DEFAULT_LONG_SIDE


def load_data(args: argparse.Namespace, *, need_source: bool = True) -> tuple[Any, Any, Any]:
    """(source, target, val) from the CLI data flags (source None when not needed).

    Source and target get their own resize (aspect kept for real data); the validation set keeps full-resolution
    labels when it is real data (scores at the label's own resolution).
    """
    seed = getattr(args, "data_seed", 0)
    _positive(args, "--num-source", "--num-target", "--num-val")
    uses_source = need_source and hasattr(args, "source")
    datasets = ((args.source,) if uses_source else ()) + ((args.target,) if hasattr(args, "target") else ())
    if args.size is not None and "scenes" not in datasets:
        raise UsageError("--size sets the size of embedded scenes; for real data use --source-size/--target-size")
    if args.size is not None and min(args.size) < 1:
        raise UsageError(f"--size must be positive, got {args.size[0]} {args.size[1]}")
    src: Any = None
    tgt: Any = None
    val: Any = None
    if uses_source:
        size = _resize(args, "--source-size", args.source)
        if args.source == "scenes":
            src = StreetScenes("synthetic", "train", num_images=args.num_source, size=size, seed=seed, root=args.cache)
        elif args.source_root is None:
            raise UsageError(f"--source {args.source} needs --source-root")
        else:
            src = (gta5 if args.source == "gta5" else synthia)(args.source_root, size=size)
    if hasattr(args, "target"):
        size = _resize(args, "--target-size", args.target)
        if args.target == "scenes":
            tgt = StreetScenes("real", "train", num_images=args.num_target, size=size, seed=seed, root=args.cache)
            val = StreetScenes("real", "val", num_images=args.num_val, size=size, seed=seed, root=args.cache)
        elif args.target_root is None:
            raise UsageError("--target cityscapes needs --target-root")
        else:
            tgt = cityscapes(args.target_root, args.target_split, size=size)
            val = cityscapes(args.target_root, args.val_split, size=size, full_res_labels=True)
    return src, tgt, val


def _weights(args: argparse.Namespace) -> Path | None:
    return getattr(args, "pretrained", None) or getattr(args, "checkpoint", None)


def _build(args: argparse.Namespace) -> torch.nn.Module:
    """M from the model flags, after running ``--register`` (an unknown ``--encoder`` is a UsageError)."""
    from bdl.models import build_segmenter

    run_register(getattr(args, "register", []))
    return build_segmenter(args.model, num_classes=args.num_classes, encoder=args.encoder, weights_path=_weights(args))


def _require_checkpoint(args: argparse.Namespace) -> Path:
    if args.checkpoint is None:
        raise UsageError("--checkpoint (alias --weights), the trained segmentation model M, is required")
    return Path(args.checkpoint)


def _resumable_run(args: argparse.Namespace) -> tuple[RunDir, Checkpointer, dict[str, Any]]:
    """The run directory, a Checkpointer keyed on every flag except the output path, device, threads and --debug,
    and the config to write to config.json once the resume check has passed (a refused resume keeps the old one)."""
    from dyncore.cli import RunDir
    from dyncore.training import Checkpointer

    run = RunDir(args.out)
    cfg = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if not callable(v)}
    keyed = {k: v for k, v in cfg.items() if k not in ("out", "device", "threads", "debug")}
    return run, Checkpointer(run.checkpoints, keyed), cfg


# ------------------------------------------------------------------------------------------------------------- run
def _run_args(p: argparse.ArgumentParser) -> None:
    _data_args(p)
    _model_args(p)
    g = p.add_argument_group("Algorithm 2")
    g.add_argument("--K", type=int, default=2, help="outer rounds (translation ↔ segmentation)")
    g.add_argument("--N", type=int, default=2, help="self-training rounds per outer round")
    g.add_argument("--source-only-steps", type=int, default=80_000, help="steps of M⁽⁰⁾")
    g.add_argument("--seg-steps", type=int, default=80_000, help="steps of M₀⁽ᵏ⁾ (no pseudo labels)")
    g.add_argument("--seg-steps-st", type=int, default=120_000, help="steps of M_i⁽ᵏ⁾ with pseudo labels")
    g.add_argument("--translation-steps", type=int, default=20_000, help="CycleGAN steps per round")
    g.add_argument("--warm-start", action="store_true", help="start each M from the previous one (released: no)")
    g.add_argument("--perceptual-first-round", action="store_true", help="use the perceptual loss with M⁽⁰⁾ at k=1")
    g.add_argument(
        "--pseudo-mode",
        default="global",
        choices=("global", "class_median"),
        help="global max-probability threshold (thesis) or per-class median capped at it (released)",
    )
    g.add_argument("--pseudo-threshold", type=float, default=0.9, help="max probability threshold")
    _train_args(g)
    _translation_args(g)


def config_from_args(args: argparse.Namespace) -> Any:
    """The :class:`~bdl.pipeline.BDLConfig` of ``bdl run`` (validates every value, naming its flag)."""
    from bdl.pipeline import BDLConfig

    return BDLConfig(
        K=args.K,
        N=args.N,
        seed=args.seed,
        segmenter=args.model,
        encoder=args.encoder,
        num_classes=args.num_classes,
        weights_path=str(args.pretrained) if args.pretrained else None,
        register=list(args.register),
        adaptation=_adaptation_config(args),
        source_only_steps=args.source_only_steps,
        seg_steps=args.seg_steps,
        seg_steps_st=args.seg_steps_st,
        batch_size=args.batch_size,
        warm_start=args.warm_start,
        translation=_translation_config(args),
        translation_steps=args.translation_steps,
        translation_batch=args.translation_batch,
        translation_crop=args.translation_crop,
        perceptual_first_round=args.perceptual_first_round,
        pseudo_mode=args.pseudo_mode,
        pseudo_threshold=args.pseudo_threshold,
        ckpt_every=args.ckpt_every,
        device=args.device,
    )


def _run(args: argparse.Namespace) -> int:
    """Everything is validated (flags, data, model, sizes) before the run directory is touched; config.json is
    (re)written only once the resume check has passed."""
    from bdl.evaluation import stage_table
    from bdl.pipeline import BDLPipeline
    from dyncore.cli import RunDir

    cfg = config_from_args(args)
    src, tgt, val = load_data(args)
    pipeline = BDLPipeline(cfg, args.out, source=src, target=tgt, val=val)
    run = RunDir(args.out)
    rows = pipeline.run(on_start=lambda: run.write_config({**cfg.to_dict(), "data": pipeline.run_config["data"]}))
    print(stage_table(rows, per_class=False))
    return 0


# ------------------------------------------------------------------------------------------------------- train-seg
def _train_seg_args(p: argparse.ArgumentParser) -> None:
    _data_args(p)
    _model_args(p)
    g = p.add_argument_group("training")
    g.add_argument("--steps", type=int, default=80_000, help="optimisation steps")
    g.add_argument("--adversarial", action="store_true", help="add output-space adversarial learning on the target")
    g.add_argument(
        "--translated",
        type=Path,
        default=None,
        help="folder of translated source images S' (from train-translation --translate)",
    )
    g.add_argument("--pseudo", type=Path, default=None, help="pseudo-label folder for the target (Eq. 5.3)")
    _train_args(g)


def _check_counts(args: argparse.Namespace) -> None:
    if args.steps < 0:
        raise UsageError(f"--steps must be ≥ 0, got {args.steps}")
    _positive(args, "--batch-size", "--ckpt-every", "--translation-batch")


def _train_seg(args: argparse.Namespace) -> int:
    from bdl.evaluation import evaluate
    from bdl.pipeline import TranslatedSource, train_segmenter
    from dyncore.training import save_checkpoint

    _check_counts(args)
    cfg = _adaptation_config(args)
    src, tgt, val = load_data(args)
    model = _build(args)
    if args.translated is not None:
        src = TranslatedSource(src, args.translated)
    target: Dataset | None = None
    if args.pseudo is not None:
        target = PseudoLabeledTarget(tgt, args.pseudo)
    elif args.adversarial:
        target = tgt
    run, ckpt, config = _resumable_run(args)
    model = train_segmenter(
        model,
        src,
        target,
        steps=args.steps,
        cfg=cfg,
        checkpointer=ckpt,
        batch_size=args.batch_size,
        ckpt_every=args.ckpt_every,
        seed=args.seed,
        device=args.device,
        name="train-seg",
        on_start=lambda: run.write_config(config),
    )
    save_checkpoint(run.path / "model.pt", {"model": model.state_dict()})
    scores = evaluate(model, val, num_classes=args.num_classes, device=args.device)
    run.metrics.log(step=args.steps, **{k: v for k, v in scores.as_dict().items() if k != "iou"})
    print(f"mIoU-19 {scores.miou19:.1f}  mIoU-16 {scores.miou16:.1f}  mIoU-13 {scores.miou13:.1f}")
    return 0


# -------------------------------------------------------------------------------------------- train-translation
def _train_translation_args(p: argparse.ArgumentParser) -> None:
    _data_args(p)
    _model_args(p, weights="checkpoint")
    g = p.add_argument_group("translation")
    g.add_argument("--steps", type=int, default=20_000, help="CycleGAN steps")
    g.add_argument("--perceptual", action="store_true", help="perceptual loss (Eq. 5.6) with M from --checkpoint")
    g.add_argument("--translate", action="store_true", help="also write S' = F(S) to OUT/translated/")
    g.add_argument("--ckpt-every", type=int, default=500, help="checkpoint every N steps")
    _translation_args(g)


def _train_translation(args: argparse.Namespace) -> int:
    from bdl.data import denormalize_image
    from bdl.pipeline import train_translation
    from dyncore.io import atomic_directory
    from dyncore.training import save_checkpoint

    _check_counts(args)
    tcfg = _translation_config(args)
    if args.perceptual and args.checkpoint is None:
        raise UsageError("--perceptual needs --checkpoint (alias --weights): the segmentation model M")
    if args.checkpoint is not None and not args.perceptual:
        raise UsageError("--checkpoint is only used with --perceptual (the segmentation model of Eq. 5.6)")
    if args.translation_crop is not None and (args.translation_crop % 4 or args.translation_crop < tcfg.min_size):
        raise UsageError(
            f"--translation-crop must be a multiple of 4 and at least {tcfg.min_size}, got {args.translation_crop}"
        )
    src, tgt, _ = load_data(args)
    m = _build(args) if args.perceptual else None
    run, ckpt, config = _resumable_run(args)
    cyc = train_translation(
        src,
        tgt,
        tcfg,
        steps=args.steps,
        checkpointer=ckpt,
        batch_size=args.translation_batch,
        crop=args.translation_crop,
        perceptual_model=m,
        ckpt_every=args.ckpt_every,
        seed=args.seed,
        device=args.device,
        name="train-translation",
        on_start=lambda: run.write_config(config),
    )
    save_checkpoint(run.path / "translation.pt", {"model": cyc.state_dict()})
    if args.translate:
        from PIL import Image

        out = run.path / "translated"
        cyc.eval()
        with torch.no_grad(), atomic_directory(out) as tmp:
            for i in range(len(src)):
                y = denormalize_image(cyc.g_st(src[i][0][None].to(args.device)).cpu())[0]
                Image.fromarray(y.permute(1, 2, 0).numpy()).save(tmp / f"{i:06d}.png")
        print(f"translated {len(src)} source images into {out}")
    return 0


# ------------------------------------------------------------------------------------------------- pseudo-label
def _pseudo_args(p: argparse.ArgumentParser) -> None:
    _data_args(p, source=False)
    _model_args(p, weights="checkpoint")
    p.add_argument("--mode", default="global", choices=("global", "class_median"), help="selection rule")
    p.add_argument("--threshold", type=float, default=0.9, help="max probability threshold (cap for class_median)")
    p.add_argument("--batch-size", type=int, default=8, help="images per forward pass")


def _pseudo(args: argparse.Namespace) -> int:
    from bdl.checks import check_number
    from bdl.pseudo import generate_pseudo_labels, plot_confidence_curve
    from dyncore.cli import RunDir

    _require_checkpoint(args)
    check_number(args.threshold, "threshold", "--threshold", low=0, high=1, low_open=True, high_open=True)
    _positive(args, "--batch-size")
    _, tgt, _ = load_data(args, need_source=False)
    model = _build(args)
    run = RunDir(args.out)
    res = generate_pseudo_labels(
        model,
        tgt,
        run.path / "pseudo_labels",
        mode=args.mode,
        threshold=args.threshold,
        batch_size=args.batch_size,
        device=args.device,
        num_classes=args.num_classes,
    )
    plot_confidence_curve(res.histogram, run.plot("pixel_ratio_vs_confidence"))
    print(f"selected pixels: {res.pixel_ratio * 100:.1f}%  → {res.folder}")
    return 0


# ---------------------------------------------------------------------------------------------------------- eval
def _eval_args(p: argparse.ArgumentParser) -> None:
    _data_args(p, source=False)
    _model_args(p, weights="checkpoint")
    p.add_argument(
        "--output-size",
        type=int,
        nargs=2,
        default=None,
        metavar=("H", "W"),
        help="upsample predictions (and resize labels) to this size before scoring; default: each label's own "
        "resolution (Cityscapes: 1024×2048, the released protocol)",
    )


def _eval(args: argparse.Namespace) -> int:
    from bdl.evaluation import evaluate, stage_table
    from dyncore.io import atomic_write_json

    checkpoint = _require_checkpoint(args)
    if args.output_size is not None and min(args.output_size) < 1:
        raise UsageError(f"--output-size must be positive, got {args.output_size}")
    _, _, val = load_data(args, need_source=False)
    model = _build(args)
    scores = evaluate(
        model,
        val,
        num_classes=args.num_classes,
        device=args.device,
        output_size=tuple(args.output_size) if args.output_size else None,
    )
    print(stage_table([{"label": str(checkpoint), **scores.as_dict(), "pixel_ratio": None}]))
    atomic_write_json(Path(args.out) / "eval.json", scores.as_dict(), indent=1)
    return 0


# ---------------------------------------------------------------------------------------------------- demo/bench
def _demo_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--K", type=int, default=2, help="outer rounds")
    p.add_argument("--N", type=int, default=2, help="self-training rounds")


def _demo(args: argparse.Namespace) -> int:
    from bdl.demo import run_demo

    run_demo(Path(args.out), quick=args.quick, seed=args.seed, K=args.K, N=args.N, device=args.device)
    return 0


def _bench_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--base-images", type=int, default=40, help="target images in the 1× case (×10 in the other)")


def _bench(args: argparse.Namespace) -> int:
    from bdl.demo import run_bench

    run_bench(Path(args.out), base_images=args.base_images if not args.quick else 10, seed=args.seed)
    return 0


def main(argv: list[str] | None = None) -> None:
    from dyncore.cli import Command, run_cli

    commands = [
        Command("run", "Algorithm 2 as one resumable program", _run_args, _run),
        Command("train-seg", "train one segmentation model M", _train_seg_args, _train_seg),
        Command(
            "train-translation",
            "train the translation model F (CycleGAN + perceptual loss)",
            _train_translation_args,
            _train_translation,
        ),
        Command("pseudo-label", "write pseudo labels for the target set", _pseudo_args, _pseudo),
        Command("eval", "evaluate M: per-class IoU, 19/16/13-class mIoU", _eval_args, _eval),
        Command("demo", "Algorithm 2 on the embedded street scenes (K=2, N=2)", _demo_args, _demo),
        Command("bench", "pseudo-label statistics memory vs target-set size", _bench_args, _bench),
    ]
    sys.exit(run_cli("bdl", __doc__, commands, argv))
