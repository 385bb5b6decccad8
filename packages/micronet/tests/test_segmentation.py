"""MicroNet as a segmentation-models-pytorch encoder (optional dependency: skipped without smp)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from dyncore.complexity import count_parameters
from micronet import MicroNet
from micronet.segmentation import ENCODER_NAMES, micronet_stages, register_smp_encoders, stage_channels

smp = pytest.importorskip("segmentation_models_pytorch")


@pytest.fixture(scope="module", autouse=True)
def _registered() -> None:
    register_smp_encoders()


def _assert_encoder_gets_gradients(model: torch.nn.Module, x: torch.Tensor) -> None:
    target = torch.randint(0, 19, (x.shape[0], *x.shape[-2:]))
    loss = F.cross_entropy(model(x), target)
    assert torch.isfinite(loss)
    loss.backward()
    for i, stage in enumerate(model.encoder.stages):
        grads = [p.grad.abs().sum() for p in stage.parameters() if p.grad is not None]
        assert grads and float(sum(grads)) > 0, f"stage {i} of the encoder got no gradient"


@pytest.mark.quick
@pytest.mark.parametrize(
    ("arch", "kwargs"),
    [("DeepLabV3Plus", {}), ("Unet", {}), ("DeepLabV3", {"encoder_output_stride": 8})],
)
def test_smp_models_build_run_and_backpropagate_into_micronet(arch: str, kwargs: dict[str, int]) -> None:
    torch.manual_seed(0)
    model = getattr(smp, arch)(encoder_name="micronet_m0", encoder_weights=None, classes=19, **kwargs)
    x = torch.randn(2, 3, 64, 64)
    assert model(x).shape == (2, 19, 64, 64)
    _assert_encoder_gets_gradients(model, x)


@pytest.mark.parametrize("name", ENCODER_NAMES)
def test_encoder_features_have_the_declared_channels_and_strides(name: str) -> None:
    encoder = smp.encoders.get_encoder(name, weights=None)
    features = encoder(torch.randn(1, 3, 64, 96))
    assert [f.shape[1] for f in features] == list(stage_channels(name)) == encoder.out_channels
    assert [f.shape[-2:] for f in features] == [(64 // s, 96 // s) for s in (1, 2, 4, 8, 16, 32)]


def test_stage_channels_match_the_layer_table() -> None:
    # Table 4.1 / released configs: stem s1·s2, then the last block of each stride.
    assert stage_channels("micronet_m0") == (3, 4, 8, 12, 32, 384)
    assert stage_channels("micronet_m3") == (3, 12, 16, 24, 80, 864)


@pytest.mark.parametrize("name", ["micronet_m0", "micronet_m3"])
def test_stages_hold_every_parameter_but_the_head(name: str) -> None:
    model = MicroNet(name, num_classes=7)
    stages = micronet_stages(name)
    assert sum(count_parameters(s) for s in stages) == count_parameters(model) - count_parameters(model.head)


def test_output_stride_8_dilates_instead_of_striding() -> None:
    encoder = smp.encoders.get_encoder("micronet_m2", weights=None, output_stride=8)
    assert encoder.output_stride == 8
    shapes = [tuple(f.shape[-2:]) for f in encoder(torch.randn(1, 3, 64, 64))]
    assert shapes == [(64, 64), (32, 32), (16, 16), (8, 8), (8, 8), (8, 8)]
    # factorised k×1 / 1×k depthwise convs are dilated along the axis their kernel spans only
    dilations = {m.kernel_size: m.dilation for m in encoder.stages[4].modules() if isinstance(m, torch.nn.Conv2d)}
    assert dilations[(5, 1)] == (4, 1) and dilations[(1, 5)] == (1, 4)


def test_unknown_config_is_rejected() -> None:
    with pytest.raises(ValueError, match="unknown MicroNet config 'micronet_m9'"):
        register_smp_encoders(("micronet_m9",))
