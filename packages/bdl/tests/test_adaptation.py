from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from bdl.adaptation import (
    AdaptationConfig,
    OutputDiscriminator,
    adaptation_step,
    adversarial_loss,
    make_segmenter_optimizer,
    pseudo_label_loss,
    segmentation_loss,
)


@pytest.mark.quick
def test_output_discriminator_architecture():
    d = OutputDiscriminator(19)
    convs = [m for m in d.modules() if isinstance(m, nn.Conv2d)]
    assert [(c.in_channels, c.out_channels) for c in convs] == [(19, 64), (64, 128), (128, 256), (256, 512), (512, 1)]
    assert all(c.kernel_size == (4, 4) and c.stride == (2, 2) and c.padding == (1, 1) for c in convs)
    assert not any(isinstance(m, nn.modules.batchnorm._NormBase) for m in d.modules())
    assert sum(isinstance(m, nn.LeakyReLU) and m.negative_slope == 0.2 for m in d.modules()) == 4
    n = sum(ci * co * 16 + co for ci, co in [(19, 64), (64, 128), (128, 256), (256, 512), (512, 1)])
    assert sum(p.numel() for p in d.parameters()) == n
    assert d(torch.rand(2, 19, 64, 128)).shape == (2, 1, 2, 4)
    with pytest.raises(ValueError, match=r"expects \(B, 19, H, W\)"):
        d(torch.rand(2, 5, 64, 128))


def test_adversarial_and_segmentation_losses():
    logits = torch.randn(3, 1, 2, 2)
    assert torch.allclose(adversarial_loss(logits, 0.0), F.softplus(logits).mean())
    assert torch.allclose(adversarial_loss(logits, 1.0), F.softplus(-logits).mean())
    seg = torch.randn(2, 4, 3, 3)
    y = torch.randint(0, 4, (2, 3, 3))
    y[0, 0, 0] = 255
    keep = y != 255
    ce = F.cross_entropy(seg, y.clamp(max=3), reduction="none")[keep].mean()
    assert torch.allclose(segmentation_loss(seg, y), ce)
    # Eq. 5.9 normalised by H·W versus by the selected pixels
    sel = pseudo_label_loss(seg, y, normalize="selected")
    assert torch.allclose(pseudo_label_loss(seg, y, normalize="all"), sel * keep.float().mean())
    none = torch.full_like(y, 255)
    assert float(pseudo_label_loss(seg, none)) == 0.0


@pytest.mark.quick
def test_class_count_and_size_mismatch_are_clear_errors():
    with pytest.raises(ValueError, match="class-count mismatch: labels hold class id 7 but the model predicts 5"):
        segmentation_loss(torch.randn(1, 5, 4, 4), torch.full((1, 4, 4), 7))
    with pytest.raises(ValueError, match="image/label size mismatch"):
        segmentation_loss(torch.randn(1, 5, 4, 4), torch.zeros(1, 4, 5, dtype=torch.long))


def test_adaptation_step_lowers_the_loss_on_a_fixed_batch_and_trains_d_on_detached_outputs():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 4, 1))
    model.num_classes = 4
    disc = OutputDiscriminator(4, ndf=8)
    cfg = AdaptationConfig(lr=1e-2, optimizer="adam", lambda_adv=0.01, d_lr=1e-3, weight_decay=0.0)
    opt_m = make_segmenter_optimizer(model, cfg)
    opt_d = torch.optim.Adam(disc.parameters(), lr=cfg.d_lr, betas=cfg.d_betas)
    xs, xt = torch.randn(2, 3, 32, 32), torch.randn(2, 3, 32, 32)
    proj = torch.randn(4, 3)
    ys = torch.einsum("kc,bchw->bkhw", proj, xs).argmax(1)  # learnable labels
    pt = torch.einsum("kc,bchw->bkhw", proj, xt).argmax(1)
    pt[:, :16] = 255
    d_before = [p.detach().clone() for p in disc.parameters()]
    first = adaptation_step(model, disc, opt_m, opt_d, (xs, ys), (xt, pt), cfg)
    assert {"seg", "seg_pseudo", "adv", "d", "loss"} <= set(first)
    assert any(not torch.equal(a, b) for a, b in zip(d_before, disc.parameters()))
    for _ in range(30):
        last = adaptation_step(model, disc, opt_m, opt_d, (xs, ys), (xt, pt), cfg)
    assert last["seg"] < 0.7 * first["seg"] and last["seg_pseudo"] < 0.7 * first["seg_pseudo"]
    # source only: no discriminator terms
    only = adaptation_step(model, None, opt_m, None, (xs, ys), None, cfg)
    assert set(only) == {"seg", "loss"}


def test_lr_policies_poly_and_step():
    from bdl.adaptation import set_lr

    model = nn.Conv2d(3, 4, 1)
    poly = AdaptationConfig(lr=1.0, head_lr_mult=1.0)
    opt = make_segmenter_optimizer(model, poly)
    set_lr(opt, 50, 100, poly)
    assert opt.param_groups[0]["lr"] == pytest.approx(0.5**0.9)
    step = AdaptationConfig(lr=1.0, head_lr_mult=1.0, optimizer="adam", lr_policy="step", step_size=5000)
    opt = make_segmenter_optimizer(model, step)
    set_lr(opt, 10_001, 20_000, step)
    assert opt.param_groups[0]["lr"] == pytest.approx(0.01)
