"""Inference form (BN folded, permutations composed, DSM fused) and ONNX export."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from dyncore.nn import channel_shuffle, folded_forward
from micronet.config import M0, M3
from micronet.deploy import (
    ComposedFactorizedConv,
    FusedShiftMax,
    Permute,
    export_onnx,
    fold_bn,
    onnx_max_abs_diff,
    to_inference,
)
from micronet.layers import ChannelShuffle, DynamicShiftMax, MicroFactorizedDepthwise
from micronet.model import MicroNet


def _randomise(model: nn.Module) -> nn.Module:
    """Non-trivial BN statistics and DSM coefficients so that the equivalence test means something."""
    g = torch.Generator().manual_seed(0)
    for m in model.modules():
        if isinstance(m, (nn.BatchNorm2d, nn.BatchNorm1d)):
            m.running_mean.uniform_(-0.2, 0.2, generator=g)
            m.running_var.uniform_(0.5, 1.5, generator=g)
            m.weight.data.uniform_(0.5, 1.5, generator=g)
            m.bias.data.uniform_(-0.2, 0.2, generator=g)
        elif isinstance(m, nn.Linear):
            m.weight.data.normal_(0, 0.2, generator=g)
            m.bias.data.normal_(0, 0.2, generator=g)
    return model.eval()


@pytest.mark.quick
def test_fused_shift_max_with_permutation() -> None:
    torch.manual_seed(0)
    dsm = _randomise(DynamicShiftMax(32, groups=8, squeeze=8, init=((1.0, 0.0), (0.5, 0.5))))
    x = torch.randn(2, 32, 5, 5)
    perm = ChannelShuffle(16)
    fused = FusedShiftMax(dsm, torch.arange(32).view(16, 2).t().reshape(-1))
    torch.testing.assert_close(fused(x), perm(dsm(x)))
    torch.testing.assert_close(FusedShiftMax(dsm, None)(x), dsm(x))


@pytest.mark.quick
@pytest.mark.parametrize(
    "kernel, stride, multipliers", [(3, 2, (2, 2)), (5, 1, (1, 1)), (5, 2, (1, 2)), (3, 1, (2, 1))]
)
def test_composed_factorized_depthwise_is_exact(kernel: int, stride: int, multipliers: tuple[int, int]) -> None:
    """k×1 (+BN) then 1×k depthwise (+BN) == one k×k conv + per-column bias map, borders included (odd widths)."""
    block = _randomise(MicroFactorizedDepthwise(6, kernel, stride=stride, multipliers=multipliers))
    first, second = (fold_bn(cb[0], cb[1]) for cb in block)
    composed = ComposedFactorizedConv(first, second)
    assert composed.weight.shape == (6 * multipliers[0] * multipliers[1], 1, kernel, kernel)
    for h, w in [(9, 11), (8, 8), (5, 3)]:
        x = torch.randn(2, 6, h, w)
        with torch.no_grad(), folded_forward(False):  # the block's defining two-conv forward
            torch.testing.assert_close(composed(x), block(x), rtol=1e-5, atol=1e-5)
    for pair in block:  # a dilated backbone (segmentation encoders at output stride 16) composes too
        conv = pair[0]
        conv.dilation = tuple(2 if k > 1 else 1 for k in conv.kernel_size)
        conv.padding = tuple(2 * (k // 2) for k in conv.kernel_size)
    dilated = ComposedFactorizedConv(*(fold_bn(cb[0], cb[1]) for cb in block))
    x = torch.randn(2, 6, 9, 11)
    with torch.no_grad(), folded_forward(False):
        torch.testing.assert_close(dilated(x), block(x), rtol=1e-5, atol=1e-5)
    bias = composed.bias_map(11)[0, :, 0]  # the border columns differ from the interior (b1 is not padded)
    assert not torch.allclose(bias[:, 0], bias[:, 5])
    with pytest.raises(ValueError, match="followed by a"):
        ComposedFactorizedConv(second, first)


@pytest.mark.parametrize("config", [M0, M3], ids=["m0", "m3"])
@pytest.mark.parametrize("compose", [True, False], ids=["composed", "two_convs"])
def test_inference_form_matches_training_form(config, compose: bool) -> None:  # type: ignore[no-untyped-def]
    model = _randomise(MicroNet(config, num_classes=20))
    fast = to_inference(model, compose_depthwise=compose)
    n_pairs = sum(isinstance(m, MicroFactorizedDepthwise) for m in model.modules()) + 1  # + the stem's 3×1, 1×3
    assert sum(isinstance(m, ComposedFactorizedConv) for m in fast.modules()) == (n_pairs if compose else 0)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad(), folded_forward(False):  # the training form's defining forward
        torch.testing.assert_close(fast(x), model(x), rtol=1e-4, atol=1e-5)
    # folded: no BatchNorm left; every DSM fused; shuffles composed (at most one Permute per block run)
    assert not any(isinstance(m, (nn.BatchNorm2d, nn.BatchNorm1d)) for m in fast.modules())
    n_dsm = sum(isinstance(m, DynamicShiftMax) for m in model.modules())
    assert sum(isinstance(m, FusedShiftMax) for m in fast.modules()) == n_dsm
    n_shuffles = sum(isinstance(m, ChannelShuffle) for m in model.modules())
    assert sum(isinstance(m, Permute) for m in fast.modules()) < n_shuffles


def test_channel_shuffle_index_composition() -> None:
    from micronet.deploy import shuffle_index

    x = torch.randn(1, 24, 2, 2)
    idx = shuffle_index(24, 4)[shuffle_index(24, 12)]
    torch.testing.assert_close(x[:, idx], channel_shuffle(channel_shuffle(x, 4), 12))


def test_onnx_export_matches(tmp_path) -> None:  # type: ignore[no-untyped-def]
    pytest.importorskip("onnxruntime")
    model = _randomise(MicroNet(M0, num_classes=10))
    fast = to_inference(model)
    path = export_onnx(fast, tmp_path / "m0.onnx", image_size=64)
    diff = onnx_max_abs_diff(model, path, torch.randn(3, 3, 64, 64))  # dynamic batch, vs the training form
    assert diff < 1e-4


def test_to_inference_rejects_other_models() -> None:
    with pytest.raises(TypeError, match="expected a MicroNet"):
        to_inference(nn.Conv2d(3, 3, 1))  # type: ignore[arg-type]


@pytest.mark.quick
@pytest.mark.parametrize("config", [M0, M3], ids=["m0", "m3"])
def test_eval_without_autograd_runs_the_folded_modules(config) -> None:  # type: ignore[no-untyped-def]
    """model.eval() under no_grad: ConvBN runs BN-folded, factorized depthwise pairs composed, DSM fused — the same
    outputs as the defining forward (autograd on), rebuilt after an in-place change, off in folded_forward(False)."""
    model = _randomise(MicroNet(config, num_classes=20))
    x = torch.randn(2, 3, 64, 64)
    reference = model(x).detach()  # autograd on: the defining forward
    calls: list[str] = []
    hooks = [
        m.register_forward_hook(lambda *_: calls.append("bn")) for m in model.modules() if isinstance(m, nn.BatchNorm2d)
    ]
    with torch.no_grad():
        torch.testing.assert_close(model(x), reference, rtol=1e-4, atol=1e-5)
        assert not calls  # no BatchNorm2d ran: every ConvBN / depthwise pair used its folded form
        with folded_forward(False):
            torch.testing.assert_close(model(x), reference, rtol=1e-5, atol=1e-6)
        assert calls  # the defining forward runs the BatchNorms again
        for pair in (m for m in model.modules() if isinstance(m, MicroFactorizedDepthwise)):
            pair[0][0].weight.mul_(-2.0)  # in place: the composed convs are rebuilt
        with folded_forward(False):
            changed = model(x)
        torch.testing.assert_close(model(x), changed, rtol=1e-4, atol=1e-5)
    assert not torch.allclose(changed, reference, atol=1e-4)
    for h in hooks:
        h.remove()
