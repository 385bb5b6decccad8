from __future__ import annotations

import pytest
import torch
from torch import nn

from bdl.translation import (
    CycleGAN,
    CycleGANConfig,
    ImagePool,
    PatchDiscriminator,
    PerceptualLoss,
    ResnetGenerator,
    linear_decay,
    make_translation_optimizers,
    translation_step,
)


def _count(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


@pytest.mark.quick
def test_cyclegan_networks_have_the_reference_parameter_counts():
    # the CycleGAN reference resnet_9blocks generator (ngf 64) and 3-layer PatchGAN (ndf 64)
    assert _count(ResnetGenerator(ngf=64, n_blocks=9)) == 11_378_179
    assert _count(PatchDiscriminator(ndf=64, n_layers=3)) == 2_764_737
    g = ResnetGenerator(ngf=8, n_blocks=2)
    y = g(torch.randn(2, 3, 32, 64))
    assert y.shape == (2, 3, 32, 64) and float(y.detach().abs().max()) <= 1.0
    assert PatchDiscriminator(ndf=8)(torch.randn(2, 3, 32, 64)).shape == (2, 1, 2, 6)
    with pytest.raises(ValueError, match="divisible by 4"):
        g(torch.randn(1, 3, 30, 64))


def test_image_pool_fills_then_mixes_and_round_trips():
    torch.manual_seed(0)
    pool = ImagePool(4)
    first = torch.arange(4.0).view(4, 1, 1, 1)
    assert torch.equal(pool.query(first), first)  # filling: fakes pass through
    fresh = torch.full((64, 1, 1, 1), 100.0)
    out = pool.query(fresh)
    n_old = int((out < 100).sum())
    assert 0 < n_old < 64  # about half come from history
    saved = pool.state()
    other = ImagePool(4)
    other.load_state(saved)
    assert torch.equal(other.state(), saved)
    assert torch.equal(ImagePool(0).query(first), first)


@pytest.mark.quick
def test_perceptual_loss_uses_frozen_eval_model_and_is_zero_for_identical_images():
    seg = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.Conv2d(8, 5, 1))
    per = PerceptualLoss(seg)
    per.train()
    assert not seg.training and all(not p.requires_grad for p in seg.parameters())
    x = torch.randn(2, 3, 32, 64)
    assert float(per(x, x, x)) == 0.0
    g = ResnetGenerator(ngf=4, n_blocks=1)
    fake = g(x)
    loss = per(x, fake, fake)
    loss.backward()
    assert loss > 0 and all(p.grad is not None for p in g.parameters())
    # λ weights: only the reconstruction term is active when the translation equals the input
    per2 = PerceptualLoss(seg, lambda_per=0.1, lambda_per_recon=10.0)
    y = torch.randn(2, 3, 32, 64)
    f = per2.features
    expected = 10.0 * torch.mean((f(y) - f(x)) ** 2)
    assert torch.allclose(per2(x, x, y), expected, atol=1e-6)


def test_cycle_loss_decreases_on_a_fixed_batch():
    torch.manual_seed(0)
    cyc = CycleGAN(CycleGANConfig(ngf=8, ndf=8, n_blocks=1, pool_size=4))
    opt_g, opt_d = make_translation_optimizers(cyc)
    for g in [*opt_g.param_groups, *opt_d.param_groups]:
        g["lr"] = 2e-3
    smooth = lambda: torch.nn.functional.interpolate(torch.rand(2, 3, 4, 4) * 2 - 1, size=(32, 32), mode="bilinear")  # noqa: E731
    s, t = smooth(), smooth()
    seg = nn.Conv2d(3, 5, 1)
    per = PerceptualLoss(seg)
    first = translation_step(cyc, opt_g, opt_d, s, t, per)
    for _ in range(15):
        last = translation_step(cyc, opt_g, opt_d, s, t, per)
    assert {"gan", "recon", "identity", "perceptual", "loss_g", "loss_d"} <= set(first)
    assert last["recon"] < 0.9 * first["recon"]
    assert seg.weight.grad is None  # M stays frozen


def test_linear_decay_schedule():
    assert [linear_decay(s, 10) for s in (0, 4, 5, 7, 10)] == [1.0, 1.0, 1.0, 0.6, 0.0]
