from __future__ import annotations

import pytest
import torch

from bdl.models import ASPPSum, FCN8s, build_segmenter, list_segmenters


@pytest.mark.quick
def test_aspp_v2_sums_four_dilated_branches_with_exact_parameters():
    head = ASPPSum(32, 19)
    assert [b.dilation for b in head.branches] == [(6, 6), (12, 12), (18, 18), (24, 24)]
    assert sum(p.numel() for p in head.parameters()) == 4 * (32 * 19 * 9 + 19)
    x = torch.randn(2, 32, 9, 11)
    expected = sum(b(x) for b in head.branches)
    assert torch.allclose(head(x), expected, atol=1e-6)
    assert head(x).shape == (2, 19, 9, 11)


def test_deeplabv2_runs_at_output_stride_8_and_upsamples_to_input():
    m = build_segmenter("deeplabv2", num_classes=19, encoder="resnet18")
    x = torch.randn(1, 3, 32, 64)
    assert m.encoder(x)[-1].shape[-2:] == (4, 8)  # stride 8
    assert m(x).shape == (1, 19, 32, 64)
    assert m.num_classes == 19 and m.segmenter_name == "deeplabv2"


def test_fcn8s_parameter_count_and_shape():
    with torch.device("meta"):  # count without allocating 134M parameters
        m = FCN8s(19)  # paper size: VGG16 convs + fc6 7×7×512→4096 + fc7 + three score layers
    vgg_convs = 14_714_688
    expected = (
        vgg_convs
        + (512 * 49 * 4096 + 4096)
        + (4096 * 4096 + 4096)
        + (4096 * 19 + 19)
        + (512 * 19 + 19)
        + (256 * 19 + 19)
    )
    assert sum(p.numel() for p in m.parameters()) == expected
    small = FCN8s(5, fc_channels=16).eval()
    assert small(torch.randn(1, 3, 40, 72)).shape == (1, 5, 40, 72)


@pytest.mark.quick
def test_build_segmenter_smp_models_and_errors():
    assert {"deeplabv2", "deeplabv3", "deeplabv3plus", "unet", "fcn8s"} <= set(list_segmenters())
    x = torch.randn(2, 3, 32, 64)
    for name in ("deeplabv3plus", "unet"):
        m = build_segmenter(name, num_classes=7, encoder="resnet18")
        assert m(x).shape == (2, 7, 32, 64)
    with pytest.raises(ValueError, match="unknown segmenter 'pspnet'"):
        build_segmenter("pspnet")
    with pytest.raises(ValueError, match="fcn8s is built on VGG16"):
        build_segmenter("fcn8s", encoder="resnet18")


def test_weights_path_loads_backbone_or_full_model(tmp_path):
    from dyncore.training import IncompatibleCheckpointError

    torch.manual_seed(0)
    a = build_segmenter("deeplabv2", num_classes=5, encoder="resnet18")
    # an "ImageNet" backbone file: encoder keys plus a classifier that must be ignored
    state = dict(a.encoder.state_dict())
    state["fc.weight"], state["fc.bias"] = torch.zeros(1000, 512), torch.zeros(1000)
    torch.save(state, tmp_path / "backbone.pth")
    b = build_segmenter("deeplabv2", num_classes=5, encoder="resnet18", weights_path=tmp_path / "backbone.pth")
    for k, v in a.encoder.state_dict().items():
        assert torch.equal(v, b.encoder.state_dict()[k])
    torch.save({"state_dict": a.state_dict()}, tmp_path / "full.pth")
    c = build_segmenter("deeplabv2", num_classes=5, encoder="resnet18", weights_path=tmp_path / "full.pth")
    assert all(torch.equal(v, c.state_dict()[k]) for k, v in a.state_dict().items())
    # a 19-class model file into a 5-class model: clear error naming the shape mismatch
    torch.save(build_segmenter("deeplabv2", num_classes=19, encoder="resnet18").state_dict(), tmp_path / "c19.pth")
    with pytest.raises(IncompatibleCheckpointError, match="shape mismatch"):
        build_segmenter("deeplabv2", num_classes=5, encoder="resnet18", weights_path=tmp_path / "c19.pth")
    with pytest.raises(FileNotFoundError, match=r"weights_path .*nope\.pth does not exist"):
        build_segmenter("unet", encoder="resnet18", weights_path=tmp_path / "nope.pth")
