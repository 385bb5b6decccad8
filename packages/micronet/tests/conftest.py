"""Shared test helpers: well-scaled MicroNets for equivalence checks that can fail."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from torch import nn

from dyncore.export import calibrate_batchnorm
from micronet.layers import DynamicShiftMax


def make_well_scaled(model: nn.Module, size: int = 64, *, seed: int = 0) -> nn.Module:
    """Non-trivial Dynamic Shift-Max coefficients (coefficient FCs N(0, 0.1) instead of 0.01: coefficients vary
    per sample and channel, ≈0.1 around their init) and BatchNorm statistics calibrated on random images; eval mode."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, DynamicShiftMax):
                for lin in m.coefficients.modules():
                    if isinstance(lin, nn.Linear):
                        lin.weight.normal_(0.0, 0.1, generator=g)
                        lin.bias.normal_(0.0, 0.1, generator=g)
    if any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules()):
        in_chans = getattr(model, "in_chans", None) or _first_in_channels(model)
        batches = [torch.randn(16, in_chans, size, size, generator=g) for _ in range(4)]
        calibrate_batchnorm(model, batches)
    return model.eval()


def _first_in_channels(model: nn.Module) -> int:
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            return m.in_channels
        if isinstance(m, DynamicShiftMax):
            return m.channels
    raise ValueError("make_well_scaled: cannot tell the input channels")


@pytest.fixture
def well_scaled() -> Callable[..., nn.Module]:
    return make_well_scaled
