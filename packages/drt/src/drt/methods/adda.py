"""``adda`` (Tzeng et al.): source-only pre-training for ``adda_pretrain`` of the steps, then the target encoder is
trained against a discriminator (GAN loss, inverted labels) with a frozen copy of the source encoder and the heads
frozen."""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from drt.losses import AdversarialDiscriminativeLoss, DomainDiscriminator
from drt.methods.base import AlignmentMethod, Learner
from drt.methods.source_only import source_step
from dyncore.training import load_state_dict_strict, unwrap


class ADDA(AlignmentMethod):
    name = "adda"

    def __init__(self, learner: Learner) -> None:
        super().__init__(learner)
        self.adda = AdversarialDiscriminativeLoss(DomainDiscriminator(learner.feature_dim)).to(learner.device)
        self.source_encoder: nn.Module | None = None  # set when pre-training ends

    def build_optimizer(self, lr: float, momentum: float, weight_decay: float) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.adda.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay)

    def sync_modules(self) -> list[nn.Module]:
        return [m for m in (self.adda, self.source_encoder) if m is not None]

    def state_dict(self) -> dict[str, Any]:
        assert self.learner.opt_d is not None
        encoder = None if self.source_encoder is None else self.source_encoder.state_dict()
        return {"opt_d": self.learner.opt_d.state_dict(), "adda": self.adda.state_dict(), "source_encoder": encoder}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        assert self.learner.opt_d is not None
        self.learner.opt_d.load_state_dict(state["opt_d"])
        self.adda.load_state_dict(state["adda"])
        if state["source_encoder"] is not None:
            self.freeze_source_encoder()
            assert self.source_encoder is not None
            load_state_dict_strict(self.source_encoder, state["source_encoder"])

    def freeze_source_encoder(self) -> None:
        """End of pre-training: a frozen copy of the backbone becomes the source encoder; the heads freeze."""
        self.learner.sync_buffers()
        self.source_encoder = copy.deepcopy(unwrap(self.learner.model).backbone).eval().requires_grad_(False)
        self.learner.heads().requires_grad_(False)

    def step(self, step: int, xs: Tensor, ys: Tensor, ds: Tensor | None, xt: Tensor) -> dict[str, float]:
        learner = self.learner
        if step < int(learner.cfg.adda_pretrain * learner.cfg.steps):
            return source_step(self, xs, ys)
        assert learner.opt_d is not None
        if self.source_encoder is None:
            self.freeze_source_encoder()
        assert self.source_encoder is not None
        with torch.no_grad():
            f_s = self.source_encoder(xs)
            f_t = learner.features(xt)  # the discriminator step reads detached target features
        d_loss = self.adda.discriminator_loss(f_s, f_t)
        learner.update(d_loss, [learner.opt_d], [self.adda])
        g_loss = self.adda.encoder_loss(learner.features(xt))
        learner.update(g_loss, [learner.opt_g], [])
        return {"disc": float(d_loss.detach()), "encoder": float(g_loss.detach())}
