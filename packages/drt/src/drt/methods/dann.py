"""``dann``: CE + λ·DANN (Ganin & Lempitsky): a domain discriminator on GRL(features), trained by G's optimiser."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from drt.losses import DomainAdversarialLoss, DomainDiscriminator
from drt.methods.base import AlignmentMethod, Learner


class DANN(AlignmentMethod):
    name = "dann"

    def __init__(self, learner: Learner) -> None:
        super().__init__(learner)
        self.dann = DomainAdversarialLoss(DomainDiscriminator(learner.feature_dim)).to(learner.device)

    def extra_parameters(self) -> list[nn.Parameter]:
        return list(self.dann.parameters())

    def sync_modules(self) -> list[nn.Module]:
        return [self.dann]

    def state_dict(self) -> dict[str, object]:
        return {"dann": self.dann.state_dict()}

    def load_state_dict(self, state: dict[str, object]) -> None:  # type: ignore[override]
        self.dann.load_state_dict(state["dann"])  # type: ignore[arg-type]

    def step(self, step: int, xs: Tensor, ys: Tensor, ds: Tensor | None, xt: Tensor) -> dict[str, float]:
        learner = self.learner
        f = learner.features(torch.cat([xs, xt]))
        f_s, f_t = f[: xs.shape[0]], f[xs.shape[0] :]
        ce = learner.ce(f_s, ys)
        align = self.dann(f_s, f_t)
        total = ce + learner.cfg.trade_off * learner.ramp(step) * align
        learner.update(total, [learner.opt_g, learner.opt_f], [learner.heads(), self.dann])
        return {"loss": float(total.detach()), "ce": float(ce.detach()), "domain": float(align.detach())}
