"""Surgery across packages: a DCD network gets CovNorm residual adapters (covnorm.inject) after its static convs and a
DRT dynamic residual (drt.DynamicResidualConv2d) on those same convs — three dynamic methods in one model. Trained one
step, saved with dyncore's atomic checkpoint and reloaded into a freshly built identical model."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import covnorm
import dcd
import drt
from dyncore.surgery import by_name, by_type, replace_modules
from dyncore.training import (
    IncompatibleCheckpointError,
    load_checkpoint,
    load_state_dict_strict,
    save_checkpoint,
    seed_everything,
)

DOMAINS = ("svhn", "mnist")
DRT_CONFIG = drt.DynamicResidualConfig(kind="combination", num_bases=2, zero_init=False, apply="featurewise")


def build(seed: int) -> nn.Module:
    """DCD-ResNet-10 (32×32 variant, width 16) → CovNorm adapters after the static stem/shortcut convs (backbone
    frozen) → those frozen convs become DRT convs (W0 kept frozen, residual bases and routing trainable)."""
    seed_everything(seed)
    model = dcd.create("dcd_resnet10", num_classes=10, small_input=True, width=16)
    static = by_type(nn.Conv2d) & by_name(r"(^stem\.0\.conv|\.shortcut\.conv)$")
    covnorm.inject(model, where=static, domains=DOMAINS)
    replace_modules(
        model,
        by_type(nn.Conv2d) & by_name(r"\.original$"),
        lambda name, conv: drt.DynamicResidualConv2d.from_conv(conv, config=DRT_CONFIG),
    )
    return model


def test_dcd_backbone_with_covnorm_adapters_and_drt_residuals_trains_saves_and_reloads(tmp_path: Path) -> None:
    model = build(seed=0)
    # the three methods' layers all sit in the one model
    n_static = 1 + 3  # stem conv + the shortcut convs of layer2..4
    assert len(covnorm.adapter_sites(model)) == n_static
    assert len(list(drt.dynamic_residual_layers(model))) == n_static
    assert len(dcd.models.dynamic_layers(model)) == 2 * 4 + 1  # both 3×3 convs of the four BasicBlocks + classifier
    for _, layer in drt.dynamic_residual_layers(model):
        assert not layer.weight.requires_grad and layer.bases is not None and layer.bases.requires_grad

    frozen = {k: v.detach().clone() for k, v in model.named_parameters() if not v.requires_grad}
    trainable = {k: v.detach().clone() for k, v in model.named_parameters() if v.requires_grad}
    assert any(".branches.svhn." in k for k in trainable) and any(".bases" in k for k in trainable)

    x, y = torch.randn(8, 3, 32, 32), torch.randint(0, 10, (8,))
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    model.train()
    loss = F.cross_entropy(model(x), y)
    assert math.isfinite(loss.item())
    loss.backward()
    opt.step()

    params = dict(model.named_parameters())
    assert all(torch.equal(v, params[k]) for k, v in frozen.items()), "a frozen backbone weight moved"
    moved = {k for k, v in trainable.items() if not torch.equal(v, params[k].detach())}
    assert any(".bases" in k for k in moved) and any(".branches.svhn.a." in k for k in moved)
    assert not any(".branches.mnist." in k for k in moved), "an inactive domain's adapter moved"

    path = save_checkpoint(tmp_path / "ckpt" / "model.pt", {"model": model.state_dict(), "step": 1})
    fresh = build(seed=1)
    x_eval = torch.randn(4, 3, 32, 32)
    model.eval()
    fresh.eval()
    with torch.no_grad():
        assert not torch.allclose(fresh(x_eval), model(x_eval))  # different seed → a different network
        load_state_dict_strict(fresh, load_checkpoint(path)["model"])
        assert torch.equal(fresh(x_eval), model(x_eval))

    # a model without the DRT surgery cannot silently take the checkpoint
    seed_everything(0)
    plain = dcd.create("dcd_resnet10", num_classes=10, small_input=True, width=16)
    covnorm.inject(plain, where=by_type(nn.Conv2d) & by_name(r"(^stem\.0\.conv|\.shortcut\.conv)$"), domains=DOMAINS)
    with pytest.raises(IncompatibleCheckpointError, match="unexpected keys"):
        load_state_dict_strict(plain, load_checkpoint(path)["model"])
