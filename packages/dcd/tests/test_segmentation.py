"""DCD networks as segmentation-models-pytorch encoders (optional dependency: skipped without smp)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import dcd
from dcd.segmentation import dcd_stages, dilate_dynamic_layers, register_smp_encoders, stage_channels
from dyncore.complexity import count_parameters
from dyncore.export import relative_error

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
@pytest.mark.parametrize("name", ["dcd_resnet18", "dcd_mobilenetv2_050"])
@pytest.mark.parametrize(
    ("arch", "kwargs"),
    [("DeepLabV3Plus", {}), ("Unet", {}), ("DeepLabV3", {"encoder_output_stride": 8})],
)
def test_smp_models_build_run_and_backpropagate_into_dcd(name: str, arch: str, kwargs: dict[str, int]) -> None:
    torch.manual_seed(0)
    model = getattr(smp, arch)(encoder_name=name, encoder_weights=None, classes=19, **kwargs)
    x = torch.randn(2, 3, 64, 64)
    assert model(x).shape == (2, 19, 64, 64)
    _assert_encoder_gets_gradients(model, x)


def test_resnet50_deeplabv3plus() -> None:
    torch.manual_seed(0)
    model = smp.DeepLabV3Plus(encoder_name="dcd_resnet50", encoder_weights=None, classes=19)
    assert model.encoder.out_channels == [3, 64, 256, 512, 1024, 2048]
    assert model(torch.randn(2, 3, 64, 64)).shape == (2, 19, 64, 64)


@pytest.mark.parametrize(
    ("name", "channels"),
    [
        ("dcd_resnet18", (3, 64, 64, 128, 256, 512)),
        ("dcd_resnet50", (3, 64, 256, 512, 1024, 2048)),
        ("dcd_mobilenetv2_050", (3, 8, 16, 16, 48, 1280)),
        ("dcd_mobilenetv2_100", (3, 16, 24, 32, 96, 1280)),
    ],
)
def test_encoder_features_have_the_declared_channels_and_strides(name: str, channels: tuple[int, ...]) -> None:
    assert stage_channels(name) == channels
    encoder = smp.encoders.get_encoder(name, weights=None).eval()
    with torch.no_grad():
        features = encoder(torch.randn(1, 3, 64, 96))
    assert tuple(f.shape[1] for f in features) == channels
    assert [f.shape[-2:] for f in features] == [(64 // s, 96 // s) for s in (1, 2, 4, 8, 16, 32)]


@pytest.mark.parametrize("name", ["dcd_resnet10", "dcd_mobilenetv2_035"])
def test_stages_hold_every_parameter_but_the_classifier(name: str) -> None:
    model = dcd.create(name, num_classes=7)
    head = model.fc if hasattr(model, "fc") else model.classifier
    total = count_parameters(model)
    assert sum(count_parameters(s) for s in dcd_stages(model)) == total - count_parameters(head)


def test_output_stride_8_dilates_the_dynamic_layers() -> None:
    encoder = smp.encoders.get_encoder("dcd_resnet18", weights=None, output_stride=8).eval()
    with torch.no_grad():
        shapes = [tuple(f.shape[-2:]) for f in encoder(torch.randn(1, 3, 64, 64))]
    assert shapes == [(64, 64), (32, 32), (16, 16), (8, 8), (8, 8), (8, 8)]
    layers = dict(dcd.models.dynamic_layers(encoder.stages[4]))
    first = layers["0.conv1.conv"]  # the stride-2 3×3 DCD layer of layer4
    assert (first.stride, first.dilation, first.padding, first.inner_padding) == (1, 4, 4, 0)


def test_dilated_dcd_layer_released_and_fast_forms_agree() -> None:
    # The BN-stabilised path (inner padding of the 1×1 residual) and the explicit fast form (the residual on the
    # centre tap) must still compute the same function after dilation.
    torch.manual_seed(0)
    layer = dcd.DynamicConvDecomposition(16, 24, 3, stride=2)
    x = torch.randn(3, 16, 20, 20)
    layer.train()
    layer(x)  # non-trivial BN running statistics
    dilate_dynamic_layers(layer, 2)
    layer.eval()
    with torch.no_grad():
        released, fast = layer.forward_released(x), layer.reparameterize()(x)
    assert released.shape == (3, 24, 20, 20)
    assert relative_error(fast, released) <= 1e-5


def test_bad_input_is_rejected() -> None:
    with pytest.raises(ValueError, match="unknown dcd model 'dcd_resnet99'"):
        register_smp_encoders(["dcd_resnet99"])
    with pytest.raises(ValueError, match="small_input"):
        dcd_stages(dcd.create("dcd_resnet10", num_classes=10, small_input=True))
    with pytest.raises(TypeError, match="expected a dcd ResNet or MobileNetV2"):
        dcd_stages(torch.nn.Conv2d(3, 3, 1))
    with pytest.raises(ValueError, match="rate must be >= 1"):
        dilate_dynamic_layers(torch.nn.Identity(), 0)
