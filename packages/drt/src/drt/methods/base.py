"""The learner shared by every alignment method, and the method interface.

:class:`Learner` holds what every method needs — the optimisers of the feature extractor G (``opt_g``) and of the
heads F (``opt_f``), the step-decay lr schedule, the DDP plumbing, the alignment warm-up — and delegates the
optimisation step to an :class:`AlignmentMethod` (one module per method of Table 6.2, looked up by name in
:data:`drt.methods.METHOD_REGISTRY`).
"""

from __future__ import annotations

import abc
import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dyncore.training import CheckpointError, DistEnv, all_reduce_mean, unwrap, wrap_ddp

if TYPE_CHECKING:
    from drt.models import DomainAdaptationNet
    from drt.train import TrainConfig

__all__ = ["STATE_KEYS", "AlignmentMethod", "Learner", "is_new_parameter"]

#: the method-owned entries of a checkpoint's learner state (``None`` where a method has no such part); the names
#: are the checkpoint format and stay fixed whatever method wrote it.
STATE_KEYS = ("opt_d", "dann", "adda", "source_encoder")


def is_new_parameter(name: str) -> bool:
    """Whether a backbone parameter belongs to the dynamic residual (trained at ``lr × new_lr_mult``)."""
    return ".coefficients." in name or name.endswith(".bases")


class AlignmentMethod(abc.ABC):
    """One alignment loss L_d of Eq. 6.6 as an optimisation step on a :class:`Learner`.

    Subclasses set ``name`` and implement :meth:`step`; a method with its own modules (a discriminator) creates
    them in ``__init__`` (before the learner builds its optimisers: their initialisation draws from the global RNG in
    a fixed order) and exposes them through the hooks below.
    """

    name: ClassVar[str] = ""
    #: whether the sources must yield (x, y, domain): only M³SDA-β reads domain labels.
    needs_domain_labels: ClassVar[bool] = False

    def __init__(self, learner: Learner) -> None:
        self.learner = learner

    def extra_parameters(self) -> list[nn.Parameter]:
        """Parameters G's optimiser also trains at the new-layer lr (DANN's discriminator, behind the GRL)."""
        return []

    def build_optimizer(self, lr: float, momentum: float, weight_decay: float) -> torch.optim.Optimizer | None:
        """A third optimiser of the method's own (ADDA's discriminator), or ``None``."""
        return None

    def sync_modules(self) -> list[nn.Module]:
        """Modules outside the model whose buffers are averaged across processes (discriminators, encoders)."""
        return []

    def state_dict(self) -> dict[str, Any]:
        """The method's part of the learner state, keyed by :data:`STATE_KEYS` (absent keys are saved as None)."""
        return {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:  # noqa: B027  (a no-op default, not abstract)
        """Restore :meth:`state_dict` (the keys this method owns, validated by the learner)."""

    @abc.abstractmethod
    def step(self, step: int, xs: Tensor, ys: Tensor, ds: Tensor | None, xt: Tensor) -> dict[str, float]:
        """One optimisation step on a source batch (xs, ys[, ds]) and a target batch xt; returns the losses."""


class Learner:
    """Optimisers, lr schedule and shared helpers of one run; the step itself is the method's
    (``method`` = the registered :class:`AlignmentMethod` for ``cfg.method``).

    ``encoder`` is the backbone used for training forwards: the model's own backbone, or a DDP wrapper around it in a
    distributed run (the model itself is never wrapped, so its state_dict keys never change).
    """

    def __init__(self, model: DomainAdaptationNet, cfg: TrainConfig, env: DistEnv | None) -> None:
        from drt.methods import get_method

        self.model, self.cfg, self.env = model, cfg, env
        self.device = torch.device(cfg.device)
        net = unwrap(model)
        self.feature_dim: int = net.feature_dim
        self.encoder: nn.Module = net.backbone
        if env is not None and env.is_distributed:
            self.encoder = wrap_ddp(net.backbone, env)
        self.method = get_method(cfg.method)(self)
        static = [p for n, p in net.backbone.named_parameters() if not is_new_parameter(n) and p.requires_grad]
        new = [p for n, p in net.backbone.named_parameters() if is_new_parameter(n) and p.requires_grad]
        mom, wd = cfg.momentum, cfg.weight_decay
        hi = cfg.lr * cfg.new_lr_mult
        extra = self.method.extra_parameters()
        groups: list[dict[str, Any]] = [{"params": static, "lr": cfg.lr}, {"params": new + extra, "lr": hi}]
        self.opt_g = torch.optim.SGD([g for g in groups if g["params"]], lr=cfg.lr, momentum=mom, weight_decay=wd)
        self.opt_f = torch.optim.SGD(net.heads.parameters(), lr=hi, momentum=mom, weight_decay=wd)
        self.opt_d = self.method.build_optimizer(hi, mom, wd)
        self.optimizers = [o for o in (self.opt_g, self.opt_f, self.opt_d) if o is not None]
        self.base_lrs = [[g["lr"] for g in o.param_groups] for o in self.optimizers]

    def set_lr(self, step: int) -> None:
        """Step decay: lr × 0.1 at every milestone already passed."""
        factor = 0.1 ** sum(step >= m for m in self.cfg.lr_milestones)
        for o, lrs in zip(self.optimizers, self.base_lrs):
            for g, lr in zip(o.param_groups, lrs):
                g["lr"] = lr * factor

    # resume -----------------------------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Everything the learner holds besides the model and ``opt_g`` (which the Checkpointer stores itself): the
        head optimiser and the method's parts (:data:`STATE_KEYS`; ``None`` where the method has none, e.g. ADDA's
        source encoder while it is still pre-training)."""
        return {"opt_f": self.opt_f.state_dict(), **dict.fromkeys(STATE_KEYS), **self.method.state_dict()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict` (the model must already hold the checkpoint's weights)."""
        missing = [k for k in ("opt_f", *STATE_KEYS) if k not in state]
        if missing:
            raise CheckpointError(f"train: the checkpoint's learner state lacks {missing}")
        owned = self.method.state_dict()
        for key in STATE_KEYS:
            if key == "source_encoder":  # None until ADDA's pre-training ends: either is valid for ADDA
                fits = state[key] is None or key in owned
            else:
                fits = (owned.get(key) is None) == (state[key] is None)
            if not fits:
                raise CheckpointError(f"train: the checkpoint's `{key}` state does not fit method {self.cfg.method!r}")
        self.opt_f.load_state_dict(state["opt_f"])
        self.method.load_state_dict(state)

    def sync_buffers(self) -> None:
        """DDP: average every buffer (BN running statistics) of the model and of the method's own modules across
        processes. DDP keeps parameters equal but each process updates its own running statistics (and those of
        modules outside DDP: heads, discriminators); after this call every process holds the same state, which is
        what a checkpoint stores (before evaluation, saving, and freezing ADDA's source encoder)."""
        if self.env is None or not self.env.is_distributed:
            return
        for module in (unwrap(self.model), *self.method.sync_modules()):
            for buf in module.buffers():
                buf.copy_(all_reduce_mean(buf, self.env).to(buf.dtype))

    # helpers for the methods ------------------------------------------------------------------------------------------
    def heads(self) -> nn.ModuleList:
        return unwrap(self.model).heads

    def sync_small(self, modules: Sequence[nn.Module]) -> None:
        """Average the gradients of modules outside DDP (heads, discriminator) across processes. Every trainable
        parameter takes part (a missing gradient counts as zeros), so all processes issue the same collectives even
        when a batch leaves a parameter unused on one of them."""
        if self.env is None or not self.env.is_distributed:
            return
        for m in modules:
            for p in m.parameters():
                if p.requires_grad:
                    p.grad = all_reduce_mean(p.grad if p.grad is not None else torch.zeros_like(p), self.env)

    def update(self, loss: Tensor, optimizers: Sequence[torch.optim.Optimizer], small: Sequence[nn.Module]) -> None:
        """Zero every gradient, back-propagate ``loss``, average the gradients of ``small`` (DDP), step
        ``optimizers``."""
        for o in self.optimizers:
            o.zero_grad(set_to_none=True)
        loss.backward()
        self.sync_small(small)
        for opt in optimizers:
            opt.step()

    def ce(self, f_s: Tensor, y: Tensor) -> Tensor:
        """Σ over the heads of CE(F_j(f_s), y)."""
        return sum(F.cross_entropy(h(f_s), y) for h in self.heads())  # type: ignore[return-value]

    def features(self, x: Tensor) -> Tensor:
        """G(x) through the (possibly DDP-wrapped) encoder."""
        return self.encoder(x)

    def ramp(self, step: int) -> float:
        """Alignment weight factor in [0, 1] (DANN schedule over the warm-up fraction of the steps)."""
        span = self.cfg.align_warmup * self.cfg.steps
        if span <= 0:
            return 1.0
        p = min(1.0, step / span)
        return float(2.0 / (1.0 + math.exp(-10.0 * p)) - 1.0)

    def step(self, step: int, xs: Tensor, ys: Tensor, ds: Tensor | None, xt: Tensor) -> dict[str, float]:
        """One optimisation step of the configured method."""
        return self.method.step(step, xs, ys, ds, xt)
