"""Algorithm 2 (thesis Section 5.3.3) as one resumable program.

Stages, in order (K outer rounds, N self-training rounds)::

    M0                      M⁽⁰⁾: source-only model (Table 5.1's lower bound)
    for k = 1..K:
      F{k}                  train F⁽ᵏ⁾ with Eq. 5.2 (perceptual loss with the latest M, frozen; optional for k = 1)
      translate{k}          S' = F⁽ᵏ⁾(S), cached as PNGs
      M{k}_0                train M₀⁽ᵏ⁾ with Eq. 5.1 (S' with Y_S + adversarial on T)
      for i = 1..N:
        pseudo{k}_{i}       T_st, Ŷ_T from M_{i−1}⁽ᵏ⁾ (max probability threshold)
        M{k}_{i}            train M_i⁽ᵏ⁾ with Eq. 5.3

Every training stage is checkpointed by :class:`dyncore.training.Checkpointer` (model, optimizer, every RNG, step;
config-fingerprinted) every ``ckpt_every`` steps; every finished stage is recorded in ``manifest.json`` (written
atomically) with its metrics. Running again in the same directory resumes at the stage and step where the previous
run stopped; batches are drawn with the global torch RNG, which the checkpoint restores, and every training stage seeds
the RNGs with its own seed BEFORE it builds anything random (D_M, the CycleGAN), so a resumed run ends with exactly
the weights of an uninterrupted one wherever it was killed — mid-stage, between two stages, or inside a checkpoint
write (whose temporary file the next run removes). A different config in an existing run directory raises
:class:`dyncore.training.ConfigMismatchError` before anything is written; every other check (flags, data, model,
sizes) runs when the pipeline is built, before the first stage.

Stage kinds map to handlers (:attr:`BDLPipeline.handlers`); :meth:`BDLPipeline.run` is only the resume loop.

As in the released code each M_i⁽ᵏ⁾ is trained from the initial weights (``warm_start=False``); the last
checkpoint of a stage is its result.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn
from torch.utils.data import Dataset

from bdl.adaptation import (
    AdaptationConfig,
    OutputDiscriminator,
    adaptation_step,
    make_segmenter_optimizer,
    set_lr,
)
from bdl.checks import (
    check_batch_size,
    check_choice,
    check_image_size,
    check_number,
    load_register_function,
    run_register,
)
from bdl.data.scenes import denormalize_image, normalize_image
from bdl.evaluation import evaluate, save_qualitative, stage_table
from bdl.models import build_segmenter, input_requirements
from bdl.pseudo import (
    ConfidenceHistogram,
    PseudoLabeledTarget,
    generate_pseudo_labels,
    plot_confidence_curve,
    predict_probabilities,
)
from bdl.translation import (
    CycleGAN,
    CycleGANConfig,
    PerceptualLoss,
    linear_decay,
    make_translation_optimizers,
    translation_step,
)
from dyncore.io import atomic_directory, atomic_write_json, atomic_write_text, remove_stale_tmp

StepHook = Callable[[str, int], None]


@dataclass
class BDLConfig:
    """Everything that defines a BDL run (part of the checkpoint fingerprint)."""

    K: int = 2
    N: int = 2
    seed: int = 0
    # segmentation model M
    segmenter: str = "deeplabv2"
    encoder: str = "resnet101"
    num_classes: int = 19
    segmenter_kwargs: dict[str, Any] = field(default_factory=dict)
    weights_path: str | None = None  # initial weights (--pretrained): ImageNet backbone or a full model
    # MODULE:FUNCTION callables that register more smp encoders (--register), called before M is built
    register: list[str] = field(default_factory=list)
    adaptation: AdaptationConfig = field(default_factory=AdaptationConfig)
    source_only_steps: int = 80_000
    seg_steps: int = 80_000  # M₀⁽ᵏ⁾ (no pseudo labels)
    seg_steps_st: int = 120_000  # M_i⁽ᵏ⁾, i ≥ 1
    batch_size: int = 1  # source and target images per step (paper: 1 + 1)
    warm_start: bool = False  # False: every M retrains from the initial weights (released code)
    # translation model F
    translation: CycleGANConfig = field(default_factory=CycleGANConfig)
    translation_steps: int = 20_000
    translation_batch: int = 4
    translation_crop: int | None = None  # random square crops for F (paper: 452 on images scaled to width 1024)
    perceptual_first_round: bool = False  # k = 1: perceptual loss with M⁽⁰⁾ (optional in the thesis)
    # pseudo labels
    pseudo_mode: str = "global"  # "global" (thesis, 0.9) or "class_median" (released)
    pseudo_threshold: float = 0.9
    # bookkeeping
    eval_batch: int = 8
    ckpt_every: int = 500
    device: str = "cpu"

    def __post_init__(self) -> None:
        """Validate every field (named with its ``bdl run`` flag) so that a bad value fails before any stage runs."""
        from bdl.models import list_segmenters

        if isinstance(self.adaptation, dict):
            self.adaptation = AdaptationConfig(**self.adaptation)
        if isinstance(self.translation, dict):
            self.translation = CycleGANConfig(**self.translation)
        self.register = list(self.register)
        check_number(self.K, "K", "--K", low=1, integer=True)
        check_number(self.N, "N", "--N", low=0, integer=True)
        # stage seeds are seed·1000 + stage index (≤ 1 + 5K stages): keep them inside numpy's 32-bit range
        check_number(self.seed, "seed", "--seed", low=0, high=(2**32 - 1 - 5 * self.K - 1) // 1000, integer=True)
        check_choice(self.segmenter, "segmenter", "--model", tuple(list_segmenters()))
        check_number(self.num_classes, "num_classes", "--num-classes", low=1, integer=True)
        for name in ("source_only_steps", "seg_steps", "seg_steps_st", "translation_steps"):
            check_number(getattr(self, name), name, f"--{name.replace('_', '-')}", low=0, integer=True)
        check_number(self.batch_size, "batch_size", "--batch-size", low=1, integer=True)
        check_number(self.translation_batch, "translation_batch", "--translation-batch", low=1, integer=True)
        if self.translation_crop is not None and (
            isinstance(self.translation_crop, bool)
            or not isinstance(self.translation_crop, int)
            or self.translation_crop < self.translation.min_size
            or self.translation_crop % 4
        ):
            raise ValueError(
                f"translation_crop (--translation-crop) must be a multiple of 4 and at least "
                f"{self.translation.min_size} (F's PatchGAN), got {self.translation_crop}"
            )
        check_choice(self.pseudo_mode, "pseudo_mode", "--pseudo-mode", ("global", "class_median"))
        check_number(
            self.pseudo_threshold,
            "pseudo_threshold",
            "--pseudo-threshold",
            low=0,
            high=1,
            low_open=True,
            high_open=True,
        )
        check_number(self.eval_batch, "eval_batch", None, low=1, integer=True)
        check_number(self.ckpt_every, "ckpt_every", "--ckpt-every", low=1, integer=True)
        for spec in self.register:
            load_register_function(spec)  # importable now, not after the first stages
        if self.weights_path is not None and not Path(self.weights_path).is_file():
            raise FileNotFoundError(f"--pretrained {self.weights_path}: no such file")

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d.pop("device")  # where it runs does not change what it computes (on CPU), nor its identity
        return d


@dataclass
class Stage:
    name: str  # e.g. "M1_2"
    kind: str  # "source_only" | "translation" | "translate" | "adapt" | "pseudo"
    k: int = 0
    i: int = 0

    @property
    def label(self) -> str:
        sup = str.maketrans("0123456789", "⁰¹²³⁴⁵⁶⁷⁸⁹")
        sub = str.maketrans("0123456789", "₀₁₂₃₄₅₆₇₈₉")
        if self.kind == "source_only":
            return "M⁽⁰⁾ (source only)"
        if self.kind == "adapt":
            return f"M{str(self.i).translate(sub)}⁽{str(self.k).translate(sup)}⁾(F⁽{str(self.k).translate(sup)}⁾)"
        if self.kind == "translation":
            return f"F⁽{str(self.k).translate(sup)}⁾"
        return self.name


def algorithm2_stages(K: int, N: int) -> list[Stage]:
    """The stage list of Algorithm 2."""
    stages = [Stage("M0", "source_only")]
    for k in range(1, K + 1):
        stages += [
            Stage(f"F{k}", "translation", k),
            Stage(f"translate{k}", "translate", k),
            Stage(f"M{k}_0", "adapt", k),
        ]
        for i in range(1, N + 1):
            stages += [Stage(f"pseudo{k}_{i}", "pseudo", k, i), Stage(f"M{k}_{i}", "adapt", k, i)]
    return stages


def dataset_identity(ds: Dataset) -> dict[str, Any]:
    """What identifies a data set in the run config: type, length, resize (a real data set's ``--source-size`` /
    ``--target-size``: another one must not resume this run), content hash (if any), first/last names."""
    names = list(getattr(ds, "names", []))
    resize = getattr(ds, "resize", getattr(ds, "size", None))
    return {
        "type": type(ds).__name__,
        "len": len(ds),  # type: ignore[arg-type]
        "resize": list(resize) if isinstance(resize, tuple | list) else resize,
        "full_res_labels": bool(getattr(ds, "full_res_labels", False)),
        "content_hash": getattr(ds, "content_hash", None),
        "first": names[0] if names else None,
        "last": names[-1] if names else None,
    }


class TranslatedSource(Dataset):
    """S' (PNGs written by the translate stage) with the source labels Y_S: items (S' image, Y_S)."""

    def __init__(self, source: Dataset, folder: Path) -> None:
        self.source, self.folder = source, folder
        n = len(source)  # type: ignore[arg-type]
        missing = [i for i in range(n) if not (folder / f"{i:06d}.png").is_file()]
        if missing:
            raise FileNotFoundError(
                f"translated source folder {folder} lacks {len(missing)} images, e.g. "
                f"{folder / f'{missing[0]:06d}.png'}"
            )
        self.names = getattr(source, "names", None)
        self.num_classes = getattr(source, "num_classes", None)

    def __len__(self) -> int:
        return len(self.source)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        _, label = self.source[index]
        with Image.open(self.folder / f"{index:06d}.png") as im:  # read on demand (S' may be large)
            image = torch.from_numpy(np.array(im.convert("RGB"))).permute(2, 0, 1).contiguous()
        return normalize_image(image), label


def _batch(ds: Dataset, idx: torch.Tensor, device: str) -> tuple[torch.Tensor, torch.Tensor]:
    items = [ds[int(i)] for i in idx]
    return torch.stack([a for a, _ in items]).to(device), torch.stack([b for _, b in items]).to(device)


def _image_size(ds: Dataset) -> tuple[int, int]:
    """(H, W) of the first item's image (from the file header when the data set can tell without decoding)."""
    if hasattr(ds, "image_size"):
        return tuple(ds.image_size(0))  # type: ignore[attr-defined,return-value]
    return tuple(ds[0][0].shape[-2:])  # type: ignore[return-value]


def check_segmenter_input(model: nn.Module, ds: Dataset, what: str, flag: str, *, adversarial: bool) -> None:
    """ValueError naming ``flag`` when the images of ``ds`` are smaller than M's stride (or not multiples of it when
    M needs that), or smaller than 32 px when the output-space discriminator D_M (five stride-2 convs) sees them."""
    size = _image_size(ds)
    stride, divisible = input_requirements(model)
    network = str(getattr(model, "segmenter_name", type(model).__name__))
    check_image_size(size, stride, what, f"the segmentation model M ({network})", flag, divisible=divisible)
    if adversarial:
        check_image_size(size, 32, what, "the output-space discriminator D_M", flag)


def check_translation_input(config: CycleGANConfig, ds: Dataset, what: str, flag: str) -> None:
    """ValueError naming ``flag`` when F cannot take the images of ``ds``: S' = F(S) is computed on whole images,
    whose sides must be multiples of 4 (two stride-2 convs) and at least the PatchGAN's minimum."""
    h, w = _image_size(ds)
    need = config.min_size
    if h % 4 or w % 4 or min(h, w) < need:
        raise ValueError(
            f"{flag}: the {what} images are {h}×{w} but the translation model F needs sides that are multiples of 4 "
            f"and at least {need}; choose another {flag}"
        )


def train_segmenter(
    model: nn.Module,
    source: Dataset,
    target: Dataset | None,
    *,
    steps: int,
    cfg: AdaptationConfig,
    checkpointer: Any,
    batch_size: int = 1,
    ckpt_every: int = 500,
    seed: int = 0,
    device: str = "cpu",
    log: Callable[[str], None] = print,
    name: str = "M",
    step_hook: Callable[[int], None] | None = None,
    on_start: Callable[[], None] | None = None,
) -> nn.Module:
    """Train M for ``steps`` steps with Eq. 5.1/5.3, resumable from ``checkpointer`` (a dyncore Checkpointer).

    ``target`` None: source only (M⁽⁰⁾); a plain target set: Eq. 5.1 (adversarial only); a
    :class:`~bdl.pseudo.PseudoLabeledTarget`: Eq. 5.3 (adversarial + pseudo-label loss). Batches are drawn with the
    global torch RNG (``batch_size`` source + ``batch_size`` target images per step), seeded with ``seed`` before D_M
    is built and restored by the checkpointer on resume. ``on_start`` is called once the resume check has passed (a
    CLI writes its config.json there). A non-finite loss raises :class:`dyncore.training.NonFiniteError` before the
    step's checkpoint is written.
    """
    from dyncore.training import check_finite, seed_everything

    model = model.to(device)
    num_classes = int(getattr(model, "num_classes", 0) or 0)
    for what, ds in (("source", source), ("target", target)):
        dc = getattr(ds, "num_classes", None) if ds is not None else None
        if num_classes and dc is not None and dc != num_classes:
            raise ValueError(
                f"class-count mismatch: the model predicts {num_classes} classes but the {what} data set has {dc}"
            )
    check_batch_size(batch_size, source, "source", flag="--batch-size")
    check_segmenter_input(model, source, "source", "--source-size", adversarial=False)
    if target is not None:
        check_batch_size(batch_size, target, "target", flag="--batch-size")
        check_segmenter_input(model, target, "target", "--target-size", adversarial=cfg.lambda_adv > 0)
    # Seed BEFORE anything random is built (D's initial weights): a fresh start and a resume then agree whatever the
    # process did before this stage (a resume overwrites D and the RNG state from the checkpoint anyway).
    seed_everything(seed)
    disc = None
    if target is not None and cfg.lambda_adv > 0:
        disc = OutputDiscriminator(num_classes or cfg_num_classes(model, source, device), ndf=cfg.ndf).to(device)
    holder = nn.ModuleDict({"m": model} if disc is None else {"m": model, "d": disc})
    opt_m = make_segmenter_optimizer(model, cfg)
    opt_d = torch.optim.Adam(disc.parameters(), lr=cfg.d_lr, betas=cfg.d_betas) if disc is not None else None
    resumed = checkpointer.resume(model=holder, optimizer=opt_m)
    if resumed is None:
        start = 0
    else:
        start = resumed["step"]
        if opt_d is not None:
            opt_d.load_state_dict(resumed["extra"]["opt_d"])
        log(f"  resuming {name} at step {start}/{steps}")
    if on_start is not None:
        on_start()
    with_labels = isinstance(target, PseudoLabeledTarget)
    model.train()
    for step in range(start, steps):
        set_lr(opt_m, step, steps, cfg)
        xs = _batch(source, torch.randint(len(source), (batch_size,)), device)  # type: ignore[arg-type]
        tb = None
        if target is not None:
            xt, yt = _batch(target, torch.randint(len(target), (batch_size,)), device)  # type: ignore[arg-type]
            tb = (xt, yt if with_labels else None)
        losses = adaptation_step(model, disc, opt_m, opt_d, xs, tb, cfg)
        done = step + 1
        for term, value in losses.items():  # before any checkpoint: non-finite weights are never saved
            check_finite(value, what=f"{name}: loss term {term!r} at step {done}", hint=f"lower --lr (now {cfg.lr:g})")
        if done % ckpt_every == 0 or done == steps:
            checkpointer.save(
                done, model=holder, optimizer=opt_m, extra={"opt_d": opt_d.state_dict()} if opt_d is not None else {}
            )
        if step_hook is not None:
            step_hook(done)
    if not checkpointer.exists():  # zero-step stage: still leave the result
        checkpointer.save(
            0, model=holder, optimizer=opt_m, extra={"opt_d": opt_d.state_dict()} if opt_d is not None else {}
        )
    return model


def random_crop(x: torch.Tensor, size: int) -> torch.Tensor:
    """One random size×size crop (global torch RNG) of a batch (B, C, H, W); the whole image when it is smaller."""
    h, w = x.shape[-2:]
    ch, cw = min(size, h), min(size, w)
    top = int(torch.randint(0, h - ch + 1, ()))
    left = int(torch.randint(0, w - cw + 1, ()))
    return x[..., top : top + ch, left : left + cw]


def cfg_num_classes(model: nn.Module, source: Dataset, device: str) -> int:
    """Number of classes M predicts (from one forward pass when the model has no ``num_classes``)."""
    with torch.no_grad():
        was = model.training
        model.eval()
        c = int(model(source[0][0][None].to(device)).shape[1])
        model.train(was)
    return c


def train_translation(
    source: Dataset,
    target: Dataset,
    config: CycleGANConfig,
    *,
    steps: int,
    checkpointer: Any,
    batch_size: int = 4,
    perceptual_model: nn.Module | None = None,
    crop: int | None = None,
    ckpt_every: int = 500,
    seed: int = 0,
    device: str = "cpu",
    log: Callable[[str], None] = print,
    name: str = "F",
    step_hook: Callable[[int], None] | None = None,
    on_start: Callable[[], None] | None = None,
) -> CycleGAN:
    """Train F, F⁻¹ (Eq. 5.2) for ``steps`` steps (lr constant for the first half, then linear to 0), resumable.

    ``perceptual_model``: the segmentation model M used (frozen, eval mode) by the perceptual loss of Eq. 5.6;
    None trains a plain CycleGAN (k = 1 in Algorithm 2).
    """
    from dyncore.training import check_finite, seed_everything

    check_batch_size(batch_size, source, "source", flag="--translation-batch")
    check_batch_size(batch_size, target, "target", flag="--translation-batch")
    check_translation_input(config, source, "source", "--source-size")
    check_translation_input(config, target, "target", "--target-size")
    seed_everything(seed)  # before F, F⁻¹ and both discriminators are initialised (see train_segmenter)
    cyc = CycleGAN(config).to(device)
    opt_g, opt_d = make_translation_optimizers(cyc)
    perceptual = None
    if perceptual_model is not None:
        perceptual = PerceptualLoss(
            perceptual_model.to(device), lambda_per=config.lambda_per, lambda_per_recon=config.lambda_per_recon
        )
    resumed = checkpointer.resume(model=cyc, optimizer=opt_g)
    if resumed is None:
        start = 0
    else:
        start = resumed["step"]
        opt_d.load_state_dict(resumed["extra"]["opt_d"])
        cyc.pool_s.load_state(resumed["extra"]["pool_s"])
        cyc.pool_t.load_state(resumed["extra"]["pool_t"])
        log(f"  resuming {name} at step {start}/{steps}")
    if on_start is not None:
        on_start()
    cyc.train()

    def extra() -> dict[str, Any]:
        return {"opt_d": opt_d.state_dict(), "pool_s": cyc.pool_s.state(), "pool_t": cyc.pool_t.state()}

    for step in range(start, steps):
        factor = linear_decay(step, steps)
        for opt in (opt_g, opt_d):
            for g in opt.param_groups:
                g["lr"] = config.lr * factor
        xs, _ = _batch(source, torch.randint(len(source), (batch_size,)), device)  # type: ignore[arg-type]
        xt, _ = _batch(target, torch.randint(len(target), (batch_size,)), device)  # type: ignore[arg-type]
        if crop is not None:
            xs, xt = random_crop(xs, crop), random_crop(xt, crop)
        losses = translation_step(cyc, opt_g, opt_d, xs, xt, perceptual)
        done = step + 1
        for term, value in losses.items():
            check_finite(
                value,
                what=f"{name}: loss term {term!r} at step {done}",
                hint=f"lower --translation-lr (now {config.lr:g})",
            )
        if done % ckpt_every == 0 or done == steps:
            checkpointer.save(done, model=cyc, optimizer=opt_g, extra=extra())
        if step_hook is not None:
            step_hook(done)
    if not checkpointer.exists():
        checkpointer.save(0, model=cyc, optimizer=opt_g, extra=extra())
    return cyc


_MODEL_KINDS = ("source_only", "adapt")  # stages whose result is a segmentation model M (a row of the stage table)


class BDLPipeline:
    """Run Algorithm 2 in ``run_dir`` on (source with labels, target without, target validation with labels).

    Args:
        config: the run's :class:`BDLConfig`.
        run_dir: output directory (created); re-running in it resumes.
        source, target, val: datasets yielding (image (3, H, W) in [-1, 1], label (H, W) int64); target labels are
            never used for training, only ``val`` labels for evaluation (they may be larger than the images: the
            predictions are upsampled to the label's own resolution for scoring).
        step_hook: called as ``hook(stage_name, completed_steps)`` after every optimisation step (a test uses it to
            simulate a kill).
        log: a print-like function for progress lines.

    Everything that can be checked without training is checked here, before anything is written: the config, the
    ``register`` functions, the encoder, class counts, batch sizes against the data set sizes, image sizes against
    the networks' strides.
    """

    def __init__(
        self,
        config: BDLConfig,
        run_dir: str | os.PathLike[str],
        *,
        source: Dataset,
        target: Dataset,
        val: Dataset,
        step_hook: StepHook | None = None,
        log: Callable[[str], None] = print,
    ) -> None:
        from dyncore.training import Checkpointer

        self.config, self.run_dir = config, Path(run_dir)
        self.source, self.target, self.val = source, target, val
        self.step_hook, self.log = step_hook, log
        for name, ds in (("source", source), ("target", target), ("val", val)):
            c = getattr(ds, "num_classes", config.num_classes)
            if c != config.num_classes:
                raise ValueError(
                    f"class-count mismatch: the segmentation model M predicts {config.num_classes} classes but the "
                    f"{name} data set has {c}"
                )
        run_register(config.register)
        self._check_data(self._new_segmenter())
        self.stages = algorithm2_stages(config.K, config.N)
        self.run_config = {
            "bdl": config.to_dict(),
            "data": {
                "source": dataset_identity(source),
                "target": dataset_identity(target),
                "val": dataset_identity(val),
            },
        }
        self.ckpt_root = self.run_dir / "checkpoints"
        self._run_ckpt = Checkpointer(self.ckpt_root, self.run_config)
        self.manifest_path = self.run_dir / "manifest.json"
        self.device = config.device
        #: stage kind → handler(stage) -> metrics; a handler runs only for a stage the manifest does not list as done
        self.handlers: dict[str, Callable[[Stage], dict[str, Any]]] = {
            "source_only": self._run_source_only,
            "translation": self._run_translation,
            "translate": self._run_translate,
            "adapt": self._run_adapt,
            "pseudo": self._run_pseudo,
        }

    # ------------------------------------------------------------------------------------------------- helpers
    def _check_data(self, model: nn.Module) -> None:
        """Batch sizes fit the data; image sizes fit M's stride, D_M's five stride-2 convs and F's PatchGAN."""
        c = self.config
        for what, ds, flag in (("source", self.source, "--source-size"), ("target", self.target, "--target-size")):
            check_batch_size(c.batch_size, ds, what, flag="--batch-size")
            check_batch_size(c.translation_batch, ds, what, flag="--translation-batch")
            check_segmenter_input(model, ds, what, flag, adversarial=what == "target" and c.adaptation.lambda_adv > 0)
            check_translation_input(c.translation, ds, what, flag)
        check_segmenter_input(model, self.val, "val", "--target-size", adversarial=False)

    def _new_segmenter(self) -> nn.Module:
        c = self.config
        return build_segmenter(c.segmenter, num_classes=c.num_classes, encoder=c.encoder, **c.segmenter_kwargs)

    def _stage_seed(self, stage: Stage) -> int:
        return self.config.seed * 1000 + [s.name for s in self.stages].index(stage.name) + 1

    def _checkpointer(self, stage: Stage | str) -> Any:
        from dyncore.training import Checkpointer

        return Checkpointer(self.ckpt_root / (stage if isinstance(stage, str) else stage.name), self.run_config)

    def _previous_m(self, stage: Stage) -> str:
        """The latest M before ``stage`` in Algorithm 2 ("init" before M⁽⁰⁾)."""
        before = self.stages[: [s.name for s in self.stages].index(stage.name)]
        return next((s.name for s in reversed(before) if s.kind in _MODEL_KINDS), "init")

    def _translated_dir(self, k: int) -> Path:
        return self.run_dir / "translated" / f"k{k}"

    def _pseudo_dir(self, k: int, i: int) -> Path:
        return self.run_dir / "pseudo" / f"k{k}_i{i}"

    def _load_manifest(self) -> dict[str, Any]:
        if self.manifest_path.is_file():
            return json.loads(self.manifest_path.read_text())
        return {"stages": {}, "order": [s.name for s in self.stages]}

    def _save_manifest(self, manifest: dict[str, Any]) -> None:
        atomic_write_json(self.manifest_path, manifest, indent=1)

    def _hook(self, stage: Stage) -> Callable[[int], None] | None:
        if self.step_hook is None:
            return None
        hook = self.step_hook
        return lambda step: hook(stage.name, step)

    def _segmenter_from(self, stage_name: str) -> nn.Module:
        """The final M of a finished stage (its last checkpoint)."""
        from dyncore.training import load_state_dict_strict

        model = self._new_segmenter()
        if stage_name == "init":
            state = self._run_ckpt.load("init.pt")["model"]
        else:
            state = self._checkpointer(stage_name).load()["model"]
            state = {k.removeprefix("m."): v for k, v in state.items() if k.startswith("m.")}
        load_state_dict_strict(model, state)
        return model.to(self.device)

    def _initial_model(self) -> None:
        """init.pt: M's initial weights (seeded, or ``weights_path``). Resuming checks the run config against it
        (ConfigMismatchError before anything is written)."""
        from dyncore.training import seed_everything

        init = self._new_segmenter()
        if self._run_ckpt.exists("init.pt"):
            self._run_ckpt.resume(model=init, name="init.pt")  # raises ConfigMismatchError for another config
            return
        seed_everything(self.config.seed)
        init = self._new_segmenter()
        if self.config.weights_path is not None:
            from bdl.models import load_pretrained

            load_pretrained(init, self.config.weights_path)
        self._run_ckpt.save(0, model=init, name="init.pt")

    # --------------------------------------------------------------------------------------------------- stages
    def _train_segmenter(
        self, stage: Stage, source: Dataset, target: Dataset | None, init_from: str, steps: int
    ) -> nn.Module:
        """M⁽⁰⁾ (``target`` None: source only), M₀⁽ᵏ⁾ (target without labels) or M_i⁽ᵏ⁾ (target with Ŷ_T)."""
        c = self.config
        return train_segmenter(
            self._segmenter_from(init_from),
            source,
            target,
            steps=steps,
            cfg=c.adaptation,
            checkpointer=self._checkpointer(stage),
            batch_size=c.batch_size,
            ckpt_every=c.ckpt_every,
            seed=self._stage_seed(stage),
            device=self.device,
            log=self.log,
            name=stage.name,
            step_hook=self._hook(stage),
        )

    def _run_source_only(self, stage: Stage) -> dict[str, Any]:
        """M⁽⁰⁾: source images with their labels only."""
        model = self._train_segmenter(stage, self.source, None, "init", self.config.source_only_steps)
        return self._measure(stage, model)

    def _run_adapt(self, stage: Stage) -> dict[str, Any]:
        """M_i⁽ᵏ⁾: S' with Y_S + adversarial on T (Eq. 5.1), + pseudo labels of pseudo{k}_{i} when i ≥ 1 (Eq. 5.3)."""
        c = self.config
        src = TranslatedSource(self.source, self._translated_dir(stage.k))
        tgt: Dataset = (
            self.target if stage.i == 0 else PseudoLabeledTarget(self.target, self._pseudo_dir(stage.k, stage.i))
        )
        init_from = self._previous_m(stage) if c.warm_start else "init"
        steps = c.seg_steps if stage.i == 0 else c.seg_steps_st
        return self._measure(stage, self._train_segmenter(stage, src, tgt, init_from, steps))

    def _run_translation(self, stage: Stage) -> dict[str, Any]:
        """F⁽ᵏ⁾ with Eq. 5.2; the perceptual loss uses the latest M (frozen) for k > 1 (optionally for k = 1)."""
        c = self.config
        use_per = stage.k > 1 or c.perceptual_first_round
        train_translation(
            self.source,
            self.target,
            c.translation,
            steps=c.translation_steps,
            batch_size=c.translation_batch,
            checkpointer=self._checkpointer(stage),
            crop=c.translation_crop,
            perceptual_model=self._segmenter_from(self._previous_m(stage)) if use_per else None,
            ckpt_every=c.ckpt_every,
            seed=self._stage_seed(stage),
            device=self.device,
            log=self.log,
            name=stage.name,
            step_hook=self._hook(stage),
        )
        return {}

    @torch.no_grad()
    def _run_translate(self, stage: Stage) -> dict[str, Any]:
        """S' = F⁽ᵏ⁾(S) as PNGs in ``translated/k{k}`` (written into a temporary directory, then renamed)."""
        from dyncore.training import load_state_dict_strict

        out = self._translated_dir(stage.k)
        if out.is_dir():  # finished before the manifest was updated
            return {}
        cyc = CycleGAN(self.config.translation)
        load_state_dict_strict(cyc, self._checkpointer(f"F{stage.k}").load()["model"])
        g = cyc.g_st.to(self.device).eval()
        with atomic_directory(out, overwrite=False) as tmp:
            n = len(self.source)  # type: ignore[arg-type]
            for start in range(0, n, self.config.eval_batch):
                idx = list(range(start, min(start + self.config.eval_batch, n)))
                x = torch.stack([self.source[i][0] for i in idx]).to(self.device)
                y = denormalize_image(g(x).cpu())
                for j, i in enumerate(idx):
                    Image.fromarray(y[j].permute(1, 2, 0).numpy()).save(tmp / f"{i:06d}.png")
        return {}

    def _run_pseudo(self, stage: Stage) -> dict[str, Any]:
        """T_st, Ŷ_T from the previous M (max probability threshold), in ``pseudo/k{k}_i{i}``."""
        c = self.config
        folder = self._pseudo_dir(stage.k, stage.i)
        if not folder.is_dir():  # else: finished before the manifest was updated
            res = generate_pseudo_labels(
                self._segmenter_from(self._previous_m(stage)),
                self.target,
                folder,
                mode=c.pseudo_mode,  # type: ignore[arg-type]
                threshold=c.pseudo_threshold,
                batch_size=c.eval_batch,
                device=self.device,
                num_classes=c.num_classes,
            )
            plot_confidence_curve(
                res.histogram,
                self.run_dir / "plots" / f"confidence_{stage.name}.png",
                title=f"pseudo labels {stage.name}",
            )
        meta = json.loads((folder / "pseudo_labels.json").read_text())
        return {"pixel_ratio": meta["pixel_ratio"], "thresholds": meta["thresholds"]}

    def _measure(self, stage: Stage, model: nn.Module) -> dict[str, Any]:
        """mIoU on ``val`` and the selected-pixel ratio on ``target`` at the threshold (streamed histogram)."""
        scores = evaluate(
            model, self.val, num_classes=self.config.num_classes, batch_size=self.config.eval_batch, device=self.device
        )
        hist = ConfidenceHistogram(self.config.num_classes)
        n = len(self.target)  # type: ignore[arg-type]
        for start in range(0, n, self.config.eval_batch):
            x = torch.stack([self.target[i][0] for i in range(start, min(start + self.config.eval_batch, n))])
            hist.update(predict_probabilities(model, x.to(self.device)).cpu())
        ratio = float(hist.ratio_above([self.config.pseudo_threshold])[0])
        plots = self.run_dir / "plots"
        save_qualitative(
            model,
            self.val,
            plots / f"qualitative_{stage.name}.png",
            threshold=self.config.pseudo_threshold,
            device=self.device,
        )
        plot_confidence_curve(hist, plots / f"confidence_{stage.name}.png", title=stage.label)
        return {"label": stage.label, **scores.as_dict(), "pixel_ratio": ratio}

    def _log_stage(self, stage: Stage, metrics: dict[str, Any], seconds: float) -> None:
        if stage.kind in _MODEL_KINDS:
            self.log(
                f"  {stage.label:<22} mIoU-19 {metrics['miou19']:5.1f}  pixel ratio "
                f"{metrics['pixel_ratio'] * 100:5.1f}%  ({seconds:.1f}s)"
            )
        else:
            self.log(f"  {stage.name:<22} done ({seconds:.1f}s)")

    # ------------------------------------------------------------------------------------------------------ run
    def run(self, *, on_start: Callable[[], None] | None = None) -> list[dict[str, Any]]:
        """Run (or resume) every stage; returns the per-stage rows (label, mIoU-19/16/13, IoUs, pixel ratio).

        ``on_start`` is called once the resume check has passed (e.g. to write the CLI's ``config.json``: a refused
        resume must leave the directory as it was). Temporaries of writes a killed run left behind are removed first.
        """
        from dyncore.training import save_checkpoint

        self.run_dir.mkdir(parents=True, exist_ok=True)
        remove_stale_tmp(self.run_dir)
        self._initial_model()
        if on_start is not None:
            on_start()
        manifest = self._load_manifest()
        rows: list[dict[str, Any]] = []
        for stage in self.stages:
            info = manifest["stages"].get(stage.name)
            if info is None or info.get("status") != "done":
                t0 = time.time()
                metrics = self.handlers[stage.kind](stage)
                manifest["stages"][stage.name] = {
                    "status": "done",
                    "seconds": round(time.time() - t0, 2),
                    "metrics": metrics,
                }
                self._save_manifest(manifest)
                self._log_stage(stage, metrics, time.time() - t0)
            if stage.kind in _MODEL_KINDS:
                rows.append({"stage": stage.name, **manifest["stages"][stage.name]["metrics"]})
        last_m = next(s.name for s in reversed(self.stages) if s.kind in _MODEL_KINDS)
        final = self._segmenter_from(last_m)
        save_checkpoint(self.run_dir / "final_model.pt", {"model": final.state_dict(), "stage": last_m})
        atomic_write_text(self.run_dir / "stage_table.md", stage_table(rows) + "\n")
        return rows


def run_bdl(
    config: BDLConfig,
    run_dir: str | os.PathLike[str],
    *,
    source: Dataset,
    target: Dataset,
    val: Dataset,
    step_hook: StepHook | None = None,
    log: Callable[[str], None] = print,
) -> list[dict[str, Any]]:
    """Run or resume Algorithm 2; see :class:`BDLPipeline`."""
    return BDLPipeline(config, run_dir, source=source, target=target, val=val, step_hook=step_hook, log=log).run()
