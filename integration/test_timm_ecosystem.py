"""MicroNet and DCD models as citizens of the ecosystem, with no hand-written wrapper: timm's ``features_only``
backbones plugged into segmentation-models-pytorch (``tu-<name>`` encoders) and into a torchvision detector
(``BackboneWithFPN``-style feature pyramid), and a checkpoint written by one package rebuilt by timm alone from the
model spec it carries."""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path

import pytest
import timm
import torch
from torch import nn

import dcd  # noqa: F401  (registers the dcd_* timm models)
import micronet  # noqa: F401  (registers the micronet_* timm models)
from dyncore.models import create_from_spec, model_spec

MODELS = ("micronet_m0", "dcd_mobilenetv2_050", "dcd_resnet18")


@pytest.mark.parametrize("name", MODELS)
def test_features_only_reports_what_it_returns(name: str) -> None:
    backbone = timm.create_model(name, features_only=True)
    x = torch.randn(2, 3, 64, 64)
    features = backbone(x)
    info = backbone.feature_info
    assert [f.shape[1] for f in features] == info.channels()
    assert [64 // f.shape[-1] for f in features] == info.reduction()
    assert all(torch.isfinite(f).all() for f in features)


@pytest.mark.parametrize("name", MODELS)
def test_smp_tu_encoder_builds_and_segments_at_full_resolution(name: str) -> None:
    smp = pytest.importorskip("segmentation_models_pytorch")
    model = smp.Unet(encoder_name=f"tu-{name}", encoder_weights=None, classes=5, encoder_depth=5)
    model.eval()
    with torch.no_grad():
        out = model(torch.randn(1, 3, 64, 64))
    assert out.shape == (1, 5, 64, 64) and torch.isfinite(out).all()


class _FeaturePyramid(nn.Module):
    """A timm ``features_only`` backbone + torchvision's FeaturePyramidNetwork: what FasterRCNN expects of a backbone
    (an ordered dict of maps and ``out_channels``)."""

    def __init__(self, name: str, channels: int = 32) -> None:
        from torchvision.ops import FeaturePyramidNetwork
        from torchvision.ops.feature_pyramid_network import LastLevelMaxPool

        super().__init__()
        self.body = timm.create_model(name, features_only=True, out_indices=(1, 2, 3, 4))  # + max-pool: 5 maps
        self.fpn = FeaturePyramidNetwork(self.body.feature_info.channels(), channels, extra_blocks=LastLevelMaxPool())
        self.out_channels = channels

    def forward(self, x: torch.Tensor) -> OrderedDict[str, torch.Tensor]:
        return self.fpn(OrderedDict((str(i), f) for i, f in enumerate(self.body(x))))


@pytest.mark.parametrize("name", ["micronet_m0", "dcd_mobilenetv2_050"])
def test_torchvision_faster_rcnn_trains_on_a_timm_feature_backbone(name: str) -> None:
    from torchvision.models.detection import FasterRCNN

    backbone = _FeaturePyramid(name)
    detector = FasterRCNN(backbone, num_classes=3, min_size=96, max_size=96)
    detector.train()
    images = [torch.rand(3, 96, 96), torch.rand(3, 96, 96)]
    targets = [
        {"boxes": torch.tensor([[10.0, 12.0, 60.0, 70.0]]), "labels": torch.tensor([1])},
        {"boxes": torch.tensor([[5.0, 5.0, 40.0, 30.0]]), "labels": torch.tensor([2])},
    ]
    losses = detector(images, targets)
    assert set(losses) >= {"loss_classifier", "loss_box_reg", "loss_objectness", "loss_rpn_box_reg"}
    total = sum(losses.values())
    assert isinstance(total, torch.Tensor) and torch.isfinite(total)
    total.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in backbone.body.parameters())


@pytest.mark.parametrize(("name", "kwargs"), [("micronet_m0", {"num_classes": 10}), ("dcd_mobilenetv2_050", {})])
def test_a_saved_model_spec_rebuilds_the_same_architecture_through_timm(
    name: str, kwargs: dict[str, int], tmp_path: Path
) -> None:
    model = timm.create_model(name, in_chans=1, **kwargs)
    path = tmp_path / "model.pt"
    torch.save({"model": model.state_dict(), "model_spec": model_spec(model)}, path)
    saved = torch.load(path, weights_only=True)
    rebuilt = create_from_spec(saved["model_spec"], source=str(path))
    rebuilt.load_state_dict(saved["model"])
    x = torch.randn(2, 1, 64, 64)
    model.eval()
    rebuilt.eval()
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(x), model(x), rtol=0, atol=0)
