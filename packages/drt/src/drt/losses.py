"""Alignment losses L_d of Eq. 6.6/6.8 (thesis Table 6.2) as ``nn.Module``s.

L = L_ce(source) + λ·L_d(source, target). DRT needs no domain labels: all sources are pooled into one (multi-source
without domain labels = single-source mode); only M³SDA-β uses domain labels and says so loudly.

* :class:`GradientReversal` — identity forward, −coeff·grad backward.
* :class:`DomainAdversarialLoss` — DANN: a domain discriminator on GRL(features), source = 1, target = 0.
* :class:`AdversarialDiscriminativeLoss` — ADDA: discriminator loss and the (inverted-label) encoder loss.
* :func:`classifier_discrepancy`, :class:`ClassBalanceLoss` — MCD's L_dis and the released class-balance L_div.
* :class:`MCDLoss` — the released one-pass MCD with gradient reversal (spec values GRL 4.0, η 50, γ 0.01, ls 0.01).
* :class:`MomentMatchingLoss` — M³SDA: first/second moment distances source_i↔target and source_i↔source_j.
* :func:`per_source_cross_entropy` — M³SDA's source loss: classifier i is trained on source i's samples only.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "AdversarialDiscriminativeLoss",
    "ClassBalanceLoss",
    "DomainAdversarialLoss",
    "DomainDiscriminator",
    "DomainLabelsRequiredError",
    "GradientReversal",
    "MCDConfig",
    "MCDLoss",
    "MomentMatchingLoss",
    "classifier_discrepancy",
    "grad_reverse",
    "per_source_cross_entropy",
]


class DomainLabelsRequiredError(ValueError):
    """An alignment loss that needs per-sample source domain labels (M³SDA-β) was called without them."""


class _GradReverse(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: Tensor, coeff: float) -> Tensor:
        ctx.coeff = coeff
        return x.view_as(x)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:
        return -ctx.coeff * grad, None


def grad_reverse(x: Tensor, coeff: float = 1.0) -> Tensor:
    """Identity in the forward pass; multiplies the gradient by −``coeff`` in the backward pass."""
    return _GradReverse.apply(x, coeff)  # type: ignore[no-any-return]


class GradientReversal(nn.Module):
    """Gradient reversal layer (Ganin & Lempitsky); ``coeff`` is a mutable attribute (e.g. a warm-up schedule)."""

    def __init__(self, coeff: float = 1.0) -> None:
        super().__init__()
        self.coeff = float(coeff)

    def forward(self, x: Tensor) -> Tensor:
        return grad_reverse(x, self.coeff)

    def extra_repr(self) -> str:
        return f"coeff={self.coeff}"


class DomainDiscriminator(nn.Sequential):
    """MLP (B, D) → (B, 1) domain logit: Linear → BN → ReLU → Linear → BN → ReLU → Linear."""

    def __init__(self, in_features: int, hidden: int = 1024) -> None:
        super().__init__(
            nn.Linear(in_features, hidden),
            nn.BatchNorm1d(hidden),
            nn.ReLU(inplace=True),
            nn.Linear(hidden, hidden),
            nn.BatchNorm1d(hidden),
            nn.ReLU(inplace=True),
            nn.Linear(hidden, 1),
        )


def _check_features(f_s: Tensor, f_t: Tensor, who: str) -> None:
    if f_s.dim() != 2 or f_t.dim() != 2 or f_s.shape[1] != f_t.shape[1]:
        raise ValueError(
            f"{who}: source and target features must be (B, D) with the same D, got {tuple(f_s.shape)} and "
            f"{tuple(f_t.shape)}"
        )


class DomainAdversarialLoss(nn.Module):
    """DANN: BCE of a discriminator on GRL(f), source labelled 1 and target 0.

    Minimising it trains the discriminator; the GRL makes the feature extractor maximise it (domain confusion).
    ``forward(f_s (B_s, D), f_t (B_t, D)) → scalar``; ``.last_accuracy`` the discriminator accuracy (%).
    """

    def __init__(self, discriminator: nn.Module, *, grl_coeff: float = 1.0) -> None:
        super().__init__()
        self.discriminator = discriminator
        self.grl = GradientReversal(grl_coeff)
        self.last_accuracy = float("nan")

    def forward(self, f_s: Tensor, f_t: Tensor) -> Tensor:
        _check_features(f_s, f_t, type(self).__name__)
        logits = self.discriminator(self.grl(torch.cat([f_s, f_t]))).squeeze(1)
        labels = torch.cat([f_s.new_ones(f_s.shape[0]), f_t.new_zeros(f_t.shape[0])])
        with torch.no_grad():
            self.last_accuracy = float(((logits > 0).float() == labels).float().mean()) * 100.0
        return F.binary_cross_entropy_with_logits(logits, labels)


class AdversarialDiscriminativeLoss(nn.Module):
    """ADDA (Tzeng et al.): a discriminator separates source features (of the frozen source encoder) from target
    features; the target encoder is trained with inverted labels (GAN loss).

    ``discriminator_loss(f_s, f_t)`` (features detached) and ``encoder_loss(f_t)``; ``forward`` = encoder loss.
    """

    def __init__(self, discriminator: nn.Module) -> None:
        super().__init__()
        self.discriminator = discriminator

    def discriminator_loss(self, f_s: Tensor, f_t: Tensor) -> Tensor:
        _check_features(f_s, f_t, type(self).__name__)
        logits = self.discriminator(torch.cat([f_s.detach(), f_t.detach()])).squeeze(1)
        labels = torch.cat([f_s.new_ones(f_s.shape[0]), f_t.new_zeros(f_t.shape[0])])
        return F.binary_cross_entropy_with_logits(logits, labels)

    def encoder_loss(self, f_t: Tensor) -> Tensor:
        logits = self.discriminator(f_t).squeeze(1)
        return F.binary_cross_entropy_with_logits(logits, torch.ones_like(logits))

    def forward(self, f_t: Tensor) -> Tensor:
        return self.encoder_loss(f_t)


def classifier_discrepancy(logits1: Tensor, logits2: Tensor) -> Tensor:
    """MCD's L_dis = mean |softmax(F1) − softmax(F2)| over batch and classes; (B, C), (B, C) → scalar."""
    if logits1.shape != logits2.shape:
        raise ValueError(f"classifier_discrepancy: shapes differ, {tuple(logits1.shape)} vs {tuple(logits2.shape)}")
    return (logits1.softmax(dim=1) - logits2.softmax(dim=1)).abs().mean()


class ClassBalanceLoss(nn.Module):
    """Released L_div = −(1/C)·Σ_c log(mean_batch p_c + ε) on target predictions (B, C) → scalar; minimal (= log C)
    when the batch-mean prediction is uniform over classes."""

    def __init__(self, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = eps

    def forward(self, logits: Tensor) -> Tensor:
        mean_p = logits.softmax(dim=1).mean(dim=0)
        return -torch.log(mean_p + self.eps).mean()


@dataclass(frozen=True)
class MCDConfig:
    """Spec values of the released one-pass MCD: GRL coefficient, η (weight of L_dis), γ (weight of L_div),
    label smoothing of the source cross-entropy."""

    grl_coeff: float = 4.0
    eta: float = 50.0
    gamma: float = 0.01
    label_smoothing: float = 0.01


class MCDLoss(nn.Module):
    """Released one-pass MCD (Saito et al. with gradient reversal), Eq. 6.6 with L_d = −L_dis:

        L = CE_ls(F1(f_s), y) + CE_ls(F2(f_s), y) + γ·L_div(target) − η·L_dis(F1(GRL(f_t)), F2(GRL(f_t)))

    The heads minimise −L_dis (maximise the discrepancy); through the GRL the feature extractor minimises it. L_div is
    computed on the heads' target outputs *without* the GRL (both heads and features favour class balance).

    ``forward(heads, f_s, y_s, f_t) → dict`` with ``loss`` and the parts (``ce``, ``dis``, ``div``).
    """

    def __init__(self, config: MCDConfig | None = None) -> None:
        super().__init__()
        self.config = config or MCDConfig()
        self.eta = self.config.eta  # mutable (warm-up schedules)
        self.grl = GradientReversal(self.config.grl_coeff)
        self.balance = ClassBalanceLoss()

    def forward(self, heads: Sequence[nn.Module], f_s: Tensor, y_s: Tensor, f_t: Tensor) -> dict[str, Tensor]:
        if len(heads) != 2:
            raise ValueError(f"MCDLoss: needs exactly two classifier heads, got {len(heads)}")
        _check_features(f_s, f_t, type(self).__name__)
        c = self.config
        n_s = f_s.shape[0]
        # One pass per head over [f_s; f_t] (BN statistics of the joint batch, as one forward of [x_s; x_t]).
        out = [h(torch.cat([f_s, f_t])) for h in heads]
        ce = sum(F.cross_entropy(o[:n_s], y_s, label_smoothing=c.label_smoothing) for o in out)
        div = sum(self.balance(o[n_s:]) for o in out)
        rev = self.grl(f_t)
        dis = classifier_discrepancy(heads[0](rev), heads[1](rev))
        loss = ce + c.gamma * div - self.eta * dis
        return {"loss": loss, "ce": ce, "div": div, "dis": dis}  # type: ignore[dict-item]


class MomentMatchingLoss(nn.Module):
    """M³SDA moment matching (Peng et al.): Σ_k [mean_i ‖E f_{s_i}^k − E f_t^k‖₂ + mean_{i<j} ‖E f_{s_i}^k −
    E f_{s_j}^k‖₂] for moments k = 1..``moments`` (element-wise powers of the (B, D) features).

    ``forward(f_s, domain_s, f_t)``: ``domain_s`` (B_s,) int source-domain ids — required (the only alignment loss
    of Table 6.2 that uses domain labels); ``None`` raises :class:`DomainLabelsRequiredError`.
    """

    needs_domain_labels = True

    def __init__(self, moments: int = 2) -> None:
        super().__init__()
        if moments < 1:
            raise ValueError(f"MomentMatchingLoss: moments must be >= 1, got {moments}")
        self.moments = moments

    def forward(self, f_s: Tensor, domain_s: Tensor | None, f_t: Tensor) -> Tensor:
        if domain_s is None:
            raise DomainLabelsRequiredError(
                "MomentMatchingLoss (M³SDA-β) needs source domain labels: build the source set with "
                "MultiSourceDataset(..., with_domain=True) and pass domain ids; every other alignment loss works "
                "without them"
            )
        _check_features(f_s, f_t, type(self).__name__)
        if domain_s.shape != (f_s.shape[0],):
            raise ValueError(f"MomentMatchingLoss: domain_s must be ({f_s.shape[0]},), got {tuple(domain_s.shape)}")
        ids = [int(d) for d in torch.unique(domain_s)]
        total = f_s.new_zeros(())
        for k in range(1, self.moments + 1):
            m_t = f_t.pow(k).mean(0)
            m_s = [f_s[domain_s == d].pow(k).mean(0) for d in ids]
            total = total + torch.stack([(m - m_t).norm() for m in m_s]).mean()
            pairs = [(m_s[i] - m_s[j]).norm() for i in range(len(m_s)) for j in range(i + 1, len(m_s))]
            if pairs:
                total = total + torch.stack(pairs).mean()
        return total


def per_source_cross_entropy(
    logits: Sequence[Tensor], target: Tensor, domain: Tensor | None, *, label_smoothing: float = 0.0
) -> Tensor:
    """M³SDA's source loss, one term per source domain: CE_i = CE(C_i(f)[d = i], y[d = i]) (Peng et al. 2019).

    Classifier i only sees the samples of source i, so CE_i's gradient reaches classifier i and nothing else of the
    heads. Samples with domain −1 (pseudo-labelled target samples in self-training) count for every classifier.

    Args:
        logits: N tensors (B, C), classifier i applied to the whole batch (rows of other domains are masked out).
        target: (B,) class ids. domain: (B,) source ids in {−1, 0, …, N−1}; ``None`` raises
            :class:`DomainLabelsRequiredError`.

    Returns:
        (N,) — CE_i per source; the loss is their sum. A source absent from the batch gives 0 with a zero gradient
        for its classifier (so every process of a distributed run synchronises the same gradients).
    """
    if domain is None:
        raise DomainLabelsRequiredError(
            "per_source_cross_entropy (M³SDA-β) needs source domain labels: build the source set with "
            "MultiSourceDataset(..., with_domain=True)"
        )
    n = len(logits)
    if n == 0:
        raise ValueError("per_source_cross_entropy: `logits` must hold one (B, C) tensor per source, got none")
    batch = target.shape[0]
    if domain.shape != (batch,) or any(lg.dim() != 2 or lg.shape[0] != batch for lg in logits):
        raise ValueError(
            f"per_source_cross_entropy: expected logits (B, C) and domain ({batch},), got "
            f"{[tuple(lg.shape) for lg in logits]} and {tuple(domain.shape)}"
        )
    bad = domain[(domain < -1) | (domain >= n)]
    if bad.numel():
        raise ValueError(
            f"per_source_cross_entropy: domain ids {sorted(set(bad.tolist()))[:5]} outside [-1, {n - 1}] for {n} "
            "per-source classifiers; build the model with num_sources = the number of source domains"
        )
    terms = []
    for i, lg in enumerate(logits):
        rows = (domain == i) | (domain == -1)
        if bool(rows.any()):
            terms.append(F.cross_entropy(lg[rows], target[rows], label_smoothing=label_smoothing))
        else:  # absent from this batch: a zero term that keeps classifier i in the graph (zero, not no, gradient)
            terms.append(lg.sum() * 0.0)
    return torch.stack(terms)
