"""Detection (Faster R-CNN + FPN, RetinaNet) and keypoint models with a MicroNet backbone (Sections 4.6–4.7), and
the DY-ReLU-C spatial attention of the keypoint head."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from dyncore.surgery import SurgeryError
from micronet.detection import (
    MicroNetFPNBackbone,
    MicroNetPose,
    SpatialAttention,
    SpatialAwareShiftMax,
    faster_rcnn,
    gaussian_heatmaps,
    retinanet,
    spatial_aware,
)
from micronet.layers import DynamicReLU, DynamicShiftMax
from micronet.model import MicroNet


def _batch() -> tuple[list[torch.Tensor], list[dict[str, torch.Tensor]]]:
    g = torch.Generator().manual_seed(0)
    images = [torch.rand(3, 128, 128, generator=g) for _ in range(2)]
    targets = [
        {"boxes": torch.tensor([[10.0, 20.0, 60.0, 80.0]]), "labels": torch.tensor([1])},
        {"boxes": torch.tensor([[30.0, 30.0, 100.0, 120.0], [5.0, 5.0, 40.0, 40.0]]), "labels": torch.tensor([2, 1])},
    ]
    return images, targets


def test_fpn_backbone_shapes() -> None:
    bb = MicroNetFPNBackbone("micronet_m0", out_channels=32).eval()
    feats = bb(torch.randn(1, 3, 128, 128))
    assert bb.out_channels == 32
    assert [tuple(v.shape[-2:]) for v in feats.values()] == [(16, 16), (8, 8), (4, 4), (2, 2)]
    with pytest.raises(ValueError, match="smaller than the total stride 32"):
        bb(torch.randn(1, 3, 16, 16))


@pytest.mark.parametrize("builder", [faster_rcnn, retinanet], ids=["faster_rcnn_fpn", "retinanet"])
def test_detector_training_loss_decreases(builder) -> None:  # type: ignore[no-untyped-def]
    torch.manual_seed(0)
    model = builder("micronet_m0", num_classes=3, min_size=128, max_size=128)
    images, targets = _batch()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    model.train()
    losses = []
    for _ in range(5):
        loss = sum(model(images, targets).values())
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < losses[0]
    model.eval()
    with torch.no_grad():
        out = model(images)
    assert set(out[0]) >= {"boxes", "scores", "labels"}


def _spatial(module: nn.Module) -> list[SpatialAwareShiftMax]:
    return [m for m in module.modules() if isinstance(m, SpatialAwareShiftMax)]


@pytest.mark.quick
def test_spatial_attention_formula_range_and_clipping() -> None:
    g = torch.Generator().manual_seed(0)
    att = SpatialAttention(4, tau=3.0)
    x = torch.randn(2, 4, 5, 6, generator=g)
    # zero-initialised conv: uniform attention 1/τ everywhere
    torch.testing.assert_close(att(x), torch.full((2, 1, 5, 6), 1 / 3))
    with torch.no_grad():
        att.conv.weight.copy_(torch.randn(1, 4, 1, 1, generator=g) * 3)
    z = (x * att.conv.weight.view(1, 4, 1, 1)).sum(1).flatten(1)  # the 1×1 conv by hand, (B, H·W)
    unclipped = torch.softmax(z, dim=1) * (30 / 3)
    pi = att(x)
    assert pi.shape == (2, 1, 5, 6)
    torch.testing.assert_close(pi.flatten(1), unclipped.clamp(max=1.0))
    assert float(pi.detach().min()) >= 0.0 and float(pi.detach().max()) <= 1.0
    torch.testing.assert_close(unclipped.sum(1), torch.full((2,), 10.0))  # H·W/τ before the clip
    # one dominant position: its unclipped value is ≈ H·W/τ = 10, clipped to exactly 1; the rest stay below 1
    peak = torch.zeros(1, 4, 5, 6)
    peak[0, :, 2, 3] = 10.0
    with torch.no_grad():
        att.conv.weight.fill_(1.0)
    pi = att(peak)
    assert float(pi[0, 0, 2, 3].detach()) == 1.0
    assert float(pi.detach().flatten().sort().values[-2]) < 1e-6
    (grad,) = torch.autograd.grad(pi[0, 0, 2, 3], att.conv.weight)  # a clipped position passes no gradient
    assert torch.equal(grad, torch.zeros_like(grad))
    assert int((att(x) == 1.0).sum()) <= 2 * 10  # at most H·W/τ saturated positions per sample
    # τ < 1: even the uniform map exceeds 1 and is clipped to all ones
    assert torch.equal(SpatialAttention(4, tau=0.5)(x), torch.ones(2, 1, 5, 6))


@pytest.mark.parametrize(
    "make",
    [lambda: DynamicShiftMax(8, groups=4, k=2, j=2, squeeze=4), lambda: DynamicReLU(8, squeeze=4)],
    ids=["dsm_k2_j2", "dyrelu_j1"],
)
def test_spatial_aware_shift_max_scales_coefficients(make) -> None:  # type: ignore[no-untyped-def]
    torch.manual_seed(0)
    act = make()
    for p in act.coefficients.parameters():  # non-trivial channel-wise coefficients
        nn.init.normal_(p, 0.0, 0.5)
    layer = SpatialAwareShiftMax(act, tau=3.0)
    nn.init.normal_(layer.attention.conv.weight, 0.0, 1.0)
    x = torch.randn(2, 8, 6, 5, requires_grad=True)
    y = layer(x)
    assert y.shape == x.shape
    # DY-ReLU-C: every coefficient a^k_{i,j}(x) multiplied by π_{h,w}(x), Eq. 4.4 applied per pixel
    pi = layer.attention(x)  # (B, 1, H, W)
    coeffs = act.coefficient_values(x) * pi.view(2, 1, 1, 1, 6, 5)  # (B, K, J, C, H, W)
    torch.testing.assert_close(y, act.fuse(x, coeffs))
    assert not torch.allclose(y, act(x))  # the spatial map changes the output
    y.square().sum().backward()
    grad = layer.attention.conv.weight.grad
    assert grad is not None and float(grad.abs().sum()) > 0


@pytest.mark.quick
def test_pose_model_shapes_and_training() -> None:
    torch.manual_seed(0)
    model = MicroNetPose("micronet_m0", head_channels=32, head_hidden=64)
    # spatial attention on every dynamic activation of the three head blocks (A1/A2/A3), none in the backbone
    assert len(_spatial(model.head8)) == 3 and len(_spatial(model.head4)) == 6
    assert _spatial(model.stem) == [] and _spatial(model.blocks) == []
    assert all(float(m.attention.conv.weight.detach().abs().sum()) == 0.0 for m in _spatial(model))  # uniform start
    x = torch.randn(2, 3, 64, 48)
    heat = model(x)
    assert heat.shape == (2, 17, 16, 12)  # stride 4
    target = gaussian_heatmaps(torch.rand(2, 17, 2) * torch.tensor([12.0, 16.0]), (16, 12))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    losses = []
    for _ in range(5):
        loss = F.mse_loss(model(x), target)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < losses[0]
    # the attention convs left their zero start: the spatial maps train
    assert all(float(m.attention.conv.weight.detach().abs().sum()) > 0.0 for m in _spatial(model))


def test_pose_model_thesis_resolution_and_ablation() -> None:
    torch.manual_seed(0)
    model = MicroNetPose("micronet_m0", head_channels=32, head_hidden=64).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 256, 192)).shape == (1, 17, 64, 48)
    plain = MicroNetPose("micronet_m0", head_channels=32, head_hidden=64, spatial_attention=False)
    assert _spatial(plain) == []
    # the attention adds one 1×1 conv C→1 per head activation: C = 64, 64, 32 per block
    extra = sum(p.numel() for p in model.parameters()) - sum(p.numel() for p in plain.parameters())
    assert extra == 3 * (64 + 64 + 32)
    # the classification models are untouched
    assert _spatial(MicroNet("micronet_m0")) == []
    assert sum(p.numel() for p in MicroNet("micronet_m0").parameters()) == 1_019_590


@pytest.mark.quick
def test_spatial_attention_bad_input() -> None:
    with pytest.raises(ValueError, match=r"SpatialAttention: expected input \(B, 8, H, W\), got shape \(1, 4, 5, 5\)"):
        SpatialAttention(8)(torch.randn(1, 4, 5, 5))
    with pytest.raises(ValueError, match="tau must be positive"):
        SpatialAttention(8, tau=0.0)
    with pytest.raises(ValueError, match="channels must be a positive int"):
        SpatialAttention(0)
    with pytest.raises(TypeError, match=r"activation must be a DynamicShiftMax/StaticShiftMax .*got ReLU6"):
        SpatialAwareShiftMax(nn.ReLU6())
    layer = SpatialAwareShiftMax(DynamicShiftMax(8, groups=4))
    with pytest.raises(ValueError, match=r"expected input \(B, 8, H, W\)"):
        layer(torch.randn(1, 6, 5, 5))
    model = MicroNetPose("micronet_m0", head_channels=32, head_hidden=64)
    with pytest.raises(ValueError, match=r"MicroNetPose: expected input \(B, 3, H, W\), got shape \(1, 1, 64, 48\)"):
        model(torch.randn(1, 1, 64, 48))
    with pytest.raises(ValueError, match="smaller than the total stride 16"):
        model(torch.randn(1, 3, 8, 48))
    with pytest.raises(ValueError, match="already holds SpatialAwareShiftMax"):
        spatial_aware(model.head8)
    with pytest.raises(SurgeryError):
        spatial_aware(nn.Sequential(nn.Conv2d(3, 3, 1), nn.ReLU()))
