"""The explicit inference form (micronet.reparameterize / dyncore.nn.reparameterize_model) and no hidden fast path.

Every equivalence check: a model with calibrated BatchNorm statistics and non-trivial Dynamic Shift-Max coefficients
(conftest.make_well_scaled), relative to the output scale, on an input other than the one used to calibrate, each
with a twin showing that a perturbed model fails it.
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import pytest
import timm
import torch
from torch import nn

import micronet
from dyncore.export import assert_relative_close, relative_error
from dyncore.nn import channel_shuffle, reparameterize_model
from micronet.config import M0, M3
from micronet.deploy import ComposedFactorizedConv, FusedShiftMax, Permute, fold_bn, reparameterize, to_inference
from micronet.layers import ChannelShuffle, ConvBN, DynamicShiftMax, MicroFactorizedDepthwise
from micronet.model import MicroNet

RTOL = 1e-5  # one layer, float32, relative to max |output|
RTOL_64 = 1e-10  # a whole model in float64: the conversion itself is exact up to rounding
WellScaled = Callable[..., nn.Module]


def _x(*shape: int, seed: int = 1) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


@pytest.mark.quick
def test_fused_shift_max_with_permutation(well_scaled: WellScaled) -> None:
    dsm = DynamicShiftMax(32, groups=8, squeeze=8, init=((1.0, 0.0), (0.5, 0.5)))
    well_scaled(nn.Sequential(dsm), 5)
    x = _x(2, 32, 5, 5)
    coeff = dsm.coefficient_values(x)
    assert float(coeff.detach().std()) > 0.05  # non-trivial: not the init constants (N(0, 0.01) FCs: ≈1e-3)
    perm = torch.arange(32).view(16, 2).t().reshape(-1)
    with torch.no_grad():
        reference = ChannelShuffle(16)(dsm(x))
        fused = FusedShiftMax(dsm, perm)
        assert_relative_close(fused(x), reference, RTOL)
        assert_relative_close(dsm.reparameterize()(x), dsm(x), RTOL)
        fused.fc2.bias.add_(0.05)  # twin: a perturbed fused layer fails the same check
        assert relative_error(fused(x), reference) > RTOL


@pytest.mark.quick
@pytest.mark.parametrize(
    "kernel, stride, multipliers", [(3, 2, (2, 2)), (5, 1, (1, 1)), (5, 2, (1, 2)), (3, 1, (2, 1))]
)
def test_composed_factorized_depthwise_is_exact(
    kernel: int, stride: int, multipliers: tuple[int, int], well_scaled: WellScaled
) -> None:
    """k×1 (+BN) then 1×k depthwise (+BN) == one k×k conv + per-column bias map, borders included (odd widths)."""
    block = well_scaled(MicroFactorizedDepthwise(6, kernel, stride=stride, multipliers=multipliers), 9)
    composed = block.reparameterize()
    assert isinstance(composed, ComposedFactorizedConv)
    assert composed.weight.shape == (6 * multipliers[0] * multipliers[1], 1, kernel, kernel)
    with torch.no_grad():
        for h, w in [(9, 11), (8, 8), (5, 3)]:
            x = _x(2, 6, h, w)
            assert_relative_close(composed(x), block(x), RTOL)
        for pair in block:  # a dilated backbone (segmentation encoders at output stride 16) composes too
            conv = pair[0]
            conv.dilation = tuple(2 if k > 1 else 1 for k in conv.kernel_size)
            conv.padding = tuple(2 * (k // 2) for k in conv.kernel_size)
        dilated = ComposedFactorizedConv(*(fold_bn(cb[0], cb[1]) for cb in block))
        x = _x(2, 6, 9, 11)
        assert_relative_close(dilated(x), block(x), RTOL)
        bias = composed.bias_map(11)[0, :, 0]  # the border columns differ from the interior (b1 is not padded)
        assert not torch.allclose(bias[:, 0], bias[:, 5])
        composed.b1.add_(0.1)  # twin
        composed._bias_maps.clear()
        assert relative_error(composed(_x(2, 6, 9, 11)), block(_x(2, 6, 9, 11))) > RTOL
    with pytest.raises(ValueError, match="followed by a"):
        ComposedFactorizedConv(composed, composed)  # type: ignore[arg-type]


def float32_bound(model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, float]:
    """(the float64 reference output, the tolerance for a float32 form of ``model``): 10× the model's own float32
    error |model32(x) − model64(x)| / max|model64(x)|, at least 1e-5 (a deep model with calibrated BatchNorms over
    small variances and wide Shift-Max coefficients amplifies float32 rounding; its own error shows by how much)."""
    m64 = copy.deepcopy(model).double()
    with torch.no_grad():
        ref64 = m64(x.double())
        own = relative_error(model(x), ref64)
    return ref64, max(1e-5, 10 * own)


@pytest.mark.parametrize(
    ("config", "compose"), [(M0, True), (M0, False), (M3, True)], ids=["m0-composed", "m0-two_convs", "m3-composed"]
)
def test_reparameterized_matches_eager(config, compose: bool, well_scaled: WellScaled) -> None:  # type: ignore[no-untyped-def]
    torch.manual_seed(0)
    model = well_scaled(MicroNet(config, num_classes=20))
    fast = reparameterize(model, compose_depthwise=compose)
    n_pairs = sum(isinstance(m, MicroFactorizedDepthwise) for m in model.modules()) + 1  # + the stem's 3×1, 1×3
    assert sum(isinstance(m, ComposedFactorizedConv) for m in fast.modules()) == (n_pairs if compose else 0)
    x = _x(3, 3, 64, 64, seed=7)  # not one of the calibration batches
    ref64, bound = float32_bound(model, x)
    assert float(ref64.abs().max()) > 0.1  # well scaled
    with torch.no_grad():
        assert_relative_close(fast(x), ref64, bound)
        m64 = copy.deepcopy(model).double()  # folded in float64, the conversion is exact up to rounding
        assert_relative_close(reparameterize(m64, compose_depthwise=compose)(x.double()), ref64, RTOL_64)
    # folded: no BatchNorm left; every DSM fused; shuffles composed (fewer permutation modules than shuffles)
    assert not any(isinstance(m, (nn.BatchNorm2d, nn.BatchNorm1d)) for m in fast.modules())
    n_dsm = sum(isinstance(m, DynamicShiftMax) for m in model.modules())
    assert sum(isinstance(m, FusedShiftMax) for m in fast.modules()) == n_dsm
    n_shuffles = sum(isinstance(m, ChannelShuffle) for m in model.modules())
    assert sum(isinstance(m, Permute) for m in fast.modules()) < n_shuffles
    # the twin: one BatchNorm's statistics changed before the conversion → the converted model fails the check
    bn = next(m for m in model.modules() if isinstance(m, nn.BatchNorm2d))
    with torch.no_grad():
        bn.running_var.mul_(4.0)
        assert relative_error(reparameterize(model, compose_depthwise=compose)(x), ref64) > bound


def test_dyncore_reparameterize_model_is_the_same_conversion(well_scaled: WellScaled) -> None:
    torch.manual_seed(0)
    model = well_scaled(timm.create_model("micronet_m0", num_classes=10))
    a, b, c = micronet.reparameterize(model), reparameterize_model(model), to_inference(model)
    assert [type(m) for m in a.modules()] == [type(m) for m in b.modules()] == [type(m) for m in c.modules()]
    x = _x(2, 3, 64, 64, seed=3)
    with torch.no_grad():
        assert torch.equal(a(x), b(x)) and torch.equal(a(x), c(x))
        _, bound = float32_bound(model, x)
        pre = model.forward_head(model.forward_features(x), pre_logits=True)
        assert_relative_close(a.forward_head(a.forward_features(x), pre_logits=True), pre, bound)
    assert model.training is False and any(isinstance(m, nn.BatchNorm2d) for m in model.modules())  # untouched


def test_eval_runs_the_defining_modules_whatever_the_grad_mode(well_scaled: WellScaled) -> None:
    """No hidden fast path: in eval under no_grad every BatchNorm runs, and a `.data` edit takes effect at once."""
    model = well_scaled(MicroNet(M0, num_classes=10))
    x = _x(2, 3, 64, 64)
    calls: list[str] = []
    hooks = [
        m.register_forward_hook(lambda *_: calls.append("bn")) for m in model.modules() if isinstance(m, nn.BatchNorm2d)
    ]
    n_bn = len(hooks)
    with torch.no_grad():
        before = model(x)
    assert len(calls) == n_bn
    reference = model(x).detach()  # autograd on: the same modules, the same numbers
    torch.testing.assert_close(before, reference, rtol=0, atol=0)
    bn = next(m for m in model.modules() if isinstance(m, nn.BatchNorm2d))
    bn.running_var.data.mul_(4)
    with torch.no_grad():
        assert relative_error(model(x), reference) > 1e-3
    for h in hooks:
        h.remove()
    assert not any(isinstance(m, (nn.BatchNorm2d,)) for m in reparameterize(model).modules())
    assert all(type(m) is not ConvBN for m in reparameterize(model).modules())


def test_channel_shuffle_index_composition() -> None:
    from micronet.deploy import shuffle_index

    x = torch.randn(1, 24, 2, 2)
    idx = shuffle_index(24, 4)[shuffle_index(24, 12)]
    torch.testing.assert_close(x[:, idx], channel_shuffle(channel_shuffle(x, 4), 12))


@pytest.mark.quick
def test_reparameterize_rejects_other_models() -> None:
    with pytest.raises(TypeError, match="expected a MicroNet"):
        reparameterize(nn.Conv2d(3, 3, 1))
