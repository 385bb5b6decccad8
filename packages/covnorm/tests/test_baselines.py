from __future__ import annotations

import pytest
import torch
from torch import nn

import covnorm as cn
from covnorm.baselines import geometric_rank, inject_lora, to_low_rank, to_pca_fta
from covnorm.layers import LoRAConv2d, LowRankConv1x1


def test_svd_fta_at_full_rank_equals_ra_and_truncates_by_singular_values(tiny_model, batches) -> None:
    x = batches[0]
    ref = tiny_model(x)
    ranks = to_low_rank(tiny_model, domain="digits", rank=10_000, init="svd")
    assert ranks["backbone.features.conv1_1"] == 8  # clipped to C
    torch.testing.assert_close(tiny_model(x), ref, rtol=1e-4, atol=1e-4)
    site = cn.adapter_sites(tiny_model)["backbone.features.conv2_1"]
    conv = nn.Conv2d(16, 16, 1)
    low = LowRankConv1x1.from_svd(conv, 4)
    s = torch.linalg.svdvals(conv.weight[:, :, 0, 0].double())
    err = torch.linalg.matrix_norm((low.matrix() - conv.weight[:, :, 0, 0]).double())
    torch.testing.assert_close(err, s[4:].square().sum().sqrt(), rtol=1e-4, atol=1e-5)  # Eckart–Young
    assert site.branch("letters").a.__class__ is nn.Conv2d


def test_fta_random_low_rank_parameter_count(tiny_model) -> None:
    to_low_rank(tiny_model, domain="letters", rank=3, init="random", seed=0)
    for a in cn.adapter_sites(tiny_model).values():
        layer = a.branch("letters").a
        assert isinstance(layer, LowRankConv1x1)
        assert sum(p.numel() for p in layer.parameters()) == 2 * a.channels * 3 + a.channels
    assert geometric_rank(64, 2) == 16 and geometric_rank(64, 6) == 1


def test_pca_fta_has_no_mini_adaptation(tiny_model, batches) -> None:
    stats = cn.collect_statistics(tiny_model, batches, domain="digits")
    ranks = to_pca_fta(tiny_model, stats, domain="digits", threshold=0.9)
    for name, a in cn.adapter_sites(tiny_model).items():
        layer = a.branch("digits").a
        assert isinstance(layer, LowRankConv1x1) and layer.rank == ranks[name]


@pytest.mark.quick
def test_lora_starts_at_the_frozen_conv_and_counts_r_times_kernel() -> None:
    torch.manual_seed(0)
    net = cn.small_vgg(widths=((8,), (16,)), hidden=12)
    x = torch.randn(2, 3, 32, 32)
    ref = net(x)
    ranks = inject_lora(net, where=cn.vgg16_sites, domains=["a", "b"], rank=2)
    assert len(ranks) == 4
    torch.testing.assert_close(net(x), ref)  # up-projection initialised at zero
    lora = net.features.conv2_1
    assert isinstance(lora, LoRAConv2d)
    per_domain = sum(p.numel() for p in lora.branches["a"].parameters())
    assert per_domain == 2 * (8 * 3 * 3 + 16)  # r·(C_in·k² + C_out)
    trainable = sum(p.numel() for p in net.parameters() if p.requires_grad)
    lora_params = sum(p.numel() for m in net.modules() if isinstance(m, LoRAConv2d) for p in m.branches.parameters())
    assert trainable == lora_params  # the wrapped convs stay frozen
    lora.set_domain("b")
    with pytest.raises(cn.UnknownDomainError, match="known domains"):
        lora.set_domain("c")
