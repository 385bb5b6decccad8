from __future__ import annotations

import pytest
import torch
from torch import nn

from drt.layers import (
    DynamicResidualConfig,
    DynamicResidualConv2d,
    dynamic_residual_layers,
    residual_madds_breakdown,
    set_apply_mode,
    tune_apply_mode,
)
from dyncore.complexity import MAddsConvention, count_madds


def _grads(layer: nn.Module, x: torch.Tensor, ctx: torch.Tensor | None, mode: str):
    y = layer(x, ctx, mode=mode)
    params = [p for p in layer.parameters() if p.requires_grad]
    return y, torch.autograd.grad((y * torch.linspace(-1, 1, y.numel()).view_as(y)).sum(), [x, *params])


@pytest.mark.parametrize(
    ("kind", "groups"),
    [
        pytest.param("routing", 2, marks=pytest.mark.quick),
        pytest.param("attention", 2, marks=pytest.mark.quick),
        pytest.param("combination", 2, marks=pytest.mark.quick),
        ("routing", 1),
        ("attention", 1),
        ("combination", 1),
    ],
)
def test_featurewise_equals_synthesis(kind: str, groups: int) -> None:
    torch.manual_seed(0)
    cfg = DynamicResidualConfig(kind=kind, num_bases=3, zero_init=False)
    layer = DynamicResidualConv2d(8, 6, 3, stride=2, padding=1, groups=groups, config=cfg, context_channels=5).double()
    x = torch.randn(3, 8, 9, 9, dtype=torch.double, requires_grad=True)
    ctx = torch.randn(3, 5, 4, 4, dtype=torch.double)
    y_f, g_f = _grads(layer, x, ctx, "featurewise")
    y_s, g_s = _grads(layer, x, ctx, "synthesis")
    assert y_f.shape == (3, 6, 5, 5)
    torch.testing.assert_close(y_f, y_s)
    for a, b in zip(g_f, g_s):
        torch.testing.assert_close(a, b)


@pytest.mark.quick
@pytest.mark.parametrize("kind", ["routing", "combination"])
@pytest.mark.parametrize(("stride", "size"), [(1, (9, 9)), (2, (9, 8)), (2, (8, 7))])
def test_gemm_form_equals_synthesis(kind: str, stride: int, size: tuple[int, int]) -> None:
    """W0 as the plain conv + ΔW(x) as a per-sample GEMM on the centre-tap pixels == the synthesised kernel."""
    torch.manual_seed(1)
    cfg = DynamicResidualConfig(kind=kind, num_bases=3, zero_init=False)
    layer = DynamicResidualConv2d(8, 6, 3, stride=stride, padding=1, config=cfg, context_channels=5).double()
    x = torch.randn(3, 8, *size, dtype=torch.double, requires_grad=True)
    ctx = torch.randn(3, 5, 4, 4, dtype=torch.double)
    y_g, g_g = _grads(layer, x, ctx, "gemm")
    y_s, g_s = _grads(layer, x, ctx, "synthesis")
    torch.testing.assert_close(y_g, y_s)
    for a, b in zip(g_g, g_s):
        torch.testing.assert_close(a, b)


@pytest.mark.quick
def test_zero_init_wraps_conv_exactly_and_keeps_keys() -> None:
    torch.manual_seed(0)
    conv = nn.Conv2d(6, 10, 3, padding=1, bias=True)
    layer = DynamicResidualConv2d.from_conv(conv)
    x = torch.randn(4, 6, 7, 7)
    torch.testing.assert_close(layer(x), conv(x))
    new = set(layer.state_dict()) - set(conv.state_dict())
    assert set(conv.state_dict()) <= set(layer.state_dict())
    assert new == {"bases", "coefficients.fc.weight", "coefficients.heads.routing.weight"}
    assert layer.bases is not None and layer.bases.shape == (4, 10, 6, 1, 1)


@pytest.mark.quick
def test_num_bases_below_one_is_rejected() -> None:
    for k in (0, -1):
        with pytest.raises(ValueError, match=r"num_bases \(K\) must be an integer >= 1"):
            DynamicResidualConfig(num_bases=k)
    with pytest.raises(ValueError, match=r"num_bases \(K\) must be an integer >= 1"):
        DynamicResidualConv2d(4, 4, 3, config=DynamicResidualConfig(num_bases=0))


def test_bad_configuration_errors() -> None:
    with pytest.raises(ValueError, match="kind must be one of"):
        DynamicResidualConfig(kind="dense")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="exceeds the static kernel"):
        DynamicResidualConv2d(4, 4, 1, config=DynamicResidualConfig(basis_kernel_size=3))
    with pytest.raises(ValueError, match="padding_mode"):
        DynamicResidualConv2d.from_conv(nn.Conv2d(4, 4, 3, padding=1, padding_mode="reflect"))
    with pytest.raises(TypeError, match=r"expected an nn\.Conv2d"):
        DynamicResidualConv2d.from_conv(nn.Linear(3, 3))  # type: ignore[arg-type]
    layer = DynamicResidualConv2d(4, 4, 3, padding=1)
    with pytest.raises(ValueError, match="context batch 3 does not match input batch 2"):
        layer(torch.randn(2, 4, 5, 5), torch.randn(3, 4, 5, 5))


def test_routing_coefficients_are_a_softmax_and_attention_a_shifted_sigmoid() -> None:
    cfg = DynamicResidualConfig(kind="combination", num_bases=6)
    layer = DynamicResidualConv2d(8, 5, 3, padding=1, config=cfg)
    ctx = torch.randn(4, 8, 6, 6)
    coeffs = layer.dynamic_coefficients(ctx)
    assert coeffs["routing"].shape == (4, 6) and coeffs["attention"].shape == (4, 5)
    torch.testing.assert_close(coeffs["routing"].sum(1), torch.ones(4))
    assert torch.equal(coeffs["attention"], torch.zeros(4, 5))  # zero-initialised head: Λ = 0, scale 1 exactly
    # a trained head: Λ = 2σ(z) − 1 ∈ (−1, 1), i.e. the scale 1 + Λ of W0 lies in (0, 2)
    trained = DynamicResidualConv2d(
        8, 5, 3, padding=1, config=DynamicResidualConfig(kind="combination", zero_init=False)
    )
    lam = trained.dynamic_coefficients(ctx)["attention"]
    z = trained.coefficients(ctx)["attention"]  # type: ignore[index]
    torch.testing.assert_close(lam, 2 * torch.sigmoid(z) - 1)
    assert bool(((lam > -1) & (lam < 1)).all()) and bool((lam != 0).all())
    # released branch: Linear(C → max(C // 16, 4), no bias) → ReLU → Linear(→ K, no bias)
    assert layer.coefficients.fc is not None and layer.coefficients.fc.bias is None
    assert layer.coefficients.fc.out_features == 4


def test_madds_protocol_counts_synthesis_and_featurewise() -> None:
    cfg = DynamicResidualConfig(num_bases=4)
    layer = DynamicResidualConv2d(64, 64, 3, padding=1, bias=False, config=cfg, context_channels=256)
    x, ctx = torch.randn(2, 64, 14, 14), torch.randn(2, 256, 14, 14)
    static = 64 * 64 * 9 * 14 * 14
    branch = 256 * 16 + 16 * 4
    per_sample = count_madds(layer, x, ctx).total
    per_pixel = count_madds(layer, x, ctx, convention=MAddsConvention(dynamic="per_pixel")).total
    assert per_sample == static + branch + 4 * 64 * 64
    assert per_pixel == static + branch + 4 * 64 * 64 * 14 * 14 + 4 * 64 * 14 * 14
    parts = layer.madds_breakdown((x, ctx), layer(x, ctx), MAddsConvention(elementwise=True))
    assert parts == {
        "static_conv": static,
        "coefficient_fcs": branch,
        "kernel_synthesis": 4 * 64 * 64,
        "pooling": 256 * 14 * 14,  # global average pooling of the context
    }
    model = nn.Sequential(DynamicResidualConv2d(3, 8, 3, padding=1), DynamicResidualConv2d(8, 8, 3, padding=1))
    summed = residual_madds_breakdown(model, torch.randn(1, 3, 10, 10))
    assert summed == {"static_conv": (3 + 8) * 8 * 9 * 100, "coefficient_fcs": 3 * 4 + 4 * 4 + 8 * 4 + 4 * 4,
                      "kernel_synthesis": 4 * 8 * 3 + 4 * 8 * 8}  # fmt: skip
    assert (
        summed["static_conv"] + summed["coefficient_fcs"] + summed["kernel_synthesis"]
        == count_madds(model, torch.randn(1, 3, 10, 10)).total
    )


def test_apply_mode_rule_and_explicit_choice() -> None:
    model = nn.Sequential(DynamicResidualConv2d(3, 4, 3, padding=1), DynamicResidualConv2d(4, 4, 3, padding=1))
    layer = model[0]
    assert layer.apply_mode(1) == "gemm" and layer.apply_mode(64) == "gemm"  # 1×1 bases, ungrouped: the GEMM form
    grouped = DynamicResidualConv2d(4, 4, 3, padding=1, groups=2)
    assert grouped.apply_mode(1) == "synthesis" and grouped.apply_mode(64) == "featurewise"
    assert set_apply_mode(model, "featurewise") == 2
    assert [m.apply_mode(1) for _, m in dynamic_residual_layers(model)] == ["featurewise", "featurewise"]
    best = tune_apply_mode(model, torch.randn(2, 3, 8, 8), repeats=1)
    assert best in ("synthesis", "featurewise", "gemm") and layer.config.apply == best
    set_apply_mode(grouped, "gemm")
    with pytest.raises(ValueError, match="apply='gemm' needs 1×1 bases on an ungrouped conv"):
        grouped(torch.randn(1, 4, 5, 5))
    with pytest.raises(ValueError, match="apply must be one of"):
        set_apply_mode(model, "fastest")  # type: ignore[arg-type]
