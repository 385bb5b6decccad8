"""Streaming feature statistics and PCA (Algorithm 1, step 2; Eqs. 2.1, 2.7, 2.10).

Every spatial position of a (B, C, H, W) feature map is one C-dimensional sample. Moments are accumulated as
(n, Σx, Σxxᵀ) in float64, so memory is O(C²) whatever the number of images, and moments of several data sets merge by
addition (the pooled-data moments, Eq. 2.10).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import Tensor

__all__ = [
    "DEFAULT_THRESHOLD",
    "PCA",
    "DegenerateStatisticsError",
    "Moments",
    "SelectionRule",
    "SequentialJointPCA",
    "SiteStatistics",
    "explained_variance",
    "merge_pcas",
    "select_components",
]

SelectionRule = Literal["thesis", "released"]
#: default explained-variance threshold of each rule (thesis text: 0.99; authors' released code: 0.995)
DEFAULT_THRESHOLD: dict[str, float] = {"thesis": 0.99, "released": 0.995}


class DegenerateStatisticsError(ValueError):
    """The collected features cannot define a PCA (no samples, NaN/Inf values, or zero total variance)."""


def _as_samples(features: Tensor) -> Tensor:
    """(B, C, H, W) | (B, C) | (N, C) → (N, C) float64, one row per spatial position."""
    if features.dim() == 4:
        return features.detach().permute(0, 2, 3, 1).reshape(-1, features.shape[1]).to(torch.float64)
    if features.dim() == 2:
        return features.detach().to(torch.float64)
    raise ValueError(f"Moments.update: features must be (B, C, H, W) or (N, C), got shape {tuple(features.shape)}")


@dataclass
class Moments:
    """Raw first and second moments of C-dimensional samples: n, Σx (C,), Σxxᵀ (C, C), all float64."""

    dim: int
    n: int = 0
    total: Tensor = field(default=None)  # type: ignore[assignment]
    outer: Tensor = field(default=None)  # type: ignore[assignment]
    finite: bool = True

    def __post_init__(self) -> None:
        if self.dim <= 0:
            raise ValueError(f"Moments: dim must be positive, got {self.dim}")
        if self.total is None:
            self.total = torch.zeros(self.dim, dtype=torch.float64)
        if self.outer is None:
            self.outer = torch.zeros(self.dim, self.dim, dtype=torch.float64)

    def update(self, features: Tensor) -> None:
        """Add a batch of features, (B, C, H, W) (spatial positions are samples) or (N, C)."""
        x = _as_samples(features)
        if x.shape[1] != self.dim:
            raise ValueError(f"Moments.update: expected {self.dim} channels, got {x.shape[1]}")
        if not torch.isfinite(x).all():
            self.finite = False
        x = x.to(self.total.device)
        self.n += x.shape[0]
        self.total += x.sum(0)
        self.outer += x.T @ x

    def __add__(self, other: Moments) -> Moments:
        if not isinstance(other, Moments) or other.dim != self.dim:
            raise ValueError("Moments: can only add moments of the same dimension")
        return Moments(
            self.dim,
            self.n + other.n,
            self.total + other.total,
            self.outer + other.outer,
            self.finite and other.finite,
        )

    @property
    def mean(self) -> Tensor:
        """μ = Σx / n, (C,) float64."""
        self._check()
        return self.total / self.n

    @property
    def covariance(self) -> Tensor:
        """Σ = Σxxᵀ / n − μμᵀ (population covariance), (C, C) float64."""
        mu = self.mean
        cov = self.outer / self.n - torch.outer(mu, mu)
        return 0.5 * (cov + cov.T)

    def _check(self) -> None:
        if self.n == 0:
            raise DegenerateStatisticsError("Moments: no samples were collected (n = 0)")
        if not self.finite:
            raise DegenerateStatisticsError("Moments: the features contain NaN or Inf values")

    def pca(self) -> PCA:
        """PCA of the samples (Eq. 2.1): eigenvectors P (C, C) as columns, eigenvalues E (C,) descending."""
        cov = self.covariance
        evals, evecs = torch.linalg.eigh(cov)
        evals = evals.flip(0).clamp_min(0.0)
        evecs = evecs.flip(1)
        if not torch.isfinite(evals).all() or float(evals.sum()) <= 0.0:
            raise DegenerateStatisticsError(
                f"Moments.pca: covariance has rank 0 (total variance {float(evals.sum()):.3g}); constant features"
            )
        return PCA(mean=self.mean, eigenvectors=evecs, eigenvalues=evals, n=self.n)

    def state_dict(self) -> dict[str, object]:
        return {"dim": self.dim, "n": self.n, "total": self.total, "outer": self.outer, "finite": self.finite}


@dataclass
class PCA:
    """The triplet 𝒫 = (P, E, μ) of Eq. 2.1 plus the sample count n (needed by the merge of Eq. 2.10)."""

    mean: Tensor
    eigenvectors: Tensor
    eigenvalues: Tensor
    n: int

    @property
    def covariance(self) -> Tensor:
        return (self.eigenvectors * self.eigenvalues) @ self.eigenvectors.T

    def explained_variance(self) -> Tensor:
        return explained_variance(self.eigenvalues)

    def select(self, threshold: float | None = None, *, rule: SelectionRule = "thesis") -> int:
        return select_components(self.eigenvalues, threshold, rule=rule)


def explained_variance(values: Tensor) -> Tensor:
    """Cumulative explained-variance ratios r_i = Σ_{k≤i} e_k / Σ_k e_k of descending values (Section 2.4.1)."""
    values = values.to(torch.float64).clamp_min(0.0)
    total = values.sum()
    if not torch.isfinite(total) or float(total) <= 0.0:
        raise DegenerateStatisticsError("explained_variance: the values sum to zero (rank-0 covariance) or are NaN")
    return values.cumsum(0) / total


def select_components(eigenvalues: Tensor, threshold: float | None = None, *, rule: SelectionRule = "thesis") -> int:
    """Number of principal components k kept by the explained-variance rule.

    ``rule="thesis"``: the smallest i with r_i > t (t = 0.99 in the thesis). ``rule="released"``: the authors' code
    keeps the components with r_i strictly below t (default there 0.995), at least 2. ``threshold=None`` takes the
    rule's default (:data:`DEFAULT_THRESHOLD`). In both cases k never exceeds
    the numerical rank (eigenvalues > 1e-10·e_1), so the whitening Ẽ^{-1/2} stays finite.
    """
    if rule not in ("thesis", "released"):
        raise ValueError(f"select_components: rule must be 'thesis' or 'released', got {rule!r}")
    if threshold is None:
        threshold = DEFAULT_THRESHOLD[rule]
    if not isinstance(threshold, (int, float)) or math.isnan(threshold) or not 0.0 < threshold <= 1.0:
        raise ValueError(f"select_components: threshold must be in (0, 1], got {threshold!r}")
    ratios = explained_variance(eigenvalues)
    evals = eigenvalues.to(torch.float64)
    rank = int((evals > 1e-10 * evals[0]).sum())
    if rule == "thesis":
        above = torch.nonzero(ratios > threshold)
        k = int(above[0]) + 1 if len(above) else len(ratios)
    else:
        k = max(int((ratios < threshold).sum()), 2)
    return max(1, min(k, rank))


def merge_pcas(pcas: list[PCA]) -> PCA:
    """Global PCA of the union of data sets from their PCAs (Eq. 2.10).

    μ_T = (1/N) Σ_i N_i μ_i;  Σ_T = Σ_i (N_i/N)(P_i E_i P_iᵀ + μ_i μ_iᵀ) − μ_T μ_Tᵀ.
    """
    if not pcas:
        raise ValueError("merge_pcas: need at least one PCA")
    n = sum(p.n for p in pcas)
    mean = torch.zeros_like(pcas[0].mean)
    second = torch.zeros_like(pcas[0].eigenvectors)
    for p in pcas:
        mean += (p.n / n) * p.mean
        second += (p.n / n) * (p.covariance + torch.outer(p.mean, p.mean))
    cov = second - torch.outer(mean, mean)
    cov = 0.5 * (cov + cov.T)
    evals, evecs = torch.linalg.eigh(cov)
    return PCA(mean=mean, eigenvectors=evecs.flip(1), eigenvalues=evals.flip(0).clamp_min(0.0), n=n)


class SequentialJointPCA:
    """Joint PCA for domains that arrive one at a time (Section 2.3.7): keeps a single PCA (constant storage) and
    merges each new domain's PCA into it with Eq. 2.10."""

    def __init__(self) -> None:
        self.pca: PCA | None = None
        self.domains: list[str] = []

    def update(self, domain: str, pca: PCA) -> PCA:
        self.pca = pca if self.pca is None else merge_pcas([self.pca, pca])
        self.domains.append(domain)
        return self.pca


@dataclass
class SiteStatistics:
    """Moments of one adapter site's input x (= B1 output) and output y (= A·x, before the residual add)."""

    x: Moments
    y: Moments

    def __add__(self, other: SiteStatistics) -> SiteStatistics:
        return SiteStatistics(self.x + other.x, self.y + other.y)
