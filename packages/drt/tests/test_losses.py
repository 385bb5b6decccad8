from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from drt.losses import (
    ClassBalanceLoss,
    DomainAdversarialLoss,
    DomainDiscriminator,
    DomainLabelsRequiredError,
    GradientReversal,
    MCDConfig,
    MCDLoss,
    MomentMatchingLoss,
    classifier_discrepancy,
)


@pytest.mark.quick
def test_gradient_reversal_flips_and_scales_the_gradient() -> None:
    x = torch.randn(3, 4, requires_grad=True)
    y = GradientReversal(4.0)(x)
    torch.testing.assert_close(y, x)
    (y * torch.arange(12.0).view(3, 4)).sum().backward()
    torch.testing.assert_close(x.grad, -4.0 * torch.arange(12.0).view(3, 4))


def test_discrepancy_and_class_balance_values() -> None:
    a = torch.tensor([[10.0, -10.0]])
    b = torch.tensor([[-10.0, 10.0]])
    assert float(classifier_discrepancy(a, a)) == 0.0
    assert float(classifier_discrepancy(a, b)) == pytest.approx(1.0, abs=1e-6)
    uniform = torch.zeros(8, 5)
    assert float(ClassBalanceLoss()(uniform)) == pytest.approx(math.log(5), abs=1e-5)
    collapsed = torch.full((8, 5), -20.0)
    collapsed[:, 0] = 20.0
    assert float(ClassBalanceLoss()(collapsed)) > 10.0


@pytest.mark.quick
def test_mcd_loss_heads_maximise_features_minimise_discrepancy() -> None:
    torch.manual_seed(0)
    heads = [nn.Linear(6, 4), nn.Linear(6, 4)]
    f_s, y = torch.randn(5, 6), torch.randint(0, 4, (5,))
    f_t = torch.randn(7, 6, requires_grad=True)
    cfg = MCDConfig()
    assert (cfg.grl_coeff, cfg.eta, cfg.gamma, cfg.label_smoothing) == (4.0, 50.0, 0.01, 0.01)
    parts = MCDLoss(cfg)(heads, f_s, y, f_t)
    g_feat, g_head = torch.autograd.grad(parts["loss"], [f_t, heads[0].weight])
    # reference: the heads see −η·L_dis; the features see +η·GRL·L_dis (through the reversal)
    dis = classifier_discrepancy(heads[0](f_t), heads[1](f_t))
    div = ClassBalanceLoss()(heads[0](f_t)) + ClassBalanceLoss()(heads[1](f_t))
    ref_feat = torch.autograd.grad(cfg.gamma * div + cfg.eta * cfg.grl_coeff * dis, f_t)[0]
    torch.testing.assert_close(g_feat, ref_feat)
    out = [h(torch.cat([f_s, f_t])) for h in heads]
    ce = sum(nn.functional.cross_entropy(o[:5], y, label_smoothing=0.01) for o in out)
    div_h = sum(ClassBalanceLoss()(o[5:]) for o in out)
    dis = classifier_discrepancy(heads[0](f_t), heads[1](f_t))
    ref_head = torch.autograd.grad(ce + cfg.gamma * div_h - cfg.eta * dis, heads[0].weight)[0]
    torch.testing.assert_close(g_head, ref_head)
    with pytest.raises(ValueError, match="exactly two classifier heads"):
        MCDLoss()(heads[:1], f_s, y, f_t)


@pytest.mark.quick
def test_moment_matching_needs_domain_labels() -> None:
    f = torch.randn(6, 3)
    with pytest.raises(DomainLabelsRequiredError, match="needs source domain labels"):
        MomentMatchingLoss()(f, None, f)
    same = torch.randn(4, 3)
    loss = MomentMatchingLoss()(torch.cat([same, same]), torch.tensor([0] * 4 + [1] * 4), same)
    assert float(loss) == pytest.approx(0.0, abs=1e-6)
    shifted = MomentMatchingLoss()(torch.cat([same, same + 1]), torch.tensor([0] * 4 + [1] * 4), same)
    assert float(shifted) > 1.0


def test_dann_discriminator_loss_decreases_on_a_fixed_batch() -> None:
    torch.manual_seed(0)
    loss_fn = DomainAdversarialLoss(DomainDiscriminator(4, hidden=16))
    f_s, f_t = torch.randn(16, 4) + 2, torch.randn(16, 4) - 2
    opt = torch.optim.SGD(loss_fn.parameters(), lr=0.1)
    first = float(loss_fn(f_s, f_t).detach())
    for _ in range(30):
        opt.zero_grad()
        loss_fn(f_s, f_t).backward()
        opt.step()
    assert float(loss_fn(f_s, f_t).detach()) < 0.5 * first
    assert loss_fn.last_accuracy > 90.0
    with pytest.raises(ValueError, match="same D"):
        loss_fn(f_s, torch.randn(3, 5))
