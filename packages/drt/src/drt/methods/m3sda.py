"""``m3sda``: M³SDA-β (Peng et al. 2019) — a classifier pair per source domain (``DomainAdaptationNet(...,
num_sources=N)``), each trained on its own source; CE + λ·moment matching, then the MCD schedule per pair. The only
method that reads source domain labels."""

from __future__ import annotations

from typing import cast

import torch
from torch import Tensor

from drt.losses import (
    DomainLabelsRequiredError,
    MomentMatchingLoss,
    classifier_discrepancy,
    per_source_cross_entropy,
)
from drt.methods.base import AlignmentMethod, Learner
from drt.models import SourceClassifiers


class M3SDA(AlignmentMethod):
    name = "m3sda"
    needs_domain_labels = True

    def __init__(self, learner: Learner) -> None:
        super().__init__(learner)
        self.mm = MomentMatchingLoss()

    def _banks(self) -> list[SourceClassifiers]:
        return [cast(SourceClassifiers, h) for h in self.learner.heads()]

    def _source_ce(self, f_s: Tensor, ys: Tensor, ds: Tensor) -> Tensor:
        """Σ over both banks and every source i of CE(C_i, source i's samples) (classifier i sees only source i)."""
        return sum(per_source_cross_entropy(b.per_source(f_s), ys, ds).sum() for b in self._banks())  # type: ignore[return-value]

    def _pair_discrepancy(self, f_t: Tensor) -> Tensor:
        """Σ_i L_dis(C_i(f_t), C'_i(f_t)) over the N per-source classifier pairs."""
        first, second = self._banks()
        pairs = zip(first.per_source(f_t), second.per_source(f_t))
        return sum(classifier_discrepancy(a, b) for a, b in pairs)  # type: ignore[return-value]

    def step(self, step: int, xs: Tensor, ys: Tensor, ds: Tensor | None, xt: Tensor) -> dict[str, float]:
        """A: G and all classifiers minimise the per-source CE + λ·moment matching; B: the classifiers (G fixed)
        maximise each pair's target discrepancy while staying accurate on their source; C: G minimises the
        discrepancies ``num_k`` times."""
        if ds is None:
            raise DomainLabelsRequiredError(
                "method 'm3sda' (M³SDA-β) needs source domain labels: the source dataset must yield (x, y, domain)"
            )
        learner = self.learner
        heads = learner.heads()
        n_s = xs.shape[0]
        f = learner.features(torch.cat([xs, xt]))
        f_s, f_t = f[:n_s], f[n_s:]
        ce = self._source_ce(f_s, ys, ds)
        moments = self.mm(f_s, ds, f_t)
        total = ce + learner.cfg.trade_off * learner.ramp(step) * moments
        learner.update(total, [learner.opt_g, learner.opt_f], [heads])
        with torch.no_grad():
            f = learner.features(torch.cat([xs, xt]))
        dis_b = self._pair_discrepancy(f[n_s:])
        learner.update(self._source_ce(f[:n_s], ys, ds) - dis_b, [learner.opt_f], [heads])
        dis_c = torch.zeros(())
        for _ in range(learner.cfg.num_k):
            dis_c = self._pair_discrepancy(learner.features(xt))
            learner.update(dis_c, [learner.opt_g], [])
        return {
            "loss": float(total.detach()),
            "ce": float(ce.detach()),
            "moments": float(moments.detach()),
            "dis_max": float(dis_b.detach()),
            "dis_min": float(dis_c.detach()),
        }
