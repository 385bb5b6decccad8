"""Baselines of Figure 2.6 / Table 2.1 and the LoRA peer.

- BN-only: ``inject(..., kind="bn")`` (T = B2, ~0 parameters).
- RA: ``inject(..., kind="residual")`` and fine-tune A.
- FNFT: fine-tune a copy of the whole network (:func:`full_finetune_copy`).
- FTA: A = C·W of rank r with random init (:func:`to_low_rank` ``init="random"``).
- SVD+FTA: C, W from the truncated SVD of the trained A (:func:`to_low_rank` ``init="svd"``).
- PCA+FTA: C̃_y, W̃_x from the PCAs, no M (:func:`to_pca_fta`).
- LoRA: low-rank update of the frozen conv itself, per domain (:func:`inject_lora`).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping, Sequence
from typing import Literal

import torch
from torch import nn

from covnorm.layers import LoRAConv2d, LowRankConv1x1, check_domain_name
from covnorm.stats import SelectionRule, SiteStatistics, select_components
from covnorm.transform import MissingStatisticsError, _a_conv, _check_config, _factors, _sites_for, site_pcas

__all__ = ["full_finetune_copy", "geometric_rank", "inject_lora", "to_low_rank", "to_pca_fta"]


def geometric_rank(channels: int, i: int) -> int:
    """r = d / 2^i, the ranks of the geometric baselines (i ∈ {2..6} in Section 2.4.2), at least 1."""
    return max(1, channels // 2**i)


def _rank_for(site: str, channels: int, rank: int | Mapping[str, int]) -> int:
    r = rank[site] if isinstance(rank, Mapping) else rank
    if r <= 0:
        raise ValueError(f"site {site!r}: rank must be positive, got {r}")
    return min(int(r), channels)


def to_low_rank(
    model: nn.Module,
    *,
    domain: str,
    rank: int | Mapping[str, int],
    init: Literal["random", "svd"] = "random",
    seed: int | None = None,
) -> dict[str, int]:
    """Replace each residual adapter's A of ``domain`` by a rank-r factorisation C·W (FTA / SVD+FTA).

    Args:
        rank: one rank for every site or site → rank (clipped to C).
        init: ``"random"`` (FTA, Gaussian factors) or ``"svd"`` (SVD+FTA, from the trained A).
    Returns: site → rank used.
    """
    if init not in ("random", "svd"):
        raise ValueError(f"to_low_rank: init must be 'random' or 'svd', got {init!r}")
    sites = _sites_for(model, domain)
    if isinstance(rank, Mapping):
        missing = [s for s in sites if s not in rank]
        if missing:
            raise KeyError(f"to_low_rank: no rank for site(s) {missing}")
    gen = torch.Generator().manual_seed(seed) if seed is not None else None
    plans: dict[str, LowRankConv1x1] = {}
    for name, adapter in sites.items():
        A = _a_conv(adapter, domain, name)
        r = _rank_for(name, adapter.channels, rank)
        if init == "svd":
            layer = LowRankConv1x1.from_svd(A, r)
        else:
            layer = LowRankConv1x1(adapter.channels, adapter.channels, r)
            if gen is not None:
                with torch.no_grad():
                    layer.W.copy_(torch.randn(layer.W.shape, generator=gen) / adapter.channels**0.5)
                    layer.C.copy_(torch.randn(layer.C.shape, generator=gen) * 0.1 / r**0.5)
        plans[name] = layer.to(A.weight.device)
    for name, layer in plans.items():
        sites[name].branch(domain).a = layer
    return {n: lay.rank for n, lay in plans.items()}


def to_pca_fta(
    model: nn.Module,
    stats: Mapping[str, SiteStatistics],
    *,
    domain: str,
    threshold: float | None = None,
    rule: SelectionRule = "thesis",
) -> dict[str, int]:
    """PCA+FTA: ỹ = C̃_y W̃_x (x − μ_x) + μ_y without the mini-adaptation M, both at rank r = min(k_x, k_y).

    The thesis shows this underperforms CovNorm (the PCAs are not aligned: M is what aligns them)."""
    threshold = _check_config(threshold, rule, "exact")
    sites = _sites_for(model, domain)
    missing = [s for s in sites if s not in stats]
    if missing:
        raise MissingStatisticsError(f"to_pca_fta: no statistics for site(s) {missing}")
    pcas = site_pcas({s: stats[s] for s in sites})
    plans: dict[str, LowRankConv1x1] = {}
    for name, adapter in sites.items():
        A = _a_conv(adapter, domain, name)
        px, py = pcas[name]
        r = min(
            select_components(px.eigenvalues, threshold, rule=rule),
            select_components(py.eigenvalues, threshold, rule=rule),
        )
        whitening, colouring, _, _ = _factors(px, py, r, r)
        bias = py.mean - colouring @ (whitening @ px.mean)
        plans[name] = LowRankConv1x1.from_factors(colouring.float(), whitening.float(), bias.float()).to(
            A.weight.device
        )
    for name, layer in plans.items():
        sites[name].branch(domain).a = layer
    return {n: lay.rank for n, lay in plans.items()}


def inject_lora(
    model: nn.Module,
    *,
    where: Callable[[str, nn.Module], bool],
    domains: Sequence[str],
    rank: int | Mapping[str, int],
    alpha: float | None = None,
) -> dict[str, int]:
    """Wrap every selected frozen conv in a :class:`~covnorm.layers.LoRAConv2d` (one low-rank update per domain).

    Args:
        rank: one rank or conv name → rank (e.g. the per-site min(k_x, k_y) of CovNorm, to match ranks).
        alpha: LoRA scale numerator (default: = rank, i.e. scale 1).
    Returns: conv name → rank.
    """
    from dyncore.surgery import find_modules, replace_modules

    domains = [check_domain_name(d) for d in domains]
    selected = find_modules(model, where, include_nested=False)
    bad = [n for n, m in selected if not isinstance(m, nn.Conv2d)]
    if bad:
        raise TypeError(f"inject_lora: LoRA wraps nn.Conv2d layers; `where` also selected {bad[:5]}")
    ranks: dict[str, int] = {}
    for name, conv in selected:
        r = rank[name] if isinstance(rank, Mapping) else rank
        ranks[name] = max(1, min(int(r), conv.in_channels, conv.out_channels))
    for p in model.parameters():
        p.requires_grad_(False)

    def factory(name: str, conv: nn.Module) -> nn.Module:
        r = ranks[name]
        return LoRAConv2d(conv, domains, rank=r, alpha=float(alpha if alpha is not None else r))  # type: ignore[arg-type]

    replace_modules(model, lambda n, m: n in ranks, factory)
    return ranks


def full_finetune_copy(model: nn.Module) -> nn.Module:
    """FNFT: an independent, fully trainable copy of the network (100 % task-specific parameters)."""
    twin = copy.deepcopy(model)
    for p in twin.parameters():
        p.requires_grad_(True)
    return twin
