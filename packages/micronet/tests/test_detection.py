"""Detection (Faster R-CNN + FPN, RetinaNet) and keypoint models with a MicroNet backbone (Sections 4.6–4.7)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from micronet.detection import MicroNetFPNBackbone, MicroNetPose, faster_rcnn, gaussian_heatmaps, retinanet


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


@pytest.mark.quick
def test_pose_model_shapes_and_training() -> None:
    torch.manual_seed(0)
    model = MicroNetPose("micronet_m0", head_channels=32, head_hidden=64)
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
