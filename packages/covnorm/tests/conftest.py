from __future__ import annotations

import pytest
import torch

import covnorm as cn


@pytest.fixture
def tiny_model() -> cn.MultiDomainModel:
    """A small VGG-like backbone with residual adapters for two domains (A initialised non-zero)."""
    torch.manual_seed(0)
    net = cn.small_vgg(widths=((8,), (16,)), hidden=12, num_classes=5)
    cn.inject(net, where=cn.vgg16_sites, domains=["digits", "letters"], a_init="normal")
    model = cn.MultiDomainModel(net, {"digits": 10, "letters": 26})
    # give the adapters non-trivial weights and the BNs non-trivial running statistics
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.1 * torch.randn_like(p))
    model.train()
    for domain in ("digits", "letters"):
        model.set_domain(domain)
        for _ in range(3):
            model(torch.randn(8, 3, 32, 32))
    model.eval()
    model.set_domain("digits")
    return model


@pytest.fixture
def batches() -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return [torch.randn(16, 3, 32, 32, generator=g) for _ in range(4)]
