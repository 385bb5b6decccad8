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
run stopped; batches are drawn with the global torch RNG, which the checkpoint restores, so a resumed run ends with
exactly the weights of an uninterrupted one. A different config in an existing run directory raises
:class:`dyncore.training.ConfigMismatchError` before anything is written.

As in the released code each M_i⁽ᵏ⁾ is trained from the initial weights (``warm_start=False``); the last
checkpoint of a stage is its result.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import tempfile
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
from bdl.data.scenes import denormalize_image, normalize_image
from bdl.evaluation import evaluate, save_qualitative, stage_table
from bdl.models import build_segmenter
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
    weights_path: str | None = None
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
        if isinstance(self.adaptation, dict):
            self.adaptation = AdaptationConfig(**self.adaptation)
        if isinstance(self.translation, dict):
            self.translation = CycleGANConfig(**self.translation)
        if self.K < 1 or self.N < 0:
            raise ValueError(f"need K ≥ 1 and N ≥ 0, got K={self.K}, N={self.N}")
        if self.translation_crop is not None and (self.translation_crop < 4 or self.translation_crop % 4):
            raise ValueError(f"translation_crop must be a positive multiple of 4, got {self.translation_crop}")
        if self.pseudo_mode not in ("global", "class_median"):
            raise ValueError(f"pseudo_mode must be 'global' or 'class_median', got {self.pseudo_mode!r}")

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


def _write_json_atomic(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=1, default=str)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def dataset_identity(ds: Dataset) -> dict[str, Any]:
    """What identifies a data set in the run config: type, size, content hash (if any), first/last names."""
    names = list(getattr(ds, "names", []))
    return {
        "type": type(ds).__name__,
        "len": len(ds),  # type: ignore[arg-type]
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
) -> nn.Module:
    """Train M for ``steps`` steps with Eq. 5.1/5.3, resumable from ``checkpointer`` (a dyncore Checkpointer).

    ``target`` None: source only (M⁽⁰⁾); a plain target set: Eq. 5.1 (adversarial only); a
    :class:`~bdl.pseudo.PseudoLabeledTarget`: Eq. 5.3 (adversarial + pseudo-label loss). Batches are drawn with the
    global torch RNG (``batch_size`` source + ``batch_size`` target images per step), seeded with ``seed`` on a fresh
    start and restored by the checkpointer on resume.
    """
    from dyncore.training import seed_everything

    model = model.to(device)
    num_classes = int(getattr(model, "num_classes", 0) or 0)
    for what, ds in (("source", source), ("target", target)):
        dc = getattr(ds, "num_classes", None) if ds is not None else None
        if num_classes and dc is not None and dc != num_classes:
            raise ValueError(
                f"class-count mismatch: the model predicts {num_classes} classes but the {what} data set has {dc}"
            )
    disc = None
    if target is not None and cfg.lambda_adv > 0:
        disc = OutputDiscriminator(num_classes or cfg_num_classes(model, source, device), ndf=cfg.ndf).to(device)
    holder = nn.ModuleDict({"m": model} if disc is None else {"m": model, "d": disc})
    opt_m = make_segmenter_optimizer(model, cfg)
    opt_d = torch.optim.Adam(disc.parameters(), lr=cfg.d_lr, betas=cfg.d_betas) if disc is not None else None
    resumed = checkpointer.resume(model=holder, optimizer=opt_m)
    if resumed is None:
        seed_everything(seed)
        start = 0
    else:
        start = resumed["step"]
        if opt_d is not None:
            opt_d.load_state_dict(resumed["extra"]["opt_d"])
        log(f"  resuming {name} at step {start}/{steps}")
    with_labels = isinstance(target, PseudoLabeledTarget)
    model.train()
    for step in range(start, steps):
        set_lr(opt_m, step, steps, cfg)
        xs = _batch(source, torch.randint(len(source), (batch_size,)), device)  # type: ignore[arg-type]
        tb = None
        if target is not None:
            xt, yt = _batch(target, torch.randint(len(target), (batch_size,)), device)  # type: ignore[arg-type]
            tb = (xt, yt if with_labels else None)
        adaptation_step(model, disc, opt_m, opt_d, xs, tb, cfg)
        done = step + 1
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
) -> CycleGAN:
    """Train F, F⁻¹ (Eq. 5.2) for ``steps`` steps (lr constant for the first half, then linear to 0), resumable.

    ``perceptual_model``: the segmentation model M used (frozen, eval mode) by the perceptual loss of Eq. 5.6;
    None trains a plain CycleGAN (k = 1 in Algorithm 2).
    """
    from dyncore.training import seed_everything

    cyc = CycleGAN(config).to(device)
    opt_g, opt_d = make_translation_optimizers(cyc)
    perceptual = None
    if perceptual_model is not None:
        perceptual = PerceptualLoss(
            perceptual_model.to(device), lambda_per=config.lambda_per, lambda_per_recon=config.lambda_per_recon
        )
    resumed = checkpointer.resume(model=cyc, optimizer=opt_g)
    if resumed is None:
        seed_everything(seed)
        start = 0
    else:
        start = resumed["step"]
        opt_d.load_state_dict(resumed["extra"]["opt_d"])
        cyc.pool_s.load_state(resumed["extra"]["pool_s"])
        cyc.pool_t.load_state(resumed["extra"]["pool_t"])
        log(f"  resuming {name} at step {start}/{steps}")
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
        translation_step(cyc, opt_g, opt_d, xs, xt, perceptual)
        done = step + 1
        if done % ckpt_every == 0 or done == steps:
            checkpointer.save(done, model=cyc, optimizer=opt_g, extra=extra())
        if step_hook is not None:
            step_hook(done)
    if not checkpointer.exists():
        checkpointer.save(0, model=cyc, optimizer=opt_g, extra=extra())
    return cyc


class BDLPipeline:
    """Run Algorithm 2 in ``run_dir`` on (source with labels, target without, target validation with labels).

    Args:
        config: the run's :class:`BDLConfig`.
        run_dir: output directory (created); re-running in it resumes.
        source, target, val: datasets yielding (image (3, H, W) in [-1, 1], label (H, W) int64); target labels are
            never used for training, only ``val`` labels for evaluation.
        step_hook: called as ``hook(stage_name, completed_steps)`` after every optimisation step (a test uses it to
            simulate a kill).
        log: a print-like function for progress lines.
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

    # ------------------------------------------------------------------------------------------------- helpers
    def _new_segmenter(self) -> nn.Module:
        c = self.config
        return build_segmenter(c.segmenter, num_classes=c.num_classes, encoder=c.encoder, **c.segmenter_kwargs)

    def _stage_seed(self, stage: Stage) -> int:
        return self.config.seed * 1000 + [s.name for s in self.stages].index(stage.name) + 1

    def _checkpointer(self, stage: Stage) -> Any:
        from dyncore.training import Checkpointer

        return Checkpointer(self.ckpt_root / stage.name, self.run_config)

    def _load_manifest(self) -> dict[str, Any]:
        if self.manifest_path.is_file():
            return json.loads(self.manifest_path.read_text())
        return {"stages": {}, "order": [s.name for s in self.stages]}

    def _save_manifest(self, manifest: dict[str, Any]) -> None:
        _write_json_atomic(self.manifest_path, manifest)

    def _hook(self, stage: Stage, step: int) -> None:
        if self.step_hook is not None:
            self.step_hook(stage.name, step)

    def _segmenter_from(self, stage_name: str) -> nn.Module:
        """The final M of a finished stage (its last checkpoint)."""
        model = self._new_segmenter()
        if stage_name == "init":
            state = self._run_ckpt.load("init.pt")["model"]
        else:
            state = self._checkpointer(Stage(stage_name, "adapt")).load()["model"]
            state = {k.removeprefix("m."): v for k, v in state.items() if k.startswith("m.")}
        from dyncore.training import load_state_dict_strict

        load_state_dict_strict(model, state)
        return model.to(self.device)

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
            step_hook=None if self.step_hook is None else (lambda step: self._hook(stage, step)),
        )

    def _train_translation(self, stage: Stage, perceptual_from: str | None) -> CycleGAN:
        c = self.config
        return train_translation(
            self.source,
            self.target,
            c.translation,
            steps=c.translation_steps,
            batch_size=c.translation_batch,
            checkpointer=self._checkpointer(stage),
            crop=c.translation_crop,
            perceptual_model=None if perceptual_from is None else self._segmenter_from(perceptual_from),
            ckpt_every=c.ckpt_every,
            seed=self._stage_seed(stage),
            device=self.device,
            log=self.log,
            name=stage.name,
            step_hook=None if self.step_hook is None else (lambda step: self._hook(stage, step)),
        )

    @torch.no_grad()
    def _translate(self, stage: Stage) -> Path:
        """S' = F⁽ᵏ⁾(S) as PNGs in ``translated/k{k}`` (written under a temporary name, then renamed)."""
        out = self.run_dir / "translated" / f"k{stage.k}"
        if out.is_dir():  # finished before the manifest was updated
            return out
        from dyncore.training import load_state_dict_strict

        cyc = CycleGAN(self.config.translation)
        load_state_dict_strict(cyc, self._checkpointer(Stage(f"F{stage.k}", "translation")).load()["model"])
        g = cyc.g_st.to(self.device).eval()
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=out.name + ".", suffix=".tmp", dir=out.parent))
        try:
            n = len(self.source)  # type: ignore[arg-type]
            for start in range(0, n, self.config.eval_batch):
                idx = list(range(start, min(start + self.config.eval_batch, n)))
                x = torch.stack([self.source[i][0] for i in idx]).to(self.device)
                y = denormalize_image(g(x).cpu())
                for j, i in enumerate(idx):
                    Image.fromarray(y[j].permute(1, 2, 0).numpy()).save(tmp / f"{i:06d}.png")
            os.replace(tmp, out)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return out

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

    # ------------------------------------------------------------------------------------------------------ run
    def run(self) -> list[dict[str, Any]]:
        """Run (or resume) every stage; returns the per-stage rows (label, mIoU-19/16/13, IoUs, pixel ratio)."""
        from dyncore.training import seed_everything

        c = self.config
        self.run_dir.mkdir(parents=True, exist_ok=True)
        init = self._new_segmenter()
        if self._run_ckpt.exists("init.pt"):
            self._run_ckpt.resume(model=init, name="init.pt")  # raises ConfigMismatchError for another config
        else:
            seed_everything(c.seed)
            init = self._new_segmenter()
            if c.weights_path is not None:
                from bdl.models import load_pretrained

                load_pretrained(init, c.weights_path)
            self._run_ckpt.save(0, model=init, name="init.pt")
        manifest = self._load_manifest()
        latest_m = "init"
        translated: Path | None = None
        pseudo_dir: Path | None = None
        rows: list[dict[str, Any]] = []
        for stage in self.stages:
            info = manifest["stages"].get(stage.name)
            done = info is not None and info.get("status") == "done"
            t0 = time.time()
            metrics: dict[str, Any] = {}
            if stage.kind == "translate":
                translated = self.run_dir / "translated" / f"k{stage.k}"
                if not done:
                    self._translate(stage)
            elif stage.kind == "pseudo":
                pseudo_dir = self.run_dir / "pseudo" / f"k{stage.k}_i{stage.i}"
                if not done:
                    if not pseudo_dir.is_dir():
                        res = generate_pseudo_labels(
                            self._segmenter_from(latest_m),
                            self.target,
                            pseudo_dir,
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
                    meta = json.loads((pseudo_dir / "pseudo_labels.json").read_text())
                    metrics = {"pixel_ratio": meta["pixel_ratio"], "thresholds": meta["thresholds"]}
            elif stage.kind == "translation":
                if not done:
                    use_per = stage.k > 1 or c.perceptual_first_round
                    self._train_translation(stage, latest_m if use_per else None)
            else:  # source_only / adapt
                if not done:
                    if stage.kind == "source_only":
                        model = self._train_segmenter(stage, self.source, None, "init", c.source_only_steps)
                    else:
                        assert translated is not None
                        src = TranslatedSource(self.source, translated)
                        tgt: Dataset = self.target if stage.i == 0 else PseudoLabeledTarget(self.target, pseudo_dir)  # type: ignore[arg-type]
                        init_from = latest_m if c.warm_start else "init"
                        steps = c.seg_steps if stage.i == 0 else c.seg_steps_st
                        model = self._train_segmenter(stage, src, tgt, init_from, steps)
                    metrics = self._measure(stage, model)
                latest_m = stage.name
            if not done:
                manifest["stages"][stage.name] = {
                    "status": "done",
                    "seconds": round(time.time() - t0, 2),
                    "metrics": metrics,
                }
                self._save_manifest(manifest)
                if stage.kind in ("source_only", "adapt"):
                    self.log(
                        f"  {stage.label:<22} mIoU-19 {metrics['miou19']:5.1f}  pixel ratio "
                        f"{metrics['pixel_ratio'] * 100:5.1f}%  ({time.time() - t0:.1f}s)"
                    )
                else:
                    self.log(f"  {stage.name:<22} done ({time.time() - t0:.1f}s)")
            if stage.kind in ("source_only", "adapt"):
                rows.append({"stage": stage.name, **manifest["stages"][stage.name]["metrics"]})
        final = self._segmenter_from(latest_m)
        from dyncore.training import save_checkpoint

        save_checkpoint(self.run_dir / "final_model.pt", {"model": final.state_dict(), "stage": latest_m})
        (self.run_dir / "stage_table.md").write_text(stage_table(rows) + "\n")
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
