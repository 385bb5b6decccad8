"""MicroNet M0–M3 from the config tables: exact parameter counts, MAdds, timm registry, variants, bad input."""

from __future__ import annotations

import pytest
import timm
import torch

import micronet
from micronet.baselines import mobilenetv3_small
from micronet.complexity import complexity
from micronet.config import M0, M2, M3, BlockRow, get_config, with_activations, with_relu
from micronet.layers import DynamicShiftMax, StaticShiftMax
from micronet.model import MicroBlock, MicroNet

PARAMS = {"micronet_m0": 1_019_590, "micronet_m1": 1_777_587, "micronet_m2": 2_393_876, "micronet_m3": 2_622_960}
CONV_FC_MADDS = {"micronet_m0": 3.45e6, "micronet_m1": 5.31e6, "micronet_m2": 10.34e6, "micronet_m3": 18.24e6}
PAPER_MADDS = {"micronet_m0": 4e6, "micronet_m1": 6e6, "micronet_m2": 12e6, "micronet_m3": 21e6}


@pytest.mark.quick
@pytest.mark.parametrize("name", sorted(PARAMS))
def test_parameter_count_exact(name: str) -> None:
    model = timm.create_model(name)
    assert isinstance(model, MicroNet)
    assert sum(p.numel() for p in model.parameters()) == PARAMS[name]


@pytest.mark.parametrize("name", sorted(PARAMS))
def test_madds_conv_fc_and_paper_convention(name: str) -> None:
    row = complexity(micronet.micronet(name))
    assert row.params == PARAMS[name]
    assert abs(row.conv_fc - CONV_FC_MADDS[name]) / CONV_FC_MADDS[name] < 0.01
    # + DSM pooling and J·K fusions (Section 4.3): within 12 % of the claimed 4/6/12/21M (M2 is the outlier: 13.4M)
    assert row.conv_fc < row.paper < row.elementwise
    assert abs(row.paper - PAPER_MADDS[name]) / PAPER_MADDS[name] < 0.12


def test_layer_table_details() -> None:
    # DSM groups and squeeze widths follow the spec's table (G×GC, sq)
    def dsms(model: MicroNet) -> list[tuple[int, int, int, int]]:
        return [
            (m.k, m.groups, m.channels // m.groups, m.squeeze)
            for m in model.modules()
            if isinstance(m, DynamicShiftMax)
        ]

    m0 = dsms(MicroNet(M0))
    assert m0[:3] == [(1, 2, 4, 4), (2, 8, 4, 4), (1, 4, 3, 4)]
    assert m0[5:9] == [(2, 4, 16, 8), (2, 16, 4, 8), (1, 4, 8, 8), (2, 8, 16, 16)]
    assert m0[-1] == (1, 12, 32, 24)
    m3 = MicroNet(M3)
    assert dsms(m3)[3] == (2, 24, 6, 20)
    assert all(m.init_values == ((1.0, 0.0), (0.5, 0.5)) for m in m3.modules() if isinstance(m, DynamicShiftMax))
    residuals = {n: sum(b.residual for b in micronet.micronet(n).blocks) for n in PARAMS}
    assert residuals == {"micronet_m0": 0, "micronet_m1": 0, "micronet_m2": 1, "micronet_m3": 4}


@pytest.mark.quick
def test_forward_shapes_and_stride() -> None:
    torch.manual_seed(0)
    model = timm.create_model("micronet_m0", num_classes=10).eval()
    assert model(torch.randn(2, 3, 64, 64)).shape == (2, 10)
    feats = model.forward_features(torch.randn(1, 3, 224, 224))
    assert feats.shape == (1, 384, 7, 7)


@pytest.mark.parametrize(
    ("name", "params", "madds"),
    [
        ("micronet_m1_sharp", 1.2e6, 5e6),
        ("micronet_m2_sharp", 1.4e6, 11e6),
        ("micronet_m3_sharp", 1.6e6, 20e6),
    ],
)
def test_sharp_variants_in_range(name: str, params: float, madds: float) -> None:
    row = complexity(timm.create_model(name))
    base = complexity(timm.create_model(name.replace("_sharp", "")))
    assert abs(row.params - params) / params < 0.05
    assert abs(row.paper - madds) / madds < 0.15
    assert row.paper < base.paper and row.params < base.params


def test_activation_selection_table_4_5() -> None:
    relu = MicroNet(with_relu(M2))
    assert not any(isinstance(m, DynamicShiftMax) for m in relu.modules())
    static = MicroNet(with_activations(M2, a1="static", a2="static", a3="static"))
    assert sum(isinstance(m, StaticShiftMax) for m in static.modules()) == 21  # every DSM of M2
    only_a2 = with_activations(with_relu(M2), a2="dsm", only_shift_positions=False)
    assert only_a2.blocks[4].act2.kind == "dsm" and only_a2.blocks[4].act1.kind == "relu6"
    p_relu, p_dsm = (sum(p.numel() for p in m.parameters()) for m in (relu, MicroNet(M2)))
    assert p_relu < p_dsm
    for cfg in (with_activations(M2, a1="dyrelu", a2="se_relu", a3="none"), only_a2):
        assert MicroNet(cfg, num_classes=5).eval()(torch.randn(1, 3, 32, 32)).shape == (1, 5)


def test_mobilenetv3_baselines() -> None:
    # timm's generator at ×0.35 / ×0.5 reproduces the published counts (1.36M/16.0M, 1.59M/24.2M)
    r35, r50 = complexity(mobilenetv3_small(0.35)), complexity(mobilenetv3_small(0.5))
    assert abs(r35.conv_fc - 16.0e6) / 16.0e6 < 0.01 and abs(r50.conv_fc - 24.2e6) / 24.2e6 < 0.01
    assert r50.params == 1_593_224
    r15, r20 = complexity(mobilenetv3_small(0.15)), complexity(mobilenetv3_small(0.2))
    assert r15.conv_fc < r20.conv_fc < r35.conv_fc


@pytest.mark.quick
def test_bad_input_and_configs() -> None:
    model = micronet.micronet("micronet_m0", num_classes=3)
    with pytest.raises(ValueError, match="smaller than the network's total stride 32"):
        model(torch.randn(1, 3, 16, 64))
    with pytest.raises(ValueError, match=r"expected input \(B, 3, H, W\)"):
        model(torch.randn(1, 1, 64, 64))
    with pytest.raises(ValueError, match="unknown MicroNet config"):
        get_config("micronet_m9")
    with pytest.raises(ValueError, match="not divisible by groups=5"):
        MicroBlock(BlockRow("C", 16, 32, 3, 1, 64, g1=5, g2=4, g3=4, g4=4))
    with pytest.raises(ValueError, match="no pretrained weights"):
        timm.create_model("micronet_m0", pretrained=True)


def test_mobilenet_to_micronet_path_table_4_2() -> None:
    from micronet.config import mobilenet_to_micronet_path

    rows = {k: complexity(MicroNet(c)) for k, c in mobilenet_to_micronet_path().items()}
    assert list(rows) == ["mobile", "+dw", "+pw", "+lite", "+static_shift_max", "+dynamic_shift_max"]
    # group-adaptive pointwise convs cut the dense model's MAdds by >3×; lite combination cuts them further
    assert rows["+pw"].conv_fc * 3 < rows["+dw"].conv_fc
    assert rows["+lite"].conv_fc < rows["+pw"].conv_fc
    # thesis row 4 (ReLU, lite): 1.8M / 10.5M; static Shift-Max adds only per-channel coefficients and fusion work
    assert abs(rows["+lite"].params - 1.8e6) / 1.8e6 < 0.05 and abs(rows["+lite"].conv_fc - 10.5e6) / 10.5e6 < 0.1
    assert rows["+static_shift_max"].conv_fc == rows["+lite"].conv_fc < rows["+static_shift_max"].paper
    assert rows["+dynamic_shift_max"].params == 2_393_876
    mobile = MicroNet(mobilenet_to_micronet_path()["mobile"])
    assert any(isinstance(m, torch.nn.Conv2d) and m.kernel_size == (3, 3) for m in mobile.modules())
