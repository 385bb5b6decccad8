"""Accounting: task-specific parameters per domain (Table 2.1's "% parameters"), the Visual Decathlon score S and the
effective-dimension ratio η = k_y/k_x (Figure 2.5)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

from torch import nn

from covnorm.layers import DomainSwitch, UnknownDomainError
from covnorm.models import MultiDomainModel, frozen_parameter_count
from covnorm.stats import SelectionRule, SiteStatistics, select_components

__all__ = ["TaskParameters", "decathlon_score", "effective_dimension_ratio", "task_parameters"]


@dataclass
class TaskParameters:
    """Parameters stored for one domain. ``adapters``: the adaptation layers A (or their replacement: M, factors,
    biases); ``norm``: the per-domain BN of the adapters; ``head``: the classifier; ``shared``: per-site parameters
    shared by all domains (joint CovNorm's W̃, C̃), counted once; ``backbone``: the frozen network."""

    domain: str
    adapters: int
    norm: int
    head: int
    shared: int
    backbone: int

    @property
    def total(self) -> int:
        return self.adapters + self.norm + self.head

    @property
    def adapter_percent(self) -> float:
        """Adaptation-layer parameters (A, + BN) as % of the backbone — the quantity of Table 2.1."""
        return 100.0 * (self.adapters + self.norm) / self.backbone

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["total"], d["adapter_percent"] = self.total, self.adapter_percent
        return d


def task_parameters(model: MultiDomainModel, domain: str) -> TaskParameters:
    """Count ``domain``'s task-specific parameters of a :class:`MultiDomainModel` (each tensor once)."""
    if domain not in model.heads:
        raise UnknownDomainError(f"unknown domain {domain!r}; known domains: {sorted(model.heads.keys())}")
    owners: dict[int, set[str]] = {}
    for sw in model.switches():
        for d, branch in sw.branches.items():
            for p in branch.parameters():
                owners.setdefault(id(p), set()).add(d)
    adapters = norm = shared = 0
    seen: set[int] = set()
    for sw in model.switches():
        if domain not in sw.branches:
            continue
        for mod in sw.branches[domain].modules():
            for p in mod.parameters(recurse=False):
                if id(p) in seen:
                    continue
                seen.add(id(p))
                if len(owners[id(p)]) > 1:
                    shared += p.numel()
                elif isinstance(mod, nn.modules.batchnorm._BatchNorm):
                    norm += p.numel()
                else:
                    adapters += p.numel()
    head = sum(p.numel() for p in model.heads[domain].parameters())
    return TaskParameters(domain, adapters, norm, head, shared, frozen_parameter_count(model))


def decathlon_score(
    errors: Mapping[str, float], baseline_errors: Mapping[str, float], *, gamma: float = 2.0, max_score: float = 1000.0
) -> float:
    """Visual Decathlon score S = Σ_d α_d · max(0, E_d^max − E_d)^γ with E_d^max = 2 × baseline error and
    α_d = 1000 / (E_d^max)^γ (a perfect task scores 1000, an error ≥ 2× the baseline's scores 0).

    Errors in any consistent unit (%, or fractions). Every domain of ``errors`` needs a positive baseline error.
    """
    total = 0.0
    for d, err in errors.items():
        if d not in baseline_errors:
            raise KeyError(f"decathlon_score: no baseline error for domain {d!r}")
        e_max = 2.0 * float(baseline_errors[d])
        if e_max <= 0:
            raise ValueError(f"decathlon_score: baseline error of {d!r} must be positive, got {baseline_errors[d]}")
        if err < 0:
            raise ValueError(f"decathlon_score: error of {d!r} must be non-negative, got {err}")
        total += max_score / e_max**gamma * max(0.0, e_max - float(err)) ** gamma
    return total


def effective_dimension_ratio(
    stats: Mapping[str, SiteStatistics], *, threshold: float | None = None, rule: SelectionRule = "thesis"
) -> dict[str, tuple[int, int, float]]:
    """Site → (k_x, k_y, η = k_y/k_x) from collected statistics (Figure 2.5)."""
    out: dict[str, tuple[int, int, float]] = {}
    for name, st in stats.items():
        kx = select_components(st.x.pca().eigenvalues, threshold, rule=rule)
        ky = select_components(st.y.pca().eigenvalues, threshold, rule=rule)
        out[name] = (kx, ky, ky / kx)
    return out


def _switch_domains(model: nn.Module) -> set[str]:
    out: set[str] = set()
    for m in model.modules():
        if isinstance(m, DomainSwitch):
            out |= set(m.branches.keys())
    return out
