"""``source_only``: CE on the pooled sources through both heads; no alignment (Table 6.2's first row)."""

from __future__ import annotations

from torch import Tensor

from drt.methods.base import AlignmentMethod


def source_step(method: AlignmentMethod, xs: Tensor, ys: Tensor) -> dict[str, float]:
    """Σ_j CE(F_j(G(xs)), ys) minimised by G and the heads (also ADDA's pre-training step)."""
    learner = method.learner
    loss = learner.ce(learner.features(xs), ys)
    learner.update(loss, [learner.opt_g, learner.opt_f], [learner.heads()])
    return {"loss": float(loss.detach())}


class SourceOnly(AlignmentMethod):
    name = "source_only"

    def step(self, step: int, xs: Tensor, ys: Tensor, ds: Tensor | None, xt: Tensor) -> dict[str, float]:
        return source_step(self, xs, ys)
