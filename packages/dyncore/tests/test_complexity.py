from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import Tensor, nn

from dyncore.complexity import (
    MAddsConvention,
    MAddsReport,
    conv2d_madds,
    count_madds,
    count_parameters,
    linear_madds,
)

X224 = torch.randn(1, 3, 224, 224)


def _timm_model(name: str) -> nn.Module:
    # timm is a dev dependency, not one of dyncore's: import it only where needed
    timm = pytest.importorskip("timm")
    return timm.create_model(name, pretrained=False)


@pytest.mark.parametrize(
    ("builder", "published", "params"),
    [
        (lambda: torchvision.models.resnet18(weights=None), 1.814e9, 11_689_512),
        (lambda: torchvision.models.mobilenet_v2(weights=None), 300.8e6, 3_504_872),
        (lambda: torchvision.models.mobilenet_v2(weights=None, width_mult=0.5), 97.1e6, 1_968_680),
        (lambda: _timm_model("mobilenetv3_small_050"), 24.2e6, 1_593_224),
    ],
    ids=["resnet18", "mobilenet_v2", "mobilenet_v2_x0.5", "mobilenetv3_small_050"],
)
def test_published_madds_within_1_percent(builder, published, params):
    model = builder()
    report = count_madds(model, X224)
    assert abs(report.total - published) / published < 0.01
    assert count_parameters(model) == params


def test_leaf_formulas_exact():
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1, bias=True),  # 8·8·8 outputs × 3·9
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1, groups=4),  # 8·8·8 × 2·9
        nn.ConvTranspose2d(8, 4, 2, stride=2),  # in 8·8·8 × 4·4
        nn.Flatten(),
        nn.Linear(4 * 16 * 16, 10),
    )
    x = torch.randn(3, 3, 8, 8)  # batch 3: counts are per ONE sample
    r = count_madds(model, x)
    expected = {"0": 512 * 27, "3": 512 * 18, "4": 512 * 4 * 4, "6": 1024 * 10}
    assert r.by_module == expected
    assert r.total == sum(expected.values())
    # element-wise: BN + ReLU one per output element (8·8·8 each)
    r_ew = count_madds(model, x, convention=MAddsConvention(elementwise=True))
    assert r_ew.total == r.total + 2 * 512
    assert r_ew.by_module["1"] == 512 and r_ew.by_module["2"] == 512


def test_linear_extra_leading_dims_and_conv1d():
    model = nn.Sequential(nn.Conv1d(4, 6, 3, padding=1), nn.Linear(5, 7))
    r = count_madds(model, torch.randn(2, 4, 5))  # (B, C, L) → conv1d (B, 6, 5) → linear on L
    assert r.by_module == {"0": 6 * 5 * 4 * 3, "1": 6 * 7 * 5}


def test_functional_ops_outside_modules_are_counted():
    class Functional(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.w = nn.Parameter(torch.randn(4, 3, 3, 3))
            self.proj = nn.Parameter(torch.randn(6, 4))

        def forward(self, x: Tensor) -> Tensor:
            y = F.conv2d(x, self.w, padding=1)  # (B, 4, 5, 5): 100 × 27
            z = y.flatten(2).transpose(1, 2) @ self.proj.t()  # (B, 25, 6): 150 × 4
            return z + 1.0  # element-wise: 150

    m = Functional()
    x = torch.randn(2, 3, 5, 5)
    assert count_madds(m, x).total == 100 * 27 + 150 * 4
    assert count_madds(m, x, convention=MAddsConvention(elementwise=True)).total == 100 * 27 + 150 * 4 + 150


def test_residual_add_counted_only_when_elementwise():
    model = torchvision.models.resnet18(weights=None)
    x = torch.randn(1, 3, 64, 64)
    plain = count_madds(model, x)
    ew = count_madds(model, x, convention=MAddsConvention(elementwise=True))
    # the `out += identity` of layer1.0 (64×16×16 elements) is charged to that block, only when element-wise
    assert "layer1.0" not in plain.by_module
    assert ew.by_module["layer1.0"] == 64 * 16 * 16
    assert ew.total > plain.total


class ToyDynamicConv(nn.Module):
    """A toy dynamic layer: K expert kernels mixed by softmax attention (per sample), then one conv."""

    def __init__(self, cin: int, cout: int, k: int, experts: int) -> None:
        super().__init__()
        self.experts = nn.Parameter(torch.randn(experts, cout, cin, k, k))
        self.attn = nn.Linear(cin, experts)
        self.conv = nn.Conv2d(cin, cout, k, padding=k // 2, bias=False)  # shape holder; never counted by hooks
        self.k = k

    def forward(self, x: Tensor) -> Tensor:
        pi = self.attn(x.mean((2, 3))).softmax(-1)  # (B, K)
        w = torch.einsum("bk,koihw->boihw", pi, self.experts)
        return torch.cat([F.conv2d(xi[None], wi, padding=self.k // 2) for xi, wi in zip(x, w)])

    def madds(self, inputs: tuple[Tensor, ...], output: Tensor, convention: MAddsConvention) -> int:
        static = conv2d_madds(self.conv, output)
        kernel = self.experts[0].numel()
        attn = self.attn.in_features * self.attn.out_features
        if convention.dynamic == "per_sample":  # aggregate the kernel once per sample
            dynamic = self.experts.shape[0] * kernel
        else:  # feature-wise: every expert applied at every pixel
            dynamic = (self.experts.shape[0] - 1) * static
        return static + dynamic + attn


@pytest.mark.quick
def test_extension_protocol_counts_by_method_and_skips_descendants():
    dyn = ToyDynamicConv(4, 8, 3, experts=4)
    model = nn.Sequential(nn.Conv2d(3, 4, 1), dyn)
    x = torch.randn(2, 3, 6, 6)
    static = 8 * 36 * 4 * 9
    per_sample = count_madds(model, x)
    assert per_sample.by_module == {"0": 4 * 36 * 3, "1": static + 4 * 8 * 4 * 9 + 16}
    assert "1.attn" not in per_sample.by_module and "1.conv" not in per_sample.by_module
    per_pixel = count_madds(model, x, convention=MAddsConvention(dynamic="per_pixel"))
    assert per_pixel.by_module["1"] == 4 * static + 16
    # same count whatever the batch size (per ONE sample)
    assert count_madds(model, x[:1]).total == per_sample.total


@pytest.mark.quick
def test_convention_validation():
    with pytest.raises(ValueError, match=r"MAddsConvention\.dynamic must be one of \('per_sample', 'per_pixel'\)"):
        MAddsConvention(dynamic="per_image")
    with pytest.raises(ValueError, match=r"MAddsConvention\.elementwise must be one of \(True, False\)"):
        MAddsConvention(elementwise="yes")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="convention must be a MAddsConvention"):
        count_madds(nn.Linear(2, 2), torch.randn(1, 2), convention="per_sample")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="batched tensor input"):
        count_madds(nn.Linear(2, 2))


def test_helpers_and_report():
    conv = nn.Conv2d(4, 6, 3, groups=2)
    y = conv(torch.randn(5, 4, 9, 9))
    assert conv2d_madds(conv, y) == 6 * 7 * 7 * 2 * 9
    lin = nn.Linear(3, 4)
    assert linear_madds(lin, lin(torch.randn(5, 7, 3))) == 7 * 4 * 3
    with pytest.raises(ValueError, match="out_features=4"):
        linear_madds(lin, torch.randn(5, 3))
    with pytest.raises(TypeError, match=r"conv must be an nn\.Conv"):
        conv2d_madds(lin, y)

    model = nn.Sequential(nn.Conv2d(3, 4, 1), nn.Flatten(), nn.Linear(16, 2))
    r = count_madds(model, torch.randn(1, 3, 2, 2))
    assert isinstance(r, MAddsReport)
    assert r.total == 48 + 32
    assert r.millions == pytest.approx(80e-6) and r.giga == pytest.approx(80e-9)
    text = str(r)
    assert "Conv2d" in text and "Linear" in text and "80" in text and "conv/linear only" in text
    # parameters: trainable only
    model[0].weight.requires_grad_(False)
    assert count_parameters(model) == 12 + 4 + 32 + 2
    assert count_parameters(model, trainable_only=True) == 4 + 32 + 2


def test_counting_restores_mode_and_does_not_touch_bn_stats():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)).train()
    before = model[1].running_mean.clone()
    count_madds(model, torch.randn(2, 3, 8, 8))
    assert model.training
    assert torch.equal(model[1].running_mean, before)


def _fvcore_by_module(model: nn.Module, x: Tensor) -> tuple[dict[str, int], dict[str, int]]:
    FlopCountAnalysis = pytest.importorskip("fvcore.nn").FlopCountAnalysis

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fa = FlopCountAnalysis(model.eval(), x)
        fa.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
        return dict(fa.by_module()), dict(fa.by_operator())


@pytest.mark.parametrize(
    "builder",
    [
        lambda: torchvision.models.resnet18(weights=None),
        lambda: torchvision.models.mobilenet_v2(weights=None, width_mult=0.5),
        lambda: _timm_model("mobilenetv3_small_050"),
        lambda: nn.Sequential(nn.Conv2d(3, 8, 3, stride=2), nn.ConvTranspose2d(8, 4, 3, stride=2), nn.Conv2d(4, 2, 1)),
    ],
    ids=["resnet18", "mobilenet_v2_x0.5", "mobilenetv3_small_050", "conv_transpose"],
)
def test_matches_fvcore_on_conv_and_linear(builder):
    """fvcore counts one MAdd as one "flop" for conv/linear/matmul, so those agree module by module.

    Differences (by design): fvcore also counts batch_norm (1–2 per element), adaptive_avg_pool2d and upsampling
    even in its default mode, and skips element-wise activations/adds entirely; we count none of these unless
    ``MAddsConvention(elementwise=True)``, and then also activations, adds and pooling.
    """
    model = builder()
    x = torch.randn(1, 3, 64, 64)
    ours = count_madds(model, x)
    fv_modules, fv_ops = _fvcore_by_module(model, x)
    fv_conv_linear = sum(v for k, v in fv_ops.items() if k in ("conv", "linear", "addmm", "matmul"))
    assert ours.total == fv_conv_linear
    for name, n in ours.by_module.items():
        assert fv_modules[name] == n, name
    extra = set(fv_ops) - {"conv", "linear", "addmm", "matmul"}
    assert extra <= {"batch_norm", "adaptive_avg_pool2d"}


def test_functional_keyword_arguments_and_addmm():
    class KW(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.w = nn.Parameter(torch.randn(5, 3))
            self.b = nn.Parameter(torch.randn(5))

        def forward(self, x: Tensor) -> Tensor:
            return F.linear(x, weight=self.w) + torch.addmm(self.b, x, self.w.t())

    assert count_madds(KW(), torch.randn(4, 3)).total == 2 * 5 * 3


@pytest.mark.parametrize("builder", ["mobilenet_v2", "resnet18"])
def test_count_madds_agrees_with_flop_counter_mode_and_forward_hooks(builder: str) -> None:

    from dyncore.complexity import flop_counter_madds, hook_madds

    kwargs = {"width_mult": 0.5} if builder == "mobilenet_v2" else {}
    model = getattr(torchvision.models, builder)(num_classes=10, **kwargs)
    x = torch.randn(2, 3, 64, 64)
    ours = count_madds(model, x).total
    assert ours == flop_counter_madds(model, x) == hook_madds(model, x)
    assert ours > 1_000_000  # a real count, not an empty one


def test_reference_counters_see_what_they_claim_to() -> None:
    from dyncore.complexity import flop_counter_madds, hook_madds

    class Functional(nn.Module):  # work done outside Conv2d/Linear modules
        def __init__(self) -> None:
            super().__init__()
            self.w = nn.Parameter(torch.randn(8, 4))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x @ self.w

    x = torch.randn(3, 8)
    assert flop_counter_madds(Functional(), x) == 8 * 4
    assert hook_madds(Functional(), x) == 0
