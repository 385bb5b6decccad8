"""dyncore.nn: coefficient branch and the two application forms of a dynamic kernel."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from dyncore.nn import (
    CoefficientBranch,
    center_tap,
    channel_shuffle,
    conv2d_per_sample,
    expert_mixture_conv2d,
    expert_mixture_madds,
    fastest_mode,
    h_sigmoid,
    hsig2,
    low_rank_conv2d,
    low_rank_kernel,
    low_rank_madds,
    make_divisible,
    mix_experts,
    pointwise_per_sample,
)


def _grads(fn, *tensors):
    for t in tensors:
        t.grad = None
    fn().square().sum().backward()
    return [t.grad.clone() for t in tensors]


@pytest.mark.quick
def test_elementwise_maps():
    t = torch.tensor([-4.0, -3.0, 0.0, 3.0, 5.0])
    assert torch.allclose(h_sigmoid(t), torch.tensor([0.0, 0.0, 0.5, 1.0, 1.0]))
    assert torch.allclose(hsig2(t), torch.tensor([0.0, 0.0, 1.0, 2.0, 2.0]))


def test_make_divisible_matches_torchvision_widths():
    # MobileNetV2 ×0.35 and ×0.5 channel widths (torchvision's rule).
    assert [make_divisible(c * 0.35) for c in (32, 16, 24, 64, 96, 160, 320)] == [16, 8, 8, 24, 32, 56, 112]
    assert [make_divisible(c * 0.5) for c in (32, 16, 24, 32, 64, 96, 160, 320)] == [16, 8, 16, 16, 32, 48, 80, 160]
    assert make_divisible(10, 4) == 12 and make_divisible(3, 4) == 4
    with pytest.raises(ValueError, match="divisor"):
        make_divisible(8, 0)


def test_channel_shuffle_is_transpose_permutation():
    x = torch.arange(6.0).view(1, 6, 1, 1)
    assert channel_shuffle(x, 2).flatten().tolist() == [0.0, 3.0, 1.0, 4.0, 2.0, 5.0]
    assert torch.equal(channel_shuffle(channel_shuffle(x, 2), 3), x)
    with pytest.raises(ValueError, match="6 channels cannot be split into 4 groups"):
        channel_shuffle(x, 4)


@pytest.mark.quick
def test_coefficient_branch_heads_and_maps():
    torch.manual_seed(0)
    x = torch.randn(5, 8, 7, 7)
    branch = CoefficientBranch(
        8, {"phi": 9, "lam": 6}, hidden=4, pool=2, hidden_activation="gate", output={"phi": "raw", "lam": "hsig2"}
    )
    out = branch(x)
    assert out["phi"].shape == (5, 9) and out["lam"].shape == (5, 6)
    assert out["lam"].min() >= 0.0 and out["lam"].max() <= 2.0
    # Pooling 2×2 feeds 4·C features to the first FC.
    assert branch.fc is not None and branch.fc.in_features == 32
    route = CoefficientBranch(8, 4, hidden=2, output="softmax", temperature=30.0)
    pi = route(x)
    assert torch.allclose(pi.sum(1), torch.ones(5))
    flat_before = pi.std().item()
    route.temperature = 1.0
    assert route(x).std().item() >= flat_before  # a high temperature flattens the distribution
    single_fc = CoefficientBranch(8, 3, hidden=None, output="sigmoid", bias=True)
    assert torch.allclose(single_fc(x), torch.sigmoid(single_fc.heads["out"](x.mean((2, 3)))))
    # A pooled (B, C) input is accepted.
    assert torch.allclose(single_fc(x.mean((2, 3))), single_fc(x))


@pytest.mark.parametrize("h", [1, 2, 3, 7, 14])
@pytest.mark.parametrize("w", [1, 4, 5, 9])
def test_pool_2x2_equals_adaptive_pooling(h, w):
    x = torch.randn(2, 3, h, w)
    branch = CoefficientBranch(3, 2, hidden=None, pool=2)
    expected = F.adaptive_avg_pool2d(x, 2).flatten(1)
    assert torch.allclose(branch.pooled(x), expected, atol=1e-6)


@pytest.mark.parametrize("size", [(7, 7), (8, 8), (5, 9), (1, 1)])
def test_two_by_two_pooling_matches_adaptive_pool(size):
    x = torch.randn(2, 3, *size)
    branch = CoefficientBranch(3, 2, pool=2)
    assert torch.allclose(branch.pooled(x), F.adaptive_avg_pool2d(x, 2).flatten(1), atol=1e-6)


def test_coefficient_branch_bad_input():
    with pytest.raises(ValueError, match="unknown output map 'tanh'"):
        CoefficientBranch(8, 3, output="tanh")
    with pytest.raises(ValueError, match="hidden_activation"):
        CoefficientBranch(8, 3, hidden=4, hidden_activation="gelu")
    with pytest.raises(ValueError, match="pool must be 1"):
        CoefficientBranch(8, 3, pool=3)
    branch = CoefficientBranch(8, 3, hidden=4)
    with pytest.raises(ValueError, match="expected 8 input channels, got 5"):
        branch(torch.randn(2, 5, 4, 4))
    with pytest.raises(ValueError, match="rank 2 or 4"):
        branch(torch.randn(2, 8, 4))


@pytest.mark.quick
def test_conv2d_per_sample_equals_loop():
    torch.manual_seed(0)
    x = torch.randn(3, 6, 9, 9)
    w = torch.randn(3, 4, 3, 3, 3)
    b = torch.randn(3, 4)
    y = conv2d_per_sample(x, w, b, stride=2, padding=1, groups=2)
    ref = torch.cat([F.conv2d(x[i : i + 1], w[i], b[i], 2, 1, 1, 2) for i in range(3)])
    assert torch.allclose(y, ref, atol=1e-5)
    with pytest.raises(ValueError, match="2 kernels for a batch of 3"):
        conv2d_per_sample(x, w[:2])
    with pytest.raises(ValueError, match="input has 6"):
        conv2d_per_sample(x, w, groups=1)


def test_mix_experts_and_center_tap():
    experts = torch.randn(4, 5, 3, 1, 1)
    coeffs = torch.randn(2, 4)
    mixed = mix_experts(experts, coeffs)
    assert torch.allclose(mixed[1], sum(coeffs[1, k] * experts[k] for k in range(4)), atol=1e-6)
    tap = center_tap(mixed, 3)
    assert tap.shape[-2:] == (3, 3) and torch.equal(tap[..., 1, 1], mixed[..., 0, 0])
    assert tap[..., 0, :].abs().sum() == 0
    with pytest.raises(ValueError, match="cannot centre"):
        center_tap(torch.randn(1, 1, 2, 2), 3)


@pytest.mark.quick
@pytest.mark.parametrize("groups", [1, 2])
@pytest.mark.parametrize("expert_kernel", [1, 3])
def test_expert_mixture_forms_agree(groups, expert_kernel):
    torch.manual_seed(groups * 10 + expert_kernel)
    x = torch.randn(3, 8, 10, 10, requires_grad=True)
    experts = torch.randn(4, 6, 8 // groups, expert_kernel, expert_kernel, requires_grad=True)
    static = torch.randn(6, 8 // groups, 3, 3, requires_grad=True)
    coeffs = torch.softmax(torch.randn(3, 4), 1).requires_grad_()
    lam = torch.rand(3, 6, requires_grad=True)
    bias = torch.randn(6)
    kw = dict(static_weight=static, static_scale=lam, bias=bias, stride=2, padding=1, groups=groups)

    def run(mode):
        return lambda: expert_mixture_conv2d(x, experts, coeffs, mode=mode, **kw)

    a, b = run("featurewise")(), run("synthesis")()
    assert a.shape == (3, 6, 5, 5)
    assert torch.allclose(a, b, atol=1e-4)
    ga = _grads(run("featurewise"), x, experts, static, coeffs, lam)
    gb = _grads(run("synthesis"), x, experts, static, coeffs, lam)
    for u, v in zip(ga, gb):
        assert torch.allclose(u, v, atol=1e-3, rtol=1e-4)


def test_expert_mixture_without_static_matches_reference():
    torch.manual_seed(1)
    x = torch.randn(2, 4, 6, 6)
    experts = torch.randn(3, 5, 4, 3, 3)
    coeffs = torch.rand(2, 3)
    y = expert_mixture_conv2d(x, experts, coeffs, padding=1, mode="featurewise")
    ref = torch.cat(
        [F.conv2d(x[i : i + 1], (coeffs[i, :, None, None, None, None] * experts).sum(0), padding=1) for i in range(2)]
    )
    assert torch.allclose(y, ref, atol=1e-4)
    with pytest.raises(ValueError, match="unknown application mode 'fast'"):
        expert_mixture_conv2d(x, experts, coeffs, mode="fast")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"coeffs must be \(B=2, K=3\)"):
        expert_mixture_conv2d(x, experts, coeffs[:, :2])


@pytest.mark.quick
@pytest.mark.parametrize("static_kernel", [None, 1, 3])
def test_low_rank_forms_agree(static_kernel):
    torch.manual_seed(3)
    x = torch.randn(4, 12, 9, 9, requires_grad=True)
    p = torch.randn(10, 3, requires_grad=True)
    q = torch.randn(3, 12, requires_grad=True)
    phi = torch.randn(4, 3, 3, requires_grad=True)
    kw: dict = dict(stride=2)
    params = [x, p, q, phi]
    if static_kernel is not None:
        w0 = torch.randn(10, 12, static_kernel, static_kernel, requires_grad=True)
        lam = torch.rand(4, 10, requires_grad=True)
        kw.update(static_weight=w0, static_scale=lam, padding=static_kernel // 2)
        params += [w0, lam]

    def run(mode):
        return lambda: low_rank_conv2d(x, p, phi, q, mode=mode, **kw)

    a, b = run("featurewise")(), run("synthesis")()
    assert a.shape == (4, 10, 5, 5)
    assert torch.allclose(a, b, atol=1e-4)
    for u, v in zip(_grads(run("featurewise"), *params), _grads(run("synthesis"), *params)):
        assert torch.allclose(u, v, atol=1e-3, rtol=1e-4)
    # The synthesised kernel is literally P Φ(x) Qᵀ.
    assert torch.allclose(low_rank_kernel(p, phi, q)[2], p @ phi[2] @ q, atol=1e-5)


def test_low_rank_bad_shapes():
    with pytest.raises(ValueError, match="do not chain"):
        low_rank_kernel(torch.randn(4, 3), torch.randn(2, 2, 2), torch.randn(2, 5))
    with pytest.raises(ValueError, match="expects 5 input channels, input has 6"):
        low_rank_conv2d(torch.randn(1, 6, 4, 4), torch.randn(4, 2), torch.randn(1, 2, 2), torch.randn(2, 5))
    with pytest.raises(ValueError, match="static_scale"):
        low_rank_conv2d(
            torch.randn(1, 5, 4, 4),
            torch.randn(4, 2),
            torch.randn(1, 2, 2),
            torch.randn(2, 5),
            static_scale=torch.ones(1, 4),
        )


def test_madds_estimates_prefer_synthesis_for_large_maps():
    # Per sample the dynamic part costs K× the conv feature-wise but ≈ 1× with synthesis (+ kernel mixing).
    fw = expert_mixture_madds(experts=4, out_channels=64, in_per_group=64, kernel=3, out_hw=28, mode="featurewise")
    syn = expert_mixture_madds(experts=4, out_channels=64, in_per_group=64, kernel=3, out_hw=28, mode="synthesis")
    assert fw == 4 * 64 * 64 * 9 * 28 * 28 + 4 * 64 * 28 * 28
    assert syn == 4 * 64 * 64 * 9 + 64 * 64 * 9 * 28 * 28
    assert syn < fw / 3
    lr_fw = low_rank_madds(out_channels=64, in_channels=64, rank=8, out_hw=1, mode="featurewise")
    lr_syn = low_rank_madds(out_channels=64, in_channels=64, rank=8, out_hw=1, mode="synthesis")
    assert lr_fw < lr_syn  # at 1×1 resolution building the kernel costs more than applying the factors


def test_fastest_mode_picks_the_cheaper_run():
    calls = {"featurewise": 0, "synthesis": 0}

    def run(mode):
        calls[mode] += 1
        # synthesis is made artificially slow
        return sum(range(20000 if mode == "synthesis" else 10))

    assert fastest_mode(run, repeats=3) == "featurewise"
    assert calls == {"featurewise": 4, "synthesis": 4}
    with pytest.raises(ValueError, match="no modes"):
        fastest_mode(run, modes=())


@pytest.mark.parametrize("stride", [1, 2])
def test_pointwise_per_sample_equals_grouped_conv(stride: int) -> None:
    torch.manual_seed(0)
    x = torch.randn(3, 5, 7, 6, requires_grad=True)
    w = torch.randn(3, 4, 5, requires_grad=True)
    b = torch.randn(3, 4)
    y = pointwise_per_sample(x, w, b, stride=stride)
    ref = conv2d_per_sample(x, w[..., None, None], b, stride=stride)
    torch.testing.assert_close(y, ref)
    gx, gw = torch.autograd.grad(y.sin().sum(), [x, w])
    rx, rw = torch.autograd.grad(ref.sin().sum(), [x, w])
    torch.testing.assert_close(gx, rx)
    torch.testing.assert_close(gw, rw)
    torch.testing.assert_close(
        pointwise_per_sample(x, w, b[0]), conv2d_per_sample(x, w[..., None, None], b[0].expand(3, -1))
    )
    with pytest.raises(ValueError, match="do not fit an input"):
        pointwise_per_sample(x, w[:2])


@pytest.mark.quick
@pytest.mark.parametrize("bad", [0.0, -1.0, float("nan"), float("inf")])
def test_temperature_is_validated_at_construction_and_on_assignment(bad: float) -> None:
    from dyncore.nn import CoefficientBranch

    with pytest.raises(ValueError, match="temperature must be a positive finite number"):
        CoefficientBranch(4, 3, output="softmax", temperature=bad)
    branch = CoefficientBranch(4, 3, output="softmax", temperature=30.0)
    branch.temperature = 2.0
    assert branch.temperature == 2.0
    with pytest.raises(ValueError, match="temperature must be a positive finite number"):
        branch.temperature = bad
    assert branch.temperature == 2.0


@pytest.mark.quick
def test_expert_mixture_conv2d_refuses_zero_experts() -> None:
    from dyncore.nn import expert_mixture_conv2d

    x = torch.randn(2, 3, 5, 5)
    with pytest.raises(ValueError, match=r"experts must be \(K ≥ 1"):
        expert_mixture_conv2d(x, torch.zeros(0, 4, 3, 3, 3), torch.zeros(2, 0))


@pytest.mark.quick
def test_shape_checks_and_channel_shuffle_trace_with_torch_fx() -> None:
    from dyncore.nn import channel_shuffle, check_channels, check_rank

    class Net(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            check_rank(x, (4,), "Net")
            check_channels(x, 6, "Net")
            return channel_shuffle(x, 3)

    traced = torch.fx.symbolic_trace(Net())
    x = torch.arange(2 * 6 * 2 * 2, dtype=torch.float32).reshape(2, 6, 2, 2)
    expected = x.reshape(2, 3, 2, 2, 2).transpose(1, 2).reshape(2, 6, 2, 2)
    assert torch.equal(traced(x), expected) and torch.equal(Net()(x), expected)
    with pytest.raises(ValueError, match="cannot be split into 4 groups"):
        channel_shuffle(x, 4)
