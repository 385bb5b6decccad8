"""L and S rules against the values of spec/dcd.md and the released models."""

from __future__ import annotations

import pytest

from dcd import rules


@pytest.mark.quick
def test_resnet18_basic_latent_matches_spec() -> None:
    assert [rules.resnet_basic_rule(c).latent for c in (64, 128, 256, 512)] == [16, 22, 32, 45]
    assert [rules.resnet_basic_rule(c).squeeze for c in (64, 128, 256, 512)] == [16, 32, 64, 128]
    assert rules.resnet_basic_rule(64).pool == 2


def test_bottleneck_and_classifier_rules() -> None:
    assert rules.resnet_bottleneck_rule(64) == rules.LatentRule(8, 4, 1)
    assert rules.resnet_bottleneck_rule(1024) == rules.LatentRule(32, 64, 1)
    assert rules.classifier_rule() == rules.LatentRule(32, 32, 1)


def test_mobilenetv2_rule() -> None:
    # Expanding 1×1 (C_in < C_out): mul 4, 2×2 pooling; L = min(16·4//8, 96//8) = 8; S = max(64, 64)//8 = 8.
    assert rules.mobilenetv2_rule(16, 96, fc_squeeze=8) == rules.LatentRule(8, 8, 2)
    # Projecting 1×1: mul 1, red 2 → min(96//2, 24//2) = 12, 144 ≤ 192 keeps red; S = max(96, 144)//16 = 9.
    assert rules.mobilenetv2_rule(96, 24, fc_squeeze=16) == rules.LatentRule(12, 9, 1)
    # The doubling loop: 960 → 160: min(480, 80) = 80, 6400 > 1920 → red 4: 40, 1600 ≤ 1920.
    assert rules.mobilenetv2_rule(960, 160, fc_squeeze=16).latent == 40
    # Never below 4 (and S never below 4).
    r = rules.mobilenetv2_rule(8, 8, fc_squeeze=8)
    assert r.latent == 4 and r.squeeze == 4


def test_paper_rules() -> None:
    assert [rules.paper_latent(c) for c in (64, 96, 256, 320)] == [8, 12, 16, 20]
    for c in (16, 64, 100, 512, 1280):
        assert rules.paper_latent(c) ** 2 <= 2 * c  # L² < C up to the floor of the halving rule
    assert rules.depthwise_latent(3) == 4 and rules.depthwise_latent(5) == 12
    lat, lk = rules.joint_fusion_latent(256, 3)  # C/L_k = 64 → 64 / 2^3 = 8
    assert (lat, lk) == (8, 4) and lat * lat * lk <= 256
    assert [rules.scale_latent(20, m) for m in (0.25, 0.5, 0.75, 1.0)] == [5, 10, 15, 20]


@pytest.mark.quick
def test_bad_latent_rejected() -> None:
    with pytest.raises(ValueError, match="latent dimension L must be a positive integer"):
        rules.check_latent(0)
    with pytest.raises(ValueError, match="latent multiplier must be positive"):
        rules.scale_latent(8, 0.0)
    with pytest.raises(ValueError, match="channels must be a positive integer"):
        rules.mobilenetv2_rule(0, 8)
