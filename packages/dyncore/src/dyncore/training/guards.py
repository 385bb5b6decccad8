"""Guards against silently wrong runs: a non-finite loss or weights stop the run with a message that names the cause.

A diverged loss (NaN / inf) poisons every later step and, if nothing checks it, a run "finishes" with NaN weights and
a meaningless score. :func:`check_finite` is called on the loss of every step (one scalar ``isfinite`` — a host sync
that is negligible next to a training step) and :func:`check_finite_state` on weights about to be evaluated or
exported.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

__all__ = ["NonFiniteError", "check_finite", "check_finite_state"]


class NonFiniteError(ValueError):
    """A loss, output or weight is NaN or infinite (a user error: usually the learning rate or the input size)."""


def check_finite(value: torch.Tensor | float, *, what: str, hint: str = "") -> None:
    """Raise :class:`NonFiniteError` if ``value`` (a tensor of any shape, or a float) has a NaN or infinite entry.

    Args:
        what: names the value in the message, e.g. ``"loss at step 12"``.
        hint: what to do about it, e.g. ``"lower --lr (now 1e6)"``.
    """
    if isinstance(value, torch.Tensor):
        finite = bool(torch.isfinite(value.detach()).all())
        shown = f"{value.detach().float().flatten()[0].item():g}" if value.numel() == 1 else "non-finite entries"
    else:
        finite = math.isfinite(float(value))
        shown = f"{float(value):g}"
    if not finite:
        raise NonFiniteError(f"{what} is {shown}" + (f"; {hint}" if hint else ""))


def check_finite_state(state: Mapping[str, Any] | nn.Module, *, source: str) -> None:
    """Raise :class:`NonFiniteError` naming the first floating-point tensor of ``state`` (a state dict or a module)
    with a NaN or infinite entry, and ``source`` (the file or run it came from)."""
    items = state.state_dict() if isinstance(state, nn.Module) else state
    bad = [
        name
        for name, t in items.items()
        if isinstance(t, torch.Tensor) and t.is_floating_point() and not bool(torch.isfinite(t).all())
    ]
    if bad:
        more = f" (and {len(bad) - 1} more)" if len(bad) > 1 else ""
        raise NonFiniteError(
            f"{source}: tensor {bad[0]!r}{more} holds NaN or infinite values; the run that wrote it diverged"
        )
