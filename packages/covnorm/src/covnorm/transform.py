"""Algorithm 1: collect statistics of every adapter's input/output, replace A by the CovNorm transform (Eq. 2.8) in
independent or joint mode (Eq. 2.10), and absorb M into the larger factor.

Typical use::

    stats = covnorm.collect_statistics(model, loader, domain="digits")      # step 2 (streaming)
    report = covnorm.apply_covnorm(model, stats, domain="digits", threshold=0.99, init="exact")   # step 3
    ...fine-tune M, then all adapter parameters...                           # step 4
    covnorm.absorb(model)                                                    # 2·C·min(k_x, k_y) per site
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import torch
from torch import Tensor, nn

from covnorm.layers import CovNormConv1x1, LowRankConv1x1, MiniInit, ResidualAdapter, UnknownDomainError
from covnorm.models import adapter_sites
from covnorm.stats import (
    DEFAULT_THRESHOLD,
    PCA,
    Moments,
    SelectionRule,
    SiteStatistics,
    merge_pcas,
    select_components,
)

__all__ = [
    "AbsorbError",
    "CovNormReport",
    "MissingStatisticsError",
    "SiteReport",
    "absorb",
    "apply_covnorm",
    "apply_joint_covnorm",
    "apply_layout",
    "collect_statistics",
    "layout",
    "site_pcas",
]

JointMerge = Literal["moments", "pcas", "sequential"]


class MissingStatisticsError(KeyError):
    """An adapter site has no collected statistics."""

    def __str__(self) -> str:
        return str(self.args[0])


class AbsorbError(RuntimeError):
    """Absorption is impossible (already absorbed, nothing to absorb, or factors shared across domains)."""


def _input_batches(batch: Any) -> Tensor:
    return batch[0] if isinstance(batch, (list, tuple)) else batch


@torch.no_grad()
def collect_statistics(
    model: nn.Module,
    data: Iterable[Any],
    *,
    domain: str,
    sites: Iterable[str] | None = None,
    max_batches: int | None = None,
) -> dict[str, SiteStatistics]:
    """Streaming moments of A's input x (= B1 output) and output y (= A·x) at every adapter site (Algorithm 1, step 2).

    The model runs in eval mode (restored afterwards) with ``domain`` active; each spatial position of the
    (B, C, H, W) maps is one sample. Memory is O(Σ C²) regardless of how many images ``data`` yields.

    Args:
        model: a model with adapters (usually a :class:`~covnorm.models.MultiDomainModel`).
        data: iterable of input batches (B, 3, H, W) or (inputs, labels) tuples.
        domain: the domain whose adapters are measured.
        sites: restrict to these site names (default: all sites whose branch has an A).
    """
    all_sites = adapter_sites(model)
    wanted = list(all_sites) if sites is None else list(sites)
    unknown = [s for s in wanted if s not in all_sites]
    if unknown:
        raise KeyError(f"collect_statistics: no adapter site named {unknown}; sites: {list(all_sites)}")
    stats: dict[str, SiteStatistics] = {}
    handles = []
    for name in wanted:
        branch = all_sites[name].branch(domain)
        if branch.a is None:
            continue
        st = SiteStatistics(Moments(branch.channels), Moments(branch.channels))
        stats[name] = st

        def hook(module: nn.Module, inputs: tuple[Tensor, ...], output: Tensor, st: SiteStatistics = st) -> None:
            st.x.update(inputs[0])
            st.y.update(output)

        handles.append(branch.a.register_forward_hook(hook))
    was_training = model.training
    previous = getattr(model, "domain", None)
    set_domain = getattr(model, "set_domain", None)
    try:
        model.eval()
        if callable(set_domain):
            set_domain(domain)
        else:
            for adapter in all_sites.values():
                adapter.set_domain(domain)
        device = next(model.parameters()).device
        for i, batch in enumerate(data):
            if max_batches is not None and i >= max_batches:
                break
            model(_input_batches(batch).to(device))
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
        if previous is not None and callable(set_domain):
            set_domain(previous)
    return stats


@dataclass
class SiteReport:
    """One site after CovNorm: dimensions, η = k_y/k_x and the stored task-specific weights."""

    site: str
    channels: int
    k_x: int
    k_y: int
    adapter_weights: int  # C² of the RA matrix A it replaces
    stored_absorbed: int  # 2·C·min(k_x, k_y) (independent mode)
    stored_per_domain: int  # what this mode keeps per domain (weights of M and/or factors, no biases)

    @property
    def eta(self) -> float:
        return self.k_y / self.k_x


@dataclass
class CovNormReport:
    mode: str
    threshold: float
    rule: str
    init: str
    sites: list[SiteReport] = field(default_factory=list)
    shared_weights: int = 0  # joint mode: W̃ and C̃ stored once for all domains

    @property
    def eta(self) -> dict[str, float]:
        return {s.site: s.eta for s in self.sites}

    @property
    def stored_per_domain(self) -> int:
        return sum(s.stored_per_domain for s in self.sites)

    @property
    def adapter_weights(self) -> int:
        return sum(s.adapter_weights for s in self.sites)

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["eta"] = self.eta
        return d

    def __str__(self) -> str:
        rows = [f"CovNorm ({self.mode}, t={self.threshold}, rule={self.rule}, init={self.init})"]
        rows.append(f"{'site':<28}{'C':>6}{'k_x':>6}{'k_y':>6}{'eta':>7}{'stored':>10}{'RA C²':>10}")
        for s in self.sites:
            rows.append(
                f"{s.site:<28}{s.channels:>6}{s.k_x:>6}{s.k_y:>6}{s.eta:>7.2f}{s.stored_per_domain:>10}"
                f"{s.adapter_weights:>10}"
            )
        rows.append(
            f"stored per domain {self.stored_per_domain} vs RA {self.adapter_weights}; shared {self.shared_weights}"
        )
        return "\n".join(rows)


def site_pcas(stats: Mapping[str, SiteStatistics]) -> dict[str, tuple[PCA, PCA]]:
    """(PCA of x, PCA of y) per site; raises a clear error naming the site on degenerate statistics."""
    out: dict[str, tuple[PCA, PCA]] = {}
    for name, st in stats.items():
        try:
            out[name] = (st.x.pca(), st.y.pca())
        except ValueError as exc:
            raise type(exc)(f"site {name!r}: {exc}") from exc
    return out


def _factors(px: PCA, py: PCA, kx: int, ky: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Whitening W̃_x = Ẽ_x^{-1/2} P̃_xᵀ (k_x, C), colouring C̃_y = P̃_y Ẽ_y^{1/2} (C, k_y) (Eq. 2.7), and the
    pieces P̃_x Ẽ_x^{1/2} (C, k_x), Ẽ_y^{-1/2} P̃_yᵀ (k_y, C) used by the exact initialisation of M."""
    ex, ey = px.eigenvalues[:kx], py.eigenvalues[:ky]
    Px, Py = px.eigenvectors[:, :kx], py.eigenvectors[:, :ky]
    whitening = ex.rsqrt()[:, None] * Px.T
    colouring = Py * ey.sqrt()[None, :]
    return whitening, colouring, Px * ex.sqrt()[None, :], ey.rsqrt()[:, None] * Py.T


def _a_conv(adapter: ResidualAdapter, domain: str, site: str) -> nn.Conv2d:
    a = adapter.branch(domain).a
    if isinstance(a, CovNormConv1x1):
        raise ValueError(f"site {site!r} of domain {domain!r} already holds a CovNorm transform")
    if not isinstance(a, nn.Conv2d):
        raise TypeError(f"site {site!r} of domain {domain!r}: A must be the trained 1×1 conv, got {type(a).__name__}")
    return a


def _mini(init: MiniInit, A: nn.Conv2d, left: Tensor, right: Tensor, ky: int, kx: int, site: str) -> Tensor:
    if init == "exact":  # M = Ẽ_y^{-1/2} P̃_yᵀ A P̃_x Ẽ_x^{1/2}
        return left @ A.weight.detach()[:, :, 0, 0].to(torch.float64) @ right
    if init == "random":  # as released: N(0, 0.01)
        return torch.randn(ky, kx, dtype=torch.float64) * 0.01
    if init == "identity":
        if kx != ky:
            raise ValueError(f"site {site!r}: init='identity' needs k_x == k_y, got k_x={kx}, k_y={ky}")
        return torch.eye(kx, dtype=torch.float64)
    raise ValueError(f"init must be 'exact', 'random' or 'identity', got {init!r}")


def _initial_bias(init: MiniInit, A: nn.Conv2d, mean_x: Tensor, mean_y: Tensor) -> Tensor:
    # ỹ = C̃MW̃(x − μ_x) + b. With the exact M, b = A μ_x + a_bias reproduces y = A x + a_bias (= μ_y when the
    # statistics were measured on this domain); otherwise b = μ_y, the colouring mean of Eq. 2.8.
    if init == "exact":
        w = A.weight.detach()[:, :, 0, 0].to(torch.float64)
        bias = A.bias.detach().to(torch.float64) if A.bias is not None else torch.zeros(w.shape[0], dtype=torch.float64)
        return w @ mean_x + bias
    return mean_y


def _check_config(threshold: float | None, rule: str, init: str) -> float:
    """Validate the options; returns the threshold (the rule's default when ``None``)."""
    if rule not in ("thesis", "released"):
        raise ValueError(f"rule must be 'thesis' or 'released', got {rule!r}")
    if threshold is None:
        threshold = DEFAULT_THRESHOLD[rule]
    if not isinstance(threshold, (int, float)) or not 0.0 < float(threshold) <= 1.0:
        raise ValueError(f"threshold must be in (0, 1], got {threshold!r}")
    if init not in ("exact", "random", "identity"):
        raise ValueError(f"init must be 'exact', 'random' or 'identity', got {init!r}")
    return float(threshold)


def _sites_for(model: nn.Module, domain: str) -> dict[str, ResidualAdapter]:
    sites = {n: a for n, a in adapter_sites(model).items() if a.kind == "residual"}
    if not sites:
        raise ValueError("the model has no residual adapter sites (inject(..., kind='residual') first)")
    for a in sites.values():
        a.branch(domain)  # UnknownDomainError naming the known domains
    return sites


def apply_covnorm(
    model: nn.Module,
    stats: Mapping[str, SiteStatistics],
    *,
    domain: str,
    threshold: float | None = None,
    rule: SelectionRule = "thesis",
    init: MiniInit = "exact",
) -> CovNormReport:
    """Replace every residual adapter's A of ``domain`` by the CovNorm transform (Eq. 2.8), independent mode.

    k_x, k_y per site come from the explained-variance rule (threshold ``t``; default 0.99, or 0.995 with
    ``rule="released"``, the authors' code). ``init``: ``"exact"`` (M = Ẽ_y^{-1/2}P̃_yᵀ A P̃_x Ẽ_x^{1/2}:
    untruncated, the output equals the trained adapter's), ``"random"`` (N(0, 0.01), as released) or
    ``"identity"`` (needs k_x = k_y).

    Everything is validated before the model is touched: a site without statistics, a bad threshold, degenerate
    covariance or an unknown domain raises and leaves the model unchanged.
    """
    threshold = _check_config(threshold, rule, init)
    sites = _sites_for(model, domain)
    missing = [s for s in sites if s not in stats]
    if missing:
        raise MissingStatisticsError(f"apply_covnorm: no statistics for site(s) {missing}; run collect_statistics")
    pcas = site_pcas({s: stats[s] for s in sites})
    report = CovNormReport("independent", float(threshold), rule, init)
    new_layers: dict[str, CovNormConv1x1] = {}
    for name, adapter in sites.items():
        A = _a_conv(adapter, domain, name)
        px, py = pcas[name]
        kx = select_components(px.eigenvalues, threshold, rule=rule)
        ky = select_components(py.eigenvalues, threshold, rule=rule)
        whitening, colouring, right, left = _factors(px, py, kx, ky)
        mini = _mini(init, A, left, right, ky, kx, name)
        bias = _initial_bias(init, A, px.mean, py.mean)
        layer = CovNormConv1x1(whitening, colouring, px.mean, bias, mini).to(A.weight.device)
        new_layers[name] = layer
        c = adapter.channels
        report.sites.append(SiteReport(name, c, kx, ky, c * c, 2 * c * min(kx, ky), 2 * c * min(kx, ky)))
    for name, layer in new_layers.items():
        sites[name].branch(domain).a = layer
    return report


def apply_joint_covnorm(
    model: nn.Module,
    stats: Mapping[str, Mapping[str, SiteStatistics]],
    *,
    threshold: float | None = None,
    rule: SelectionRule = "thesis",
    init: MiniInit = "exact",
    merge: JointMerge = "pcas",
) -> CovNormReport:
    """Joint CovNorm (Section 2.3.7): one global PCA per site from all domains, W̃_x, C̃_y (and μ_x) shared and frozen,
    a mini-adaptation M (k_y × k_x) and a bias per domain.

    Args:
        stats: domain → site → statistics (each domain's own trained A).
        merge: ``"pcas"`` — Eq. 2.10 from the stored per-domain PCAs; ``"moments"`` — add the raw moments (the pooled
            data's moments, identical up to rounding); ``"sequential"`` — fold the domains' PCAs in one at a time
            (recursive Eq. 2.10, one PCA stored at any time).
    """
    threshold = _check_config(threshold, rule, init)
    if merge not in ("pcas", "moments", "sequential"):
        raise ValueError(f"merge must be 'pcas', 'moments' or 'sequential', got {merge!r}")
    domains = list(stats)
    if not domains:
        raise ValueError("apply_joint_covnorm: stats is empty")
    sites = {}
    for d in domains:
        sites = _sites_for(model, d)
    missing = [(d, s) for d in domains for s in sites if s not in stats[d]]
    if missing:
        raise MissingStatisticsError(f"apply_joint_covnorm: no statistics for (domain, site) {missing[:5]}")
    report = CovNormReport(f"joint ({merge})", float(threshold), rule, init)
    plans: list[tuple[str, str, CovNormConv1x1]] = []
    for name, adapter in sites.items():
        for d in domains:
            _a_conv(adapter, d, name)
        per_domain = {d: site_pcas({name: stats[d][name]})[name] for d in domains}
        if merge == "moments":
            pooled = stats[domains[0]][name]
            for d in domains[1:]:
                pooled = pooled + stats[d][name]
            px, py = site_pcas({name: pooled})[name]
        elif merge == "pcas":
            px = merge_pcas([per_domain[d][0] for d in domains])
            py = merge_pcas([per_domain[d][1] for d in domains])
        else:
            px, py = per_domain[domains[0]]
            for d in domains[1:]:
                px, py = merge_pcas([px, per_domain[d][0]]), merge_pcas([py, per_domain[d][1]])
        kx = select_components(px.eigenvalues, threshold, rule=rule)
        ky = select_components(py.eigenvalues, threshold, rule=rule)
        whitening, colouring, right, left = _factors(px, py, kx, ky)
        device = adapter.branch(domains[0]).b2.weight.device
        shared_w = nn.Parameter(whitening.float().to(device), requires_grad=False)
        shared_c = nn.Parameter(colouring.float().to(device), requires_grad=False)
        for d in domains:
            A = _a_conv(adapter, d, name)
            mini = _mini(init, A, left, right, ky, kx, name)
            bias = _initial_bias(init, A, px.mean, per_domain[d][1].mean)
            layer = CovNormConv1x1(shared_w, shared_c, px.mean, bias, mini).to(device)
            layer.shared = True
            plans.append((name, d, layer))
        c = adapter.channels
        report.sites.append(SiteReport(name, c, kx, ky, c * c, 2 * c * min(kx, ky), kx * ky))
        report.shared_weights += c * (kx + ky)
    for name, d, layer in plans:
        sites[name].branch(d).a = layer
    return report


def absorb(model: nn.Module, *, domain: str | None = None) -> list[str]:
    """Fold M into the larger of W̃_x, C̃_y at every independent-mode CovNorm site (Figure 2.4); outputs unchanged.

    Returns the absorbed (site, domain) names. Raises :class:`AbsorbError` (model unchanged) when there is nothing to
    absorb — e.g. absorbing twice — or when a site's factors are shared across domains (joint mode keeps only M per
    domain; absorbing would make W̃/C̃ task-specific).
    """
    sites = adapter_sites(model)
    targets: list[tuple[str, str, CovNormConv1x1]] = []
    already: list[str] = []
    for name, adapter in sites.items():
        domains = adapter.domains if domain is None else [domain]
        for d in domains:
            if d not in adapter.branches:
                raise UnknownDomainError(f"unknown domain {d!r}; known domains: {adapter.domains}")
            a = adapter.branches[d].a
            if isinstance(a, CovNormConv1x1):
                if getattr(a, "shared", False):
                    raise AbsorbError(
                        f"absorb: site {name!r} (domain {d!r}) shares W̃_x, C̃_y across domains (joint mode); "
                        "only M is per domain, there is nothing to absorb"
                    )
                targets.append((name, d, a))
            elif getattr(a, "absorbed", False):
                already.append(f"{name}[{d}]")
    if not targets:
        if already:
            raise AbsorbError(f"absorb: M is already absorbed at {already[:3]}... (absorbing twice)")
        raise AbsorbError("absorb: the model has no CovNorm transform to absorb (call apply_covnorm first)")
    done = []
    for name, d, layer in targets:
        folded = layer.absorb()
        folded.absorbed = True
        sites[name].branches[d].a = folded
        done.append(f"{name}[{d}]")
    return done


def low_rank_layers(model: nn.Module) -> list[LowRankConv1x1]:
    return [m for m in model.modules() if isinstance(m, LowRankConv1x1)]


def layout(model: nn.Module) -> dict[str, dict[str, dict[str, Any]]]:
    """site → domain → description of A ({"type": "conv"} | {"type": "covnorm", "k_x", "k_y", "shared"} |
    {"type": "lowrank", "rank", "absorbed"} | {"type": "none"}): enough to rebuild the structure before loading a
    state dict (:func:`apply_layout`)."""
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for name, adapter in adapter_sites(model).items():
        out[name] = {}
        for d, branch in adapter.branches.items():
            a = branch.a
            if a is None:
                out[name][d] = {"type": "none"}
            elif isinstance(a, CovNormConv1x1):
                out[name][d] = {
                    "type": "covnorm",
                    "k_x": a.k_x,
                    "k_y": a.k_y,
                    "shared": bool(getattr(a, "shared", False)),
                }
            elif isinstance(a, LowRankConv1x1):
                out[name][d] = {"type": "lowrank", "rank": a.rank, "absorbed": bool(getattr(a, "absorbed", False))}
            else:
                out[name][d] = {"type": "conv"}
    return out


def apply_layout(model: nn.Module, spec: Mapping[str, Mapping[str, Mapping[str, Any]]]) -> None:
    """Give ``model``'s adapters the structure described by :func:`layout` (placeholder values; load the state dict
    afterwards). Joint-mode sites get one shared W̃_x/C̃_y per site."""
    sites = adapter_sites(model)
    unknown = [s for s in spec if s not in sites]
    if unknown:
        raise KeyError(f"apply_layout: the model has no adapter site(s) {unknown}")
    for name, domains in spec.items():
        adapter = sites[name]
        c = adapter.channels
        shared: dict[tuple[int, int], tuple[nn.Parameter, nn.Parameter]] = {}
        for d, desc in domains.items():
            branch = adapter.branch(d)
            kind = desc["type"]
            if kind == "covnorm":
                kx, ky = int(desc["k_x"]), int(desc["k_y"])
                if desc.get("shared"):
                    if (kx, ky) not in shared:
                        shared[(kx, ky)] = (
                            nn.Parameter(torch.zeros(kx, c), requires_grad=False),
                            nn.Parameter(torch.zeros(c, ky), requires_grad=False),
                        )
                    w, col = shared[(kx, ky)]
                else:
                    w, col = nn.Parameter(torch.zeros(kx, c)), nn.Parameter(torch.zeros(c, ky))
                layer = CovNormConv1x1(w, col, torch.zeros(c), torch.zeros(c), torch.zeros(ky, kx))
                layer.shared = bool(desc.get("shared"))
                branch.a = layer
            elif kind == "lowrank":
                low = LowRankConv1x1(c, c, int(desc["rank"]))
                low.absorbed = bool(desc.get("absorbed"))
                branch.a = low
            elif kind == "none":
                branch.a = None
            elif kind != "conv":
                raise ValueError(f"apply_layout: unknown adapter type {kind!r} at site {name!r}")
