"""dyncore.segmentation: a staged backbone used by segmentation-models-pytorch by name."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from dyncore.segmentation import StagedEncoder, register_smp_encoder

smp = pytest.importorskip("segmentation_models_pytorch")

CHANNELS = [3, 8, 16, 24, 32, 48]


def factorised_stages() -> list[nn.Module]:
    """Five stride-2 stages made of k×1 / 1×k convs (the MicroNet pattern) to exercise per-axis dilation."""

    def stage(i: int, o: int) -> nn.Module:
        return nn.Sequential(
            nn.Conv2d(i, o, (3, 1), stride=(2, 1), padding=(1, 0)),
            nn.Conv2d(o, o, (1, 3), stride=(1, 2), padding=(0, 1)),
            nn.ReLU(),
        )

    return [stage(CHANNELS[i], CHANNELS[i + 1]) for i in range(5)]


def test_staged_encoder_features_and_dilation():
    x = torch.randn(2, 3, 64, 96)
    enc = StagedEncoder(factorised_stages(), CHANNELS)
    feats = enc(x)
    assert [f.shape[1] for f in feats] == CHANNELS
    assert [f.shape[2] for f in feats] == [64, 32, 16, 8, 4, 2]
    dilated = StagedEncoder(factorised_stages(), CHANNELS, output_stride=8)
    assert [f.shape[-2:] for f in dilated(x)][3:] == [torch.Size([8, 12])] * 3
    assert dilated.output_stride == 8
    with pytest.raises(ValueError, match="output stride must be 8, 16 or 32"):
        enc.make_dilated(4)
    with pytest.raises(ValueError, match="out_channels needs 6 entries"):
        StagedEncoder(factorised_stages(), CHANNELS[:-1])
    with pytest.raises(ValueError, match="rebuild the backbone for 1"):
        enc.set_in_channels(1)


@pytest.mark.parametrize("model", ["DeepLabV3", "DeepLabV3Plus", "Unet"])
def test_registered_encoder_builds_smp_models(model):
    register_smp_encoder("dyncore_test_toy", factorised_stages, CHANNELS)
    net = getattr(smp, model)(encoder_name="dyncore_test_toy", encoder_weights=None, classes=19)
    out = net(torch.randn(2, 3, 64, 64))
    assert out.shape == (2, 19, 64, 64)
    out.mean().backward()
    assert all(p.grad is not None for p in net.encoder.parameters())
