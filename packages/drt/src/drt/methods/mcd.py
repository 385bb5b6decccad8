"""``mcd``: the released one-pass MCD with gradient reversal (:class:`drt.losses.MCDLoss`): one forward of
[x_s; x_t], CE + γ·L_div − η·L_dis with the heads maximising and (through the GRL) G minimising the discrepancy."""

from __future__ import annotations

import torch
from torch import Tensor

from drt.losses import MCDLoss
from drt.methods.base import AlignmentMethod, Learner


class MCD(AlignmentMethod):
    name = "mcd"

    def __init__(self, learner: Learner) -> None:
        super().__init__(learner)
        self.mcd = MCDLoss(learner.cfg.mcd)

    def step(self, step: int, xs: Tensor, ys: Tensor, ds: Tensor | None, xt: Tensor) -> dict[str, float]:
        learner = self.learner
        self.mcd.eta = learner.cfg.mcd.eta * learner.ramp(step)  # η warm-up (constant without align_warmup)
        f = learner.features(torch.cat([xs, xt]))
        f_s, f_t = f[: xs.shape[0]], f[xs.shape[0] :]
        heads = learner.heads()
        parts = self.mcd(list(heads), f_s, ys, f_t)
        learner.update(parts["loss"], [learner.opt_g, learner.opt_f], [heads])
        return {k: float(v.detach()) for k, v in parts.items()}
