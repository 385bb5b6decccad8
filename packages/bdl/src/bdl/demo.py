"""``bdl demo`` and ``bdl bench``: Algorithm 2 on the embedded street scenes, and the pseudo-label memory benchmark.

Demo reductions (documented in the README): 64×128 scenes (paper: 1024×512), a small smp encoder
(``tu-mobilenetv3_small_050``) with a DeepLab-V3+ decoder instead of DeepLab-V2 ResNet-101, random initialisation
(no ImageNet weights offline), Adam instead of SGD, batch 8 + 8, a CycleGAN with ngf 16 and 2 residual blocks,
300 source-only steps, 200 CycleGAN steps and 150 steps per later M stage, each M warm-started from the previous one,
instead of 80k/120k steps (M, retrained from ImageNet weights) and 20 epochs (F). ``--quick`` runs the same code
path at 32×64 with a few steps per stage (a smoke run; its numbers mean nothing).
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from bdl.adaptation import AdaptationConfig
from bdl.data import StreetScenes
from bdl.evaluation import format_score, stage_table
from bdl.pipeline import BDLConfig, run_bdl
from bdl.translation import CycleGANConfig

PAPER = {  # GTA5 → Cityscapes, DeepLab-V2 R101 (Table 5.2)
    "M0": 33.6,
    "M1_0": 42.7,
    "M1_1": 46.8,
    "M1_2": 47.2,
    "M2_0": 44.3,
    "M2_1": 47.6,
    "M2_2": 48.5,
}


def demo_config(
    *, quick: bool, seed: int = 0, K: int = 2, N: int = 2, device: str = "cpu"
) -> tuple[BDLConfig, dict[str, Any]]:
    """The demo's BDL config and data sizes (full: ~8 min on 2 CPU cores; quick: ~30 s)."""
    steps: dict[str, Any]
    data: dict[str, Any]
    if quick:
        data = {"size": (32, 64), "num_source": 24, "num_target": 24, "num_val": 12}
        steps = {"source_only_steps": 6, "seg_steps": 6, "seg_steps_st": 6, "translation_steps": 4}
    else:
        data = {"size": (64, 128), "num_source": 300, "num_target": 300, "num_val": 100}
        steps = {"source_only_steps": 300, "seg_steps": 150, "seg_steps_st": 150, "translation_steps": 200}
    cfg = BDLConfig(
        K=K,
        N=N,
        seed=seed,
        segmenter="deeplabv3plus",
        encoder="tu-mobilenetv3_small_050",
        adaptation=AdaptationConfig(lr=1e-3, optimizer="adam", weight_decay=1e-4, head_lr_mult=1.0, lambda_adv=1e-3),
        batch_size=8,
        warm_start=True,
        translation=CycleGANConfig(ngf=16, ndf=16, n_blocks=2),
        translation_batch=4,
        perceptual_first_round=False,
        eval_batch=20,
        ckpt_every=100,
        device=device,
        **steps,
    )
    return cfg, data


def _claims(rows: dict[str, dict[str, Any]]) -> list[Any]:
    from dyncore.report import Claim

    def m(stage: str) -> float:
        v = rows[stage]["miou19"] if stage in rows else None
        return float("nan") if v is None else float(v)

    def r(stage: str) -> float:
        return float(rows[stage]["pixel_ratio"]) * 100 if stage in rows else float("nan")

    note = "miniature (64×128 procedural scenes, tiny models, few hundred steps); one seed"
    claims = []

    def add(name: str, paper: str, a: float, b: float, extra: str = "") -> None:
        if math.isnan(a) or math.isnan(b):
            return
        holds = b > a
        msg = note + ("" if holds else "; does NOT improve on the miniature") + (f"; {extra}" if extra else "")
        claims.append(Claim(name, paper, f"{a:.1f} → {b:.1f}", holds, msg))

    add("translation + adversarial beats source only: M₀⁽¹⁾ > M⁽⁰⁾", "33.6 → 42.7", m("M0"), m("M1_0"))
    last1 = max((k for k in rows if k.startswith("M1_")), default="M1_0")
    add("self-training improves M: M_N⁽¹⁾ > M₀⁽¹⁾", "42.7 → 47.2", m("M1_0"), m(last1))
    add(
        "pixel ratio grows with self-training (Table 5.3b)",
        "69% → 81%",
        r("M1_0"),
        r(last1),
        "pixel ratio = target pixels with max prob > 0.9",
    )
    add("backward direction (perceptual loss with M) helps: M₀⁽²⁾ > M₀⁽¹⁾", "42.7 → 44.3", m("M1_0"), m("M2_0"))
    if "M2_0" in rows:
        last2 = max(k for k in rows if k.startswith("M2_"))
        add("second round (backward direction) improves: M_N⁽²⁾ > M_N⁽¹⁾", "47.2 → 48.5", m(last1), m(last2))
    return claims


def run_demo(out: Path, *, quick: bool = False, seed: int = 0, K: int = 2, N: int = 2, device: str = "cpu") -> Path:
    """Run Algorithm 2 on the embedded scenes into ``out`` and write ``out/summary.json``."""
    from dyncore.report import write_summary

    t0 = time.time()
    cfg, data = demo_config(quick=quick, seed=seed, K=K, N=N, device=device)
    kw = {"size": data["size"], "seed": seed}
    source = StreetScenes("synthetic", "train", num_images=data["num_source"], **kw)  # type: ignore[arg-type]
    target = StreetScenes("real", "train", num_images=data["num_target"], **kw)  # type: ignore[arg-type]
    val = StreetScenes("real", "val", num_images=data["num_val"], **kw)  # type: ignore[arg-type]
    print(f"bdl demo: {source!r} → {target!r}, eval on {val!r}; K={K}, N={N}, quick={quick}")
    rows = run_bdl(cfg, out / "run", source=source, target=target, val=val)
    by_stage = {r["stage"]: r for r in rows}
    table = stage_table(rows, per_class=True)
    short = stage_table(rows, per_class=False)
    print(short)
    paper = "| model | paper mIoU-19 (GTA5→Cityscapes) | measured mIoU-19 |\n|---|---|---|\n" + "\n".join(
        f"| {r['label']} | {PAPER.get(r['stage'], '–')} | {format_score(r['miou19'])} |" for r in rows
    )
    plots = sorted(p.relative_to(out).as_posix() for p in (out / "run" / "plots").glob("qualitative_*.png"))
    plots += sorted(p.relative_to(out).as_posix() for p in (out / "run" / "plots").glob("confidence_pseudo*.png"))
    path = write_summary(
        out,
        package="bdl",
        title=f"BDL Algorithm 2 (K={K}, N={N}) on embedded synthetic→real street scenes",
        claims=_claims(by_stage),
        tables={"stages (per-class IoU, %)": table, "paper vs measured": paper},
        plots=plots,
        seconds=time.time() - t0,
    )
    print(f"wrote {path} ({time.time() - t0:.0f}s)")
    return path


# ------------------------------------------------------------------------------------------------------------ bench
def _bench_case(mode: str, num_images: int, seed: int) -> dict[str, float]:
    """Measured in a fresh process: peak extra memory (MiB) of the pseudo-label statistics over ``num_images``."""
    from bdl.models import build_segmenter
    from bdl.pseudo import generate_pseudo_labels, predict_probabilities
    from dyncore.bench import peak_memory_mb

    torch.manual_seed(seed)
    target = StreetScenes("real", "train", num_images=num_images, size=(64, 128), seed=seed)
    model = build_segmenter("deeplabv3plus", encoder="tu-mobilenetv3_small_050").eval()
    with torch.no_grad():  # warm up allocator and kernels outside the measurement
        predict_probabilities(model, torch.stack([target[i][0] for i in range(8)]))
    tmp = tempfile.mkdtemp()

    def streamed() -> None:
        generate_pseudo_labels(model, target, Path(tmp) / "pl", mode="class_median", batch_size=8)

    def hold_all() -> None:  # the released script: keep every probability map, then medians
        probs = [
            predict_probabilities(model, torch.stack([target[j][0] for j in range(i, min(i + 8, num_images))]))
            for i in range(0, num_images, 8)
        ]
        conf, pred = torch.cat(probs).max(1)
        for c in range(probs[0].shape[1]):
            sel = conf[pred == c]
            if sel.numel():
                sel.median()

    t = time.time()
    mb = peak_memory_mb(streamed if mode == "streamed" else hold_all)
    return {"peak_mb": mb, "seconds": time.time() - t}


def run_bench(out: Path, *, base_images: int = 40, seed: int = 0) -> Path:
    """Peak memory of the pseudo-label statistics at 1× and 10× target images (streamed vs hold-all)."""
    from dyncore.report import write_bench

    t0 = time.time()
    results: dict[str, dict[str, float]] = {}
    for mode in ("streamed", "hold_all"):
        for mult in (1, 10):
            n = base_images * mult
            code = (
                f"import json; from bdl.demo import _bench_case; print(json.dumps(_bench_case({mode!r}, {n}, {seed})))"
            )
            proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
            results[f"{mode}_{mult}x"] = json.loads(proc.stdout.strip().splitlines()[-1])
            print(f"{mode:>9} {n:5d} images: peak {results[f'{mode}_{mult}x']['peak_mb']:.1f} MiB")
    ratios = {
        "pseudo_stats_memory_10x_vs_1x_streamed": results["streamed_10x"]["peak_mb"]
        / max(results["streamed_1x"]["peak_mb"], 1e-3),
        "pseudo_stats_memory_10x_vs_1x_hold_all": results["hold_all_10x"]["peak_mb"]
        / max(results["hold_all_1x"]["peak_mb"], 1e-3),
    }
    details = {
        "base_images": base_images,
        "size": [64, 128],
        "classes": 19,
        "cases": results,
        "histogram_bytes": 19 * 1000 * 8,
    }
    path = write_bench(out, package="bdl", ratios=ratios, details=details, seconds=time.time() - t0)
    print(json.dumps(ratios, indent=1))
    return path
