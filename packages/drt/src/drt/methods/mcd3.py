"""``mcd3``: classic three-step MCD (Saito et al.) — A: source CE; B: the heads maximise the target discrepancy
while staying accurate on the source; C: the features minimise it ``num_k`` times."""

from __future__ import annotations

import torch
from torch import Tensor

from drt.losses import classifier_discrepancy
from drt.methods.base import AlignmentMethod


class MCD3(AlignmentMethod):
    name = "mcd3"

    def step(self, step: int, xs: Tensor, ys: Tensor, ds: Tensor | None, xt: Tensor) -> dict[str, float]:
        learner = self.learner
        heads = learner.heads()
        # A: source CE on G and both heads.
        ce = learner.ce(learner.features(xs), ys)
        learner.update(ce, [learner.opt_g, learner.opt_f], [heads])
        # B: heads maximise the target discrepancy while staying accurate on the source (G fixed).
        with torch.no_grad():
            f = learner.features(torch.cat([xs, xt]))
        f_s, f_t = f[: xs.shape[0]], f[xs.shape[0] :]
        dis_b = classifier_discrepancy(heads[0](f_t), heads[1](f_t))
        learner.update(learner.ce(f_s, ys) - dis_b, [learner.opt_f], [heads])
        # C: G minimises the discrepancy num_k times (heads fixed).
        dis_c = torch.zeros(())
        for _ in range(learner.cfg.num_k):
            f_t = learner.features(xt)
            dis_c = classifier_discrepancy(heads[0](f_t), heads[1](f_t))
            learner.update(dis_c, [learner.opt_g], [])
        return {"ce": float(ce.detach()), "dis_max": float(dis_b.detach()), "dis_min": float(dis_c.detach())}
