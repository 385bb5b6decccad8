"""drt — Dynamic Residual Transfer for multi-source domain adaptation (thesis Chapter 6).

Commands:
  train   train a static or DRT network on Digits-5 (embedded, offline) or DomainNet lists you already have;
          re-running with the same --out resumes every seed from its last checkpoint (finished seeds are re-evaluated).
          Flags left unset take the backbone's defaults (drt.defaults: the digit CNN's demo-stable values for
          digits5, the thesis' ResNet values for domainnet); config.json records the resolved values
  eval    evaluate a checkpoint written by `drt train` (F1, F2, ensemble accuracy on the target test split)
  demo    Digits-5 leave-one-domain-out: static vs DRT, source-only / MCD / DRT+ST, seeds → summary.json
  bench   ResNet-50-DRT ÷ ResNet-50: MAdds and CPU latency ratios → bench.json
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any

import torch

from drt.defaults import BACKBONE_DEFAULTS, DEFAULTED_FIELDS, backbone_for_data, help_text, resolve
from drt.layers import RESIDUAL_KINDS, DynamicResidualConfig
from drt.losses import MCDConfig
from drt.models import RESNET_STRIDE, DomainAdaptationNet, digit_cnn, resnet_backbone
from drt.train import METHODS, SELECTION, DATask, TrainConfig, digits5_task, domainnet_task, evaluate, mean_std
from dyncore.cli import Command, RunDir, UsageError, run_cli
from dyncore.io import atomic_torch_save
from dyncore.training import (
    ConfigMismatchError,
    JSONLLogger,
    check_finite_state,
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
        "--img-size", "--image-size", dest="img_size", type=int, default=None,
        help=f"DomainNet crop size (default 224, resized from 256/224 of it; at least the ResNet stride "
        f"{RESNET_STRIDE}); Digits-5 images are 32×32",
    )  # fmt: skip
    p.add_argument(
        "--method", choices=METHODS, default="mcd", help="alignment loss L_d (Table 6.2); m3sda: per-source heads"
    )


#: the arguments that define the model and the task; a resumed run must agree on them (Checkpointer config). Paths
#: (--root, --pretrained: only the initialisation, which a resume replaces) may move between runs.
_RUN_KEYS = ("data", "target", "sources", "static", "residual", "num_bases", "width", "depth", "limit", "img_size")


def _train_args(p: argparse.ArgumentParser) -> None:
    _model_args(p)
    p.add_argument("--steps", type=int, default=2000, help="optimisation steps")
    p.add_argument("--eval-every", type=int, default=250, help="evaluate/select every N steps")
    hp = p.add_argument_group(
        "backbone-dependent hyper-parameters",
        "unset flags take the defaults of the backbone the data trains (drt.defaults.BACKBONE_DEFAULTS): "
        + "; ".join(f"{name}: {d.source}" for name, d in BACKBONE_DEFAULTS.items()),
    )
    hp.add_argument("--batch-size", type=int, default=None, help="source and target images per step (each); "
                    + help_text("batch_size"))  # fmt: skip
    hp.add_argument("--lr", type=float, default=None, help="SGD learning rate; " + help_text("lr"))
    hp.add_argument("--weight-decay", "--wd", dest="weight_decay", type=float, default=None,
                    help="SGD weight decay; " + help_text("weight_decay"))  # fmt: skip
    hp.add_argument("--new-lr-mult", type=float, default=None,
                    help="lr × this for residuals/heads/discriminators; " + help_text("new_lr_mult"))  # fmt: skip
    hp.add_argument("--eta", type=float, default=None, help="MCD: η, weight of the discrepancy; " + help_text("eta"))
    hp.add_argument("--grl-coeff", type=float, default=None,
                    help="MCD: gradient-reversal coefficient; " + help_text("grl_coeff"))  # fmt: skip
    hp.add_argument("--gamma", type=float, default=None, help="MCD: γ, class-balance weight; " + help_text("gamma"))
    hp.add_argument("--label-smoothing", type=float, default=None,
                    help="MCD: label smoothing of the source CE; " + help_text("label_smoothing"))  # fmt: skip
    hp.add_argument("--trade-off", type=float, default=None,
                    help="λ of Eq. 6.6 for dann/m3sda (m3sda: moments scale with the features); "
                    + help_text("trade_off"))  # fmt: skip
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
        raise UsageError("--root is required with --data domainnet")
    crop = _img_size(args)
    from torchvision.transforms import v2 as T

    norm = [
        T.ToImage(),
        T.ToDtype(torch.float32, scale=True),
        T.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225]),
    ]
    resize = round(crop * 256 / 224)  # the thesis' Resize 256 → crop 224, scaled
    train_tf = T.Compose([T.Resize(resize), T.RandomHorizontalFlip(), T.RandomCrop(crop), *norm])
    test_tf = T.Compose([T.Resize(resize), T.CenterCrop(crop), *norm])
    return domainnet_task(
        args.root,
        args.target,
        sources=args.sources,
        train_transform=train_tf,
        test_transform=test_tf,
        seed=seed,
        with_domain=with_domain,
    )


def _img_size(args: argparse.Namespace) -> int:
    """The image side the network will see; rejects sizes it cannot take before anything is built."""
    size = getattr(args, "img_size", None)
    if args.data == "digits5":
        if size not in (None, 32):
            raise UsageError(f"--img-size {size}: Digits-5 images are 32×32 (the digit CNN's fixed input size)")
        return 32
    size = 224 if size is None else size
    if size < RESNET_STRIDE:
        raise UsageError(
            f"--img-size {size} is smaller than the ResNet's total stride {RESNET_STRIDE}: use at least {RESNET_STRIDE}"
        )
    return int(size)


def _check_args(args: argparse.Namespace) -> None:
    """Flag values that cannot work, rejected before any data or model is built."""
    _img_size(args)
    positive = {"steps": args.steps, "eval_every": args.eval_every, "st_steps": args.st_steps}
    if args.batch_size is not None:
        positive["batch_size"] = args.batch_size
    for name, value in positive.items():
        if value < 1:
            raise UsageError(f"--{name.replace('_', '-')} must be >= 1, got {value}")
    if args.batch_size is not None and args.batch_size < 2:
        raise UsageError(f"--batch-size must be >= 2 (BatchNorm needs two images), got {args.batch_size}")
    for name in ("lr", "weight_decay", "new_lr_mult", "eta", "grl_coeff", "gamma", "label_smoothing", "trade_off"):
        value = getattr(args, name)
        if value is None:
            continue
        if not math.isfinite(value) or value < 0 or (name == "lr" and value == 0):
            bound = "> 0" if name == "lr" else ">= 0"
            raise UsageError(f"--{name.replace('_', '-')} must be a finite number {bound}, got {value}")


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


def _resolved_config(args: argparse.Namespace) -> dict[str, Any]:
    """Fill every backbone-dependent flag left unset from :data:`drt.defaults.BACKBONE_DEFAULTS` (in ``args``) and
    return the config.json content: every flag with its resolved value, and which table supplied the defaults."""
    backbone = backbone_for_data(args.data)
    given = {name: getattr(args, name) for name in (*DEFAULTED_FIELDS, "trade_off")}
    for name, value in resolve(backbone, args.method, given).items():
        setattr(args, name, value)
    config = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if not callable(v)}
    config["defaults"] = {
        "backbone": backbone,
        "source": BACKBONE_DEFAULTS[backbone].source,
        "from_table": sorted(k for k, v in given.items() if v is None),  # the flags the user did not pass
    }
    return config


def _train(args: argparse.Namespace) -> int:
    from drt.train import train, train_with_self_training

    _check_args(args)
    run = RunDir(args.out)
    config = _resolved_config(args)
    log = get_logger("drt", run.path / "train.log")
    log.info(
        "defaults of the %s backbone for the flags not given (%s): %s",
        config["defaults"]["backbone"],
        config["defaults"]["source"],
        {k: getattr(args, k) for k in config["defaults"]["from_table"]},
    )
    env = init_distributed()
    main_process = env is None or env.is_main  # writes the run-level files (config, result, model.pt)
    seeds = args.seeds or [args.seed]
    written: list[bool] = []

    def write_config(step: int) -> None:  # once the first seed's resume check passed (train's on_start)
        if not written and main_process:
            run.write_config(config)
            written.append(True)

    # seeds finished by an earlier (interrupted or complete) run of this directory: carried, not forgotten
    per_seed: dict[str, Any] = {
        k: v
        for k, v in run.read_result().get("per_seed", {}).items()
        if (run.path / f"seed{k}" / "checkpoints" / "last.pt").is_file()
    }
    for seed in seeds:
        task = _task(args, seed)
        torch.manual_seed(seed)
        model = _build(args, task)
        cfg = TrainConfig(
            method=args.method,
            steps=args.steps,
            batch_size=args.batch_size,
            lr=args.lr,
            weight_decay=args.weight_decay,
            new_lr_mult=args.new_lr_mult,
            mcd=MCDConfig(
                grl_coeff=args.grl_coeff, eta=args.eta, gamma=args.gamma, label_smoothing=args.label_smoothing
            ),
            eval_every=args.eval_every,
            select_on=args.select_on,
            st_threshold=args.st_threshold,
            st_steps=args.st_steps,
            seed=seed,
            device=args.device,
            trade_off=args.trade_off,
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
                _, result = train_with_self_training(
                    model, task.sources, task.target, out_dir=seed_dir, env=env, on_start=write_config, **kw
                )
            else:
                result = train(model, task.sources, task.target, out_dir=seed_dir, env=env, on_start=write_config, **kw)
        except ConfigMismatchError as e:  # --out holds a run with other settings: refuse, do not overwrite it
            log.error("%s", e)
            raise
        if main_process:
            atomic_torch_save(seed_dir / "model.pt", model.state_dict())
        log.info(
            "seed %d: selected step %d (on %s) target %s",
            seed,
            result.best_step,
            result.select_on,
            {k: round(v, 2) for k, v in result.target_test.items()},
        )
        entry = {
            "target_test": result.target_test,
            "source_val": result.source_val,
            "best_step": result.best_step,
            "collapse": result.collapse,
        }
        first_time = per_seed.get(str(seed)) != entry
        per_seed[str(seed)] = entry
        if not main_process:
            continue
        _write_result(run, seeds, per_seed)
        if first_time:  # one run-level line per finished seed, not one per rerun
            step = len(JSONLLogger.read(run.metrics_path)) if run.metrics_path.exists() else 0
            run.metrics.log(step=step, seed=seed, **{f"target/{k}": v for k, v in result.target_test.items()})
    if not main_process:
        return 0
    result_json = _write_result(run, seeds, per_seed)
    summary = result_json["target_test"]
    log.info(
        "target accuracy over %d seed(s): %s",
        len(seeds),
        {k: f"{s['mean']:.2f} ± {s['std']:.2f}" for k, s in summary.items()},
    )
    collapse = result_json["collapse"]
    if collapse["detected"]:
        log.warning(
            "COLLAPSE in %d of %d seed(s) %s: their accuracies are not results (see result.json 'collapse'); lower "
            "the alignment weights (--eta, --grl-coeff, --trade-off) or --lr",
            len(collapse["seeds"]),
            len(seeds),
            collapse["seeds"],
        )
    return 0


def _write_result(run: RunDir, seeds: list[int], per_seed: dict[str, Any]) -> dict[str, Any]:
    """result.json: the per-seed results known so far (carried across reruns), mean ± std over the requested
    seeds that have finished, and the collapse verdict."""
    done = [s for s in seeds if str(s) in per_seed]
    finals: dict[str, list[float]] = {}
    for s in done:
        for k, v in per_seed[str(s)]["target_test"].items():
            finals.setdefault(k, []).append(v)
    collapsed = [s for s in done if (per_seed[str(s)].get("collapse") or {}).get("collapsed")]
    return run.update_result(
        seeds=seeds,
        finished_seeds=done,
        per_seed=per_seed,
        target_test={k: dict(zip(("mean", "std"), mean_std(v))) for k, v in finals.items()},
        collapse={
            "detected": bool(collapsed),
            "seeds": collapsed,
            "reasons": {str(s): per_seed[str(s)]["collapse"]["reasons"] for s in collapsed},
        },
    )


def _eval_args(p: argparse.ArgumentParser) -> None:
    _model_args(p)
    p.add_argument(
        "--checkpoint", "--weights", dest="checkpoint", type=Path, required=True, help="model.pt written by `drt train`"
    )


def _eval(args: argparse.Namespace) -> int:
    _img_size(args)
    state = load_checkpoint(args.checkpoint)  # first: a bad file fails before any data or model is built
    state = state.get("model", state) if isinstance(state, dict) else state
    check_finite_state(state, source=str(args.checkpoint))
    task = _task(args, args.seed)
    model = _build(args, task)
    load_state_dict_strict(model, state)
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
