"""Operators: Micro-Factorized convolutions, channel shuffle and the Shift-Max family (Eq. 4.3, Eq. 4.4)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from micronet.layers import (
    ChannelShuffle,
    DynamicReLU,
    DynamicShiftMax,
    LiteCombination,
    MicroFactorizedDepthwise,
    MicroFactorizedPointwise,
    SEReLU,
    StaticShiftMax,
    adaptive_groups,
    shift_index,
)


@pytest.mark.quick
def test_shift_index_matches_spec_rule() -> None:
    # C=8, G=2 groups of 4: x'[c] = x[((c//4 + 1) % 2)*4 + ((c % 4) + 1) % 4]
    assert shift_index(8, 2, 1).tolist() == [5, 6, 7, 4, 1, 2, 3, 0]
    assert shift_index(8, 2, 1, "paper").tolist() == [4, 5, 6, 7, 0, 1, 2, 3]
    # a permutation for every (C, G, j)
    for c, g, j in [(32, 8, 1), (96, 24, 1), (12, 4, 2), (64, 16, 3)]:
        assert sorted(shift_index(c, g, j).tolist()) == list(range(c))


def _manual_dsm(m: DynamicShiftMax, x: torch.Tensor) -> torch.Tensor:
    """Reference: the spec's formulas written out for K=2, J=2 with explicit loops."""
    b, c = x.shape[:2]
    p = x.mean(dim=(2, 3))
    fc1, fc2 = m.coefficients.fc, m.coefficients.heads["out"]
    h = torch.clamp(fc2(torch.relu(fc1(p))) + 3, 0, 6) / 6
    coeff = (h - 0.5) * 4
    a1, b1, a2, b2 = coeff.split(c, dim=1)
    init = m.init_values
    a1, b1, a2, b2 = a1 + init[0][0], b1 + init[0][1], a2 + init[1][0], b2 + init[1][1]
    gc = c // m.groups
    idx = [((i // gc + 1) % m.groups) * gc + ((i % gc) + 1) % gc for i in range(c)]
    xs = x[:, idx]
    v = lambda t: t.view(b, c, 1, 1)  # noqa: E731
    return torch.maximum(v(a1) * x + v(b1) * xs, v(a2) * x + v(b2) * xs)


@pytest.mark.quick
def test_dynamic_shift_max_matches_reference_and_init() -> None:
    torch.manual_seed(0)
    m = DynamicShiftMax(32, groups=8, k=2, j=2, squeeze=8, init=((1.0, 0.0), (0.5, 0.5)))
    for p in m.parameters():  # non-trivial coefficients
        nn.init.normal_(p, 0, 0.5)
    x = torch.randn(3, 32, 5, 6)
    torch.testing.assert_close(m(x), _manual_dsm(m, x))
    # parameter count: C·S + S + S·2K·C + 2K·C
    assert sum(p.numel() for p in m.parameters()) == 32 * 8 + 8 + 8 * 4 * 32 + 4 * 32


def test_dynamic_shift_max_identity_at_zero_weights() -> None:
    # zero FC weights → h = 0.5 → coefficients equal init exactly; a=(1,1), b=(0,0) is the identity
    m = DynamicShiftMax(16, groups=4, squeeze=4)
    for p in m.parameters():
        nn.init.zeros_(p)
    x = torch.randn(2, 16, 3, 3)
    torch.testing.assert_close(m(x), x)
    # K=1: a linear dynamic fusion a·x + b·x' (no max); init a=1, b=0.5
    m1 = DynamicShiftMax(16, groups=4, k=1, squeeze=4, init=((1.0, 0.5),))
    for p in m1.parameters():
        nn.init.zeros_(p)
    torch.testing.assert_close(m1(x), x + 0.5 * x[:, shift_index(16, 4, 1)])


def test_general_j_k_and_special_cases() -> None:
    torch.manual_seed(1)
    x = torch.randn(2, 12, 4, 4)
    m = DynamicShiftMax(12, groups=4, k=3, j=3, squeeze=4)
    assert m(x).shape == x.shape
    assert m.coefficients.heads["out"].out_features == 3 * 3 * 12
    # static Shift-Max with init (1, 0) / (0, 1): max(x, x')
    s = StaticShiftMax(12, groups=4, k=2, j=2, init=((1.0, 0.0), (0.0, 1.0)))
    torch.testing.assert_close(s(x), torch.maximum(x, x[:, shift_index(12, 4, 1)]))
    # Dynamic ReLU (J=1) at init = ReLU; SE+ReLU (J=K=1) at init = ReLU(x)
    d = DynamicReLU(12, squeeze=4)
    se = SEReLU(12, squeeze=4)
    for p in [*d.parameters(), *se.parameters()]:
        nn.init.zeros_(p)
    torch.testing.assert_close(d(x), torch.relu(x))
    torch.testing.assert_close(se(x), torch.relu(x))
    # gradients reach every parameter
    m(x).square().sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in m.parameters())


@pytest.mark.quick
def test_micro_factorized_pointwise_connectivity() -> None:
    # C=64, R=4: G = √16 = 4, E = C²/(R·G²) = 64: every output reaches every input through exactly one path
    m = MicroFactorizedPointwise(64, reduction=4)
    assert m.groups == adaptive_groups(64, 4) == 4
    assert m.connectivity == 64
    with torch.no_grad():
        for conv in (m.compress[0], m.expand[0]):
            conv.weight.fill_(1.0)
    m.eval()
    for bn in (m.compress[1], m.expand[1]):
        bn.reset_parameters()
        bn.reset_running_stats()
    eps = m.compress[1].eps
    # the composite linear map (BN at init = x/√(1+eps)): path counts
    paths = m(torch.eye(64).view(64, 64, 1, 1)).view(64, 64) * (1 + eps)
    torch.testing.assert_close(paths, torch.ones(64, 64))
    # λ = 0.5 → G = 2: more paths per output (E = 256 / 16 × …)
    assert MicroFactorizedPointwise(64, reduction=4, lam=0.5).groups == 2


def test_micro_factorized_depthwise_and_lite() -> None:
    dw = MicroFactorizedDepthwise(8, 5, stride=2, multipliers=(2, 2))
    x = torch.randn(2, 8, 15, 14)
    y = dw(x)
    assert y.shape == (2, 32, 8, 7)
    assert dw[0][0].stride == (2, 1) and dw[1][0].stride == (1, 2)
    assert dw[0][0].kernel_size == (5, 1) and dw[1][0].kernel_size == (1, 5)
    # params: k·C·c1 + k·C·c1·c2 + BN
    assert sum(p.numel() for p in dw.parameters()) == 5 * 16 + 5 * 32 + 2 * 16 + 2 * 32
    lite = LiteCombination(8, 12, kernel_size=3, stride=2, multipliers=(2, 2), groups=4)
    assert lite(x).shape == (2, 12, 8, 7)


def test_channel_shuffle_perm2_is_evens_then_odds() -> None:
    x = torch.arange(8.0).view(1, 8, 1, 1)
    assert ChannelShuffle(4)(x).flatten().tolist() == [0, 2, 4, 6, 1, 3, 5, 7]


@pytest.mark.parametrize(
    ("build", "match"),
    [
        (lambda: DynamicShiftMax(30, groups=4), "not divisible by groups"),
        (lambda: DynamicShiftMax(16, groups=4, j=0), "unsupported J"),
        (lambda: DynamicShiftMax(16, groups=2, j=3), "unsupported J=3 with groups=2"),
        (lambda: DynamicShiftMax(16, groups=4, k=0), "unsupported K"),
        (lambda: DynamicShiftMax(16, groups=4, k=5), "unsupported K"),
        (lambda: DynamicShiftMax(16, groups=4, init=((1.0,),)), "init must be K=2 rows"),
        (lambda: MicroFactorizedPointwise(30, reduction=4), "not divisible by reduction"),
        (lambda: MicroFactorizedPointwise(16, reduction=8, groups=4), "empty groups"),
        (lambda: MicroFactorizedPointwise(48, reduction=4, groups=5), "not divisible by groups"),
        (lambda: MicroFactorizedDepthwise(8, 4), "kernel_size must be odd"),
    ],
)
def test_bad_operator_arguments(build, match: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ValueError, match=match):
        build()


def test_dsm_rejects_wrong_channels() -> None:
    with pytest.raises(ValueError, match=r"expected input \(B, 16, H, W\)"):
        DynamicShiftMax(16, groups=4)(torch.randn(1, 8, 4, 4))


def test_dsm_madds_protocol() -> None:
    from dyncore.complexity import MAddsConvention, count_madds

    m = DynamicShiftMax(16, groups=4, k=2, j=2, squeeze=8)
    x = torch.randn(2, 16, 5, 6)
    fc = 16 * 8 + 8 * 2 * 2 * 16  # C·S + S·JKC (per sample, bias adds not counted)
    assert count_madds(m, x).total == fc
    # + global pooling (C·H·W) + J·K fusions per output element (Section 4.3: O(HWC) + O(HWCJK))
    assert count_madds(m, x, convention=MAddsConvention(elementwise=True)).total == fc + 16 * 30 + 4 * 16 * 30
    assert count_madds(StaticShiftMax(16, groups=4), x).total == 0
