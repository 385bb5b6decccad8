from __future__ import annotations

import pytest
import torch
from torchvision.models import resnet50
from torchvision.models.resnet import Bottleneck

from drt.layers import DynamicResidualConfig, DynamicResidualConv2d
from drt.models import (
    DomainAdaptationNet,
    DynamicResidualBottleneck,
    convert_resnet,
    digit_cnn,
    drt_resnet50,
    drt_resnet101,
    resnet_backbone,
)
from dyncore.complexity import count_madds, count_parameters


def _extra_params(model: torch.nn.Module, k: int = 4) -> int:
    """New parameters per bottleneck: K 1×1 bases p×p + routing FCs C_in×C_in/16 and C_in/16×K."""
    total = 0
    for m in model.modules():
        if isinstance(m, Bottleneck):
            p, c_in = m.conv2.in_channels, m.conv1.in_channels
            total += k * p * p + c_in * (c_in // 16) + (c_in // 16) * k
    return total


@pytest.mark.quick
def test_static_resnet50_weights_load_and_outputs_match_at_init() -> None:
    torch.manual_seed(0)
    static = resnet50().eval()
    dynamic = drt_resnet50().eval()
    result = dynamic.load_state_dict(static.state_dict(), strict=False)
    assert result.unexpected_keys == []
    assert result.missing_keys  # only the new routing/residual parameters
    assert all(".conv2.coefficients." in k or k.endswith(".conv2.bases") for k in result.missing_keys)
    assert len(result.missing_keys) == 16 * 3  # 16 bottlenecks × (bases, fc, routing head)
    x = torch.randn(2, 3, 64, 64)
    torch.testing.assert_close(dynamic(x), static(x), rtol=1e-4, atol=1e-5)


def test_exact_parameter_counts_resnet50_and_101() -> None:
    s50 = resnet50()
    assert count_parameters(s50) == 25_557_032
    assert count_parameters(drt_resnet50()) == 25_557_032 + _extra_params(s50)
    d101 = drt_resnet101()
    blocks = [m for m in d101.modules() if isinstance(m, DynamicResidualBottleneck)]
    assert len(blocks) == 33  # the thesis: every ResNet-101 bottleneck
    assert all(isinstance(b.conv2, DynamicResidualConv2d) for b in blocks)


def test_resnet50_madds_overhead_with_kernel_synthesis() -> None:
    x = torch.randn(1, 3, 224, 224)
    static = count_madds(resnet50(), x).total
    dynamic = count_madds(drt_resnet50(), x).total
    s = resnet50()
    extra = sum(
        4 * m.conv2.in_channels**2 + m.conv1.in_channels * (m.conv1.in_channels // 16) + (m.conv1.in_channels // 16) * 4
        for m in s.modules()
        if isinstance(m, Bottleneck)
    )
    assert dynamic - static == extra  # aggregation once per image + the routing FCs; no per-pixel residual work
    assert dynamic / static < 1.002  # measured 1.0015 (the thesis states < 0.1 %)


def test_convert_resnet_reports_every_bottleneck_and_rejects_other_models() -> None:
    model = resnet50()
    report = convert_resnet(model)
    assert len(report.changes) == 16
    with pytest.raises(TypeError, match="expected a torchvision ResNet"):
        convert_resnet(torch.nn.Linear(2, 2))  # type: ignore[arg-type]
    backbone = resnet_backbone(50, dynamic=None)
    assert backbone.eval()(torch.randn(1, 3, 32, 32)).shape == (1, 2048)


@pytest.mark.quick
def test_digit_cnn_exact_parameters_and_static_twin_keys() -> None:
    static = digit_cnn()
    expected = (
        (3 * 64 * 25 + 64)
        + 128
        + (64 * 64 * 25 + 64)
        + 128
        + (64 * 128 * 25 + 128)
        + 256
        + (8192 * 3072 + 3072)
        + 6144
        + (3072 * 2048 + 2048)
        + 4096
    )
    assert count_parameters(static) == expected
    drt = digit_cnn(dynamic=DynamicResidualConfig())
    shared = set(static.state_dict())
    assert shared <= set(drt.state_dict())
    extra = {k for k in drt.state_dict() if k not in shared}
    assert extra == {
        f"conv{i}.{n}"
        for i in (1, 2, 3)
        for n in ("bases", "coefficients.fc.weight", "coefficients.heads.routing.weight")
    }
    assert drt(torch.randn(2, 3, 32, 32)).shape == (2, 2048)
    with pytest.raises(ValueError, match=r"expected images \(B, 3, H, W\)"):
        drt(torch.randn(2, 1, 32, 32))


def test_ensemble_takes_the_head_with_the_larger_max_logit() -> None:
    l1 = torch.tensor([[5.0, 0.0], [0.0, 1.0]])
    l2 = torch.tensor([[0.0, 3.0], [4.0, 0.0]])
    out = DomainAdaptationNet.ensemble([l1, l2])
    torch.testing.assert_close(out, torch.tensor([[5.0, 0.0], [4.0, 0.0]]))


def test_gradients_reach_every_trainable_parameter() -> None:
    torch.manual_seed(0)
    cfg = DynamicResidualConfig(kind="combination", zero_init=False)
    model = DomainAdaptationNet(digit_cnn(width=0.125, dynamic=cfg), 10)
    out = model.predict(torch.randn(4, 3, 32, 32))
    (out["F1"].logsumexp(1).sum() + out["F2"].logsumexp(1).sum()).backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not bool(p.grad.abs().sum() > 0)]
    assert missing == []


def _calibrated_resnet50() -> torch.nn.Module:
    """A torchvision ResNet-50 (no weights) with BN statistics calibrated on random images: well-scaled outputs."""
    from dyncore.export import calibrate_batchnorm

    torch.manual_seed(0)
    model = resnet50(weights=None)
    calibrate_batchnorm(model, [torch.randn(4, 3, 64, 64) for _ in range(3)])
    return model.eval()


#: the application form under which each kind's init output is bit-equal to the static conv: the GEMM form adds an
#: exact zero (Σ π_k·0) to W0 ∗ x, the feature-wise form multiplies W0 ∗ x by an exact 1 (2σ(0) = 1).
EXACT_MODE = {"routing": "gemm", "attention": "featurewise", "combination": "gemm"}


@pytest.mark.parametrize("kind", ["routing", "attention", "combination"])
def test_converted_calibrated_resnet50_starts_at_the_static_network(kind: str) -> None:
    """Issue 14 item 2: at init ΔW = 0 and the attention scale is 1 exactly, for all three kinds."""
    import copy

    from drt.layers import dynamic_residual_layers, set_apply_mode
    from dyncore.export import relative_error

    static = _calibrated_resnet50()
    dynamic = copy.deepcopy(static)
    convert_resnet(dynamic, DynamicResidualConfig(kind=kind))
    dynamic.eval()
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))  # not a calibration batch
    with torch.no_grad():
        ref = static(x)
        assert float(ref.abs().max()) > 0.1  # well scaled: a relative check means something
        for _, layer in dynamic_residual_layers(dynamic):
            pi = layer.dynamic_coefficients(torch.randn(2, layer.context_channels, 4, 4))
            if "attention" in pi:
                assert torch.equal(pi["attention"], torch.zeros_like(pi["attention"]))  # Λ = 0 exactly
        out = dynamic(x)  # the default form (GEMM where it applies; else per-sample synthesis)
        assert relative_error(out, ref) < 1e-5
        set_apply_mode(dynamic, "synthesis")
        assert relative_error(dynamic(x), ref) < 1e-5
        set_apply_mode(dynamic, EXACT_MODE[kind])
        assert torch.equal(dynamic(x), ref)


@pytest.mark.parametrize("kind", ["routing", "attention", "combination"])
def test_a_perturbed_residual_fails_the_static_start_check(kind: str) -> None:
    """Twin of the test above: a non-zero Φ (routing) or attention head (Λ ≠ 0) in ONE block is detected."""
    import copy

    from drt.layers import dynamic_residual_layers
    from dyncore.export import relative_error

    static = _calibrated_resnet50()
    dynamic = copy.deepcopy(static)
    convert_resnet(dynamic, DynamicResidualConfig(kind=kind))
    _, layer = next(iter(dynamic_residual_layers(dynamic)))
    with torch.no_grad():
        if kind == "attention":
            layer.coefficients.heads["attention"].weight.normal_(0.0, 0.5)
        else:
            assert layer.bases is not None
            layer.bases.normal_(0.0, 0.05)
    dynamic.eval()
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert relative_error(dynamic(x), static(x)) > 1e-3
