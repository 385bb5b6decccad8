"""The Digits-5 demo (Table 6.3 analogue, Figures 6.4–6.5) and the ResNet-50 benchmark behind ``drt demo|bench``.

Demo: leave-one-domain-out on the embedded Digits-5 for several target domains; static twin vs DRT for source-only
and MCD, plus DRT+ST; several seeds → mean ± std of the ensemble accuracy; a t-SNE of the routing coefficients.
To fit a 2-core CPU budget the digit CNN runs at a reduced width (``DemoConfig.width``, default 0.25 of the M3SDA
widths) for a few hundred steps, with the digit CNN's defaults of :data:`drt.defaults.BACKBONE_DEFAULTS` (lr, batch
size and the classic MCD weights η = 1, GRL 1 — the released η = 50 / GRL 4.0, tuned for a pretrained ResNet-101,
collapse a from-scratch CNN in this short schedule). Runs are spread over ``workers`` processes (1 thread each).
"""

from __future__ import annotations

import multiprocessing as mp
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from drt.defaults import BACKBONE_DEFAULTS
from drt.layers import DynamicResidualConfig, residual_madds_breakdown
from drt.losses import MCDConfig
from drt.models import DomainAdaptationNet, digit_cnn, drt_resnet50, drt_resnet101
from drt.train import TrainConfig, digits5_task, mean_std, train, train_with_self_training

__all__ = ["MADDS_VARIANTS", "VARIANTS", "DemoConfig", "format_table", "madds_overhead", "run_bench", "run_demo"]

#: (row label, backbone is DRT, method, self-training)
VARIANTS: tuple[tuple[str, bool, str, bool], ...] = (
    ("Source only (static)", False, "source_only", False),
    ("Source only + DRT", True, "source_only", False),
    ("MCD (static)", False, "mcd", False),
    ("MCD + DRT (DRT)", True, "mcd", True),  # this job also yields the DRT+ST row
)
ROWS = ("Source only (static)", "Source only + DRT", "MCD (static)", "MCD + DRT (DRT)", "DRT+ST")
PAPER_TABLE_6_3 = {"Source only (static)": 77.71, "MCD (static)": 86.10, "MCD + DRT (DRT)": 91.86}


def _digit_mcd() -> MCDConfig:
    d = BACKBONE_DEFAULTS["digit_cnn"]
    return MCDConfig(grl_coeff=d.grl_coeff, eta=d.eta, gamma=d.gamma, label_smoothing=d.label_smoothing)


@dataclass
class DemoConfig:
    """Settings of ``drt demo`` (``quick()`` for the ~30 s smoke version of the same code path)."""

    targets: tuple[str, ...] = ("mnistm", "svhn")
    seeds: tuple[int, ...] = (0, 1, 2)
    width: float = 0.25
    steps: int = 300
    st_steps: int = 150
    batch_size: int = BACKBONE_DEFAULTS["digit_cnn"].batch_size
    lr: float = BACKBONE_DEFAULTS["digit_cnn"].lr
    eval_every: int = 100
    limit: int | None = None
    workers: int = 2
    tsne_per_domain: int = 150
    mcd: MCDConfig = field(default_factory=_digit_mcd)

    @classmethod
    def quick(cls) -> DemoConfig:
        return cls(seeds=(0, 1), steps=6, st_steps=4, eval_every=6, limit=96, batch_size=16, tsne_per_domain=24)


def _job(spec: dict[str, Any]) -> dict[str, Any]:
    """One (target, seed, variant) run in a worker process."""
    torch.set_num_threads(1)
    cfg: DemoConfig = spec["demo"]
    task = digits5_task(spec["target"], seed=spec["seed"], limit=cfg.limit)
    torch.manual_seed(spec["seed"])
    dyn = DynamicResidualConfig() if spec["drt"] else None
    model = DomainAdaptationNet(digit_cnn(width=cfg.width, dynamic=dyn), task.num_classes)
    tc = TrainConfig(
        method=spec["method"],
        steps=cfg.steps,
        st_steps=cfg.st_steps,
        batch_size=cfg.batch_size,
        lr=cfg.lr,
        eval_every=cfg.eval_every,
        mcd=cfg.mcd,
        seed=spec["seed"],
    )
    out: dict[str, Any] = {k: spec[k] for k in ("target", "seed", "row")}
    kw = {"source_val": task.source_val, "target_test": task.target_test, "config": tc}
    if spec["self_training"]:
        first, second = train_with_self_training(model, task.sources, task.target, **kw)  # type: ignore[arg-type]
        out["result"], out["st_result"] = first.to_dict(), second.to_dict()
    else:
        out["result"] = train(model, task.sources, task.target, **kw).to_dict()  # type: ignore[arg-type]
    if spec.get("tsne"):
        from drt.analysis import collect_routing
        from dyncore.data import digits5

        sets = {d: digits5(d, "test", limit=cfg.limit) for d in (*task.source_names, task.target_name)}
        pi = collect_routing(model, sets, per_domain=cfg.tsne_per_domain)
        out["routing"] = {"values": pi.values, "domains": pi.domains, "layers": pi.layers, "K": pi.num_bases}
    return out


def format_table(cells: dict[str, dict[str, list[float]]], targets: tuple[str, ...]) -> str:
    """Markdown table: rows × (targets, Avg), cells 'mean ± std' of the ensemble accuracy over seeds."""
    head = "| method | " + " | ".join(f"→ {t}" for t in targets) + " | Avg |"
    lines = [head, "|" + "---|" * (len(targets) + 2)]
    for row in ROWS:
        if row not in cells:
            continue
        vals = [mean_std(cells[row][t]) for t in targets]
        per_seed_avg = [float(np.mean(v)) for v in zip(*(cells[row][t] for t in targets))]
        m, s = mean_std(per_seed_avg)
        lines.append(f"| {row} | " + " | ".join(f"{a:.2f} ± {b:.2f}" for a, b in vals) + f" | {m:.2f} ± {s:.2f} |")
    return "\n".join(lines)


def _verdict(diff: float, noise: float) -> bool | None:
    if diff > noise:
        return True
    if diff < -noise:
        return False
    return None


def run_demo(out_dir: str | Path, config: DemoConfig | None = None, *, log: Any = print) -> dict[str, Any]:
    """Run the demo, write ``out_dir/summary.json`` (dyncore.report), ``results.json`` and the t-SNE PNG."""
    import json

    from drt.analysis import RoutingCoefficients, domain_separability, plot_routing_tsne
    from dyncore.report import Claim, write_summary

    cfg = config or DemoConfig()
    t0 = time.perf_counter()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    # Build (and cache) the data once in this process so the workers only read it.
    for t in cfg.targets:
        digits5_task(t, limit=cfg.limit)
    jobs = []
    for ti, target in enumerate(cfg.targets):
        for si, seed in enumerate(cfg.seeds):
            for row, drt, method, st in VARIANTS:
                spec = {"demo": cfg, "target": target, "seed": seed, "row": row, "drt": drt, "method": method}
                spec.update(self_training=st, tsne=(drt and method == "mcd" and ti == 0 and si == 0))
                jobs.append(spec)
    results: list[dict[str, Any]] = []
    if cfg.workers > 1:
        with ProcessPoolExecutor(max_workers=cfg.workers, mp_context=mp.get_context("spawn")) as pool:
            for r in pool.map(_job, jobs):
                results.append(r)
                log(f"  {r['target']:>7} seed {r['seed']} {r['row']:<22} {r['result']['target_test']['ensemble']:6.2f}")
    else:
        for spec in jobs:
            r = _job(spec)
            results.append(r)
            log(f"  {r['target']:>7} seed {r['seed']} {r['row']:<22} {r['result']['target_test']['ensemble']:6.2f}")
    cells: dict[str, dict[str, list[float]]] = {row: {t: [] for t in cfg.targets} for row in ROWS}
    heads: dict[str, dict[str, list[float]]] = {}
    for r in results:
        cells[r["row"]][r["target"]].append(r["result"]["target_test"]["ensemble"])
        for h, v in r["result"]["target_test"].items():
            heads.setdefault(f"{r['row']} [{r['target']}]", {}).setdefault(h, []).append(v)
        if "st_result" in r:
            cells["DRT+ST"][r["target"]].append(r["st_result"]["target_test"]["ensemble"])
    table = format_table(cells, cfg.targets)

    def avg(row: str) -> tuple[float, float]:
        per_seed = [float(np.mean(v)) for v in zip(*(cells[row][t] for t in cfg.targets))]
        return mean_std(per_seed)

    claims = []
    pairs = [
        ("DRT beats its static twin with MCD (Table 6.3 / 6.2)", "MCD + DRT (DRT)", "MCD (static)", "86.10 → 91.86"),
        (
            "DRT beats its static twin, source only (Table 6.2)",
            "Source only + DRT",
            "Source only (static)",
            "40.6 → 42.8",
        ),
        ("Self-training adds to DRT (Table 6.4)", "DRT+ST", "MCD + DRT (DRT)", "49.7 → 51.3"),
    ]
    for name, a, b, paper in pairs:
        (ma, sa), (mb, sb) = avg(a), avg(b)
        claims.append(
            Claim(
                name,
                paper,
                f"{mb:.2f} ± {sb:.2f} → {ma:.2f} ± {sa:.2f}",
                _verdict(ma - mb, max(sa, sb)),
                note=f"Digits-5 miniature, avg over {len(cfg.targets)} targets, {len(cfg.seeds)} seeds; "
                "holds=None when the difference is within one std",
            )
        )
    plots = []
    rc = next((r["routing"] for r in results if "routing" in r), None)
    sep: dict[str, float] = {}
    if rc is not None:
        pi = RoutingCoefficients(rc["values"], rc["domains"], rc["layers"], rc["K"])
        png = plot_routing_tsne(
            pi, out / "plots" / "routing_tsne.png", title=f"Π, DRT-MCD, target {cfg.targets[0]}", target=cfg.targets[0]
        )
        plots.append(str(png.relative_to(out)))
        sep = {
            "all": domain_separability(pi.values, pi.domains),
            "low": domain_separability(pi.low(), pi.domains),
            "high": domain_separability(pi.high(), pi.domains),
        }
        claims.append(
            Claim(
                "Routing coefficients carry domain information (Fig. 6.4)",
                "domains form clusters in t-SNE of Π",
                f"silhouette by domain: all {sep['all']:.3f}, low {sep['low']:.3f}, high {sep['high']:.3f}",
                True if sep["all"] > 0.1 else (None if sep["all"] > 0.0 else False),
                note="silhouette > 0 means samples sit closer to their own domain (holds at > 0.1, undecided in "
                "(0, 0.1]); see plots/routing_tsne.png",
            )
        )
    seconds = time.perf_counter() - t0
    write_summary(
        out,
        package="drt",
        title="DRT on Digits-5 (Table 6.3 analogue, ensemble accuracy %, mean ± std over seeds)",
        claims=claims,
        tables={"Table 6.3 analogue (target-test accuracy, ensemble of F1/F2)": table},
        plots=plots,
        seconds=seconds,
    )
    payload = {
        "config": {k: v for k, v in asdict(cfg).items()},
        "cells": cells,
        "heads": heads,
        "separability": sep,
        "selection": "held-out source data (10 % of the pooled source train images)",
        "seconds": seconds,
    }
    (out / "results.json").write_text(json.dumps(payload, indent=1, default=str))
    log(table)
    return payload


# ----------------------------------------------------------------------------------------------------------------------
# Benchmark

#: (name, ResNet depth, K) of the MAdds breakdown in ``bench.json``; the first is the headline ResNet-50, K = 4.
MADDS_VARIANTS: tuple[tuple[str, int, int], ...] = (
    ("resnet50_k4", 50, 4),
    ("resnet50_k2", 50, 2),
    ("resnet101_k4", 101, 4),
    ("resnet101_k2", 101, 2),
)


def madds_overhead(depth: int = 50, num_bases: int = 4, *, size: int = 224) -> dict[str, Any]:
    """Where ResNet-``depth``-DRT's extra MAdds (kernel synthesis convention) over its static twin come from.

    Returns ``static`` / ``drt`` totals (``dyncore.complexity.count_madds``, one image of ``size``²), their
    ``ratio``, ``extra`` MAdds by part — ``coefficient_fcs`` (the routing branch's two FCs) and
    ``kernel_synthesis`` (Σ_k π_k Φ_k, K·C_out·C_in per dynamic conv) — with ``extra_percent`` of the static total,
    ``unexplained`` (drt − static − Σ extra; 0 when every extra MAdd is accounted for) and, counted only under the
    element-wise convention, ``elementwise`` (the routing branch's global average pooling) with its percentage.
    """
    from torchvision.models import resnet50, resnet101

    from dyncore.complexity import MAddsConvention, count_madds

    builders = {50: (resnet50, drt_resnet50), 101: (resnet101, drt_resnet101)}
    if depth not in builders:
        raise ValueError(f"madds_overhead: depth must be one of {sorted(builders)}, got {depth}")
    static_builder, drt_builder = builders[depth]
    x = torch.randn(1, 3, size, size)
    static = count_madds(static_builder().eval(), x).total  # the 1000-way ImageNet networks, as in the headline
    dynamic_model = drt_builder(dynamic=DynamicResidualConfig(num_bases=num_bases)).eval()
    drt_total = count_madds(dynamic_model, x).total
    parts = residual_madds_breakdown(dynamic_model, x, convention=MAddsConvention(elementwise=True))
    extra = {k: parts[k] for k in ("coefficient_fcs", "kernel_synthesis")}
    elementwise = {"pooling": parts["pooling"]}

    def pct(d: dict[str, int]) -> dict[str, float]:
        return {k: 100.0 * v / static for k, v in d.items()}

    return {
        "depth": depth,
        "num_bases": num_bases,
        "static": static,
        "drt": drt_total,
        "ratio": drt_total / static,
        "extra": extra,
        "extra_percent": pct(extra),
        "extra_total_percent": 100.0 * sum(extra.values()) / static,
        "unexplained": drt_total - static - sum(extra.values()),
        "elementwise": elementwise,
        "elementwise_percent": pct(elementwise),
    }


def run_bench(out_dir: str | Path, *, quick: bool = False, threads: int = 2, log: Any = print) -> dict[str, Any]:
    """ResNet-50-DRT ÷ ResNet-50: MAdds (kernel synthesis and feature-wise conventions) and CPU latency of the GEMM,
    synthesis and feature-wise forms at batch 1 and batch 32 (interleaved rounds, dyncore.bench); writes
    ``out_dir/bench.json``."""
    from torchvision.models import resnet50

    from drt.layers import set_apply_mode
    from dyncore.bench import compare_latency
    from dyncore.complexity import MAddsConvention, count_madds, count_parameters
    from dyncore.report import write_bench

    t0 = time.perf_counter()
    torch.manual_seed(0)
    static, dynamic = resnet50().eval(), drt_resnet50().eval()
    x224 = torch.randn(1, 3, 224, 224)
    m_static = count_madds(static, x224).total
    m_syn = count_madds(dynamic, x224, convention=MAddsConvention(dynamic="per_sample")).total
    m_fw = count_madds(dynamic, x224, convention=MAddsConvention(dynamic="per_pixel")).total
    breakdown = {name: madds_overhead(depth, k) for name, depth, k in MADDS_VARIANTS}
    for name, b in breakdown.items():
        log(
            f"  MAdds {name:<13} ratio {b['ratio']:.5f}: extra {b['extra_total_percent']:.4f} % = "
            + " + ".join(f"{k} {v:.4f} %" for k, v in b["extra_percent"].items())
            + f" (pooling, element-wise: {b['elementwise_percent']['pooling']:.4f} %)"
        )
    p_static, p_dyn = count_parameters(static), count_parameters(dynamic)
    size, big = (112, 8) if quick else (224, 32)
    rounds, repeats = (2, 1) if quick else (3, 2)
    lat: dict[str, dict[str, float]] = {}
    for batch in (1, big):
        x = torch.randn(batch, 3, size, size)
        cases: dict[str, tuple[Any, tuple[Any, ...]]] = {"static": (static, (x,))}
        for mode in ("gemm", "synthesis", "featurewise"):
            twin = drt_resnet50().eval()
            set_apply_mode(twin, mode)  # type: ignore[arg-type]
            cases[f"drt_{mode}"] = (twin, (x,))
        lat[f"batch{batch}"] = compare_latency(cases, threads=threads, rounds=rounds, repeats=repeats, warmup=1)
        log(f"  batch {batch} @ {size}: " + ", ".join(f"{k} {v:.1f} ms" for k, v in lat[f"batch{batch}"].items()))
    ratios = {
        "madds_synthesis": m_syn / m_static,
        **{f"madds_synthesis_{name}": b["ratio"] for name, b in breakdown.items() if name != "resnet50_k4"},
        "madds_featurewise": m_fw / m_static,
        "params": p_dyn / p_static,
    }
    for key, res in lat.items():
        ratios[f"latency_{key}_gemm"] = res["drt_gemm"] / res["static"]
        ratios[f"latency_{key}_synthesis"] = res["drt_synthesis"] / res["static"]
        ratios[f"latency_{key}_featurewise"] = res["drt_featurewise"] / res["static"]
    details = {
        "madds": {"static": m_static, "drt_synthesis": m_syn, "drt_featurewise": m_fw},
        "madds_breakdown": breakdown,
        "madds_breakdown_note": "extra MAdds of DRT over the static twin per image at 224x224 (kernel synthesis): "
        "coefficient_fcs = routing FCs C_in*C_in/16 + C_in/16*K per block, kernel_synthesis = K*C_out*C_in per "
        "block (1x1 bases); pooling (global average pool of the block input) is element-wise and not in the ratio",
        "params": {"static": p_static, "drt": p_dyn},
        "latency_ms": lat,
        "input": f"{size}x{size}",
        "threads": threads,
        "madds_input": "224x224",
        "target": "madds_synthesis <= 1.001 (thesis: < 0.1 % extra FLOPs)",
        "drt": "subspace routing, K=4, 1x1 bases on every bottleneck 3x3, routing from the block input",
    }
    write_bench(out_dir, package="drt", ratios=ratios, details=details, seconds=time.perf_counter() - t0)
    for k, v in ratios.items():
        log(f"  {k:<32} {v:.4f}")
    return {"ratios": ratios, "details": details}
