"""MicroNet as a timm-native model: pretrained_cfg, features_only, classifier API, keywords, model specs, MAdds,
fresh-model scale."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from PIL import Image
from torch import nn

import micronet  # noqa: F401  (registers the entrypoints)
from dyncore.complexity import MAddsConvention, count_madds
from dyncore.models import create_from_spec, model_spec
from micronet.config import CONFIGS
from micronet.data import imagenet_transforms

NAMES = sorted(CONFIGS)


@pytest.mark.quick
@pytest.mark.parametrize("name", ["micronet_m0", "micronet_m3_sharp"])
def test_pretrained_cfg_is_micronets_own_eval_transform(name: str) -> None:
    model = timm.create_model(name)
    cfg = model.pretrained_cfg
    assert cfg["mean"] == (0.485, 0.456, 0.406) and cfg["std"] == (0.229, 0.224, 0.225)
    assert cfg["input_size"] == (3, 224, 224) and cfg["interpolation"] == "bilinear" and cfg["crop_pct"] == 0.875
    assert model.get_submodule(cfg["first_conv"]).in_channels == 3
    assert model.get_submodule(cfg["classifier"]).out_features == 1000
    timm_eval = timm.data.create_transform(**timm.data.resolve_data_config({}, model=model))
    _, ours = imagenet_transforms(224)
    rng = np.random.default_rng(0)
    for size in ((300, 411), (256, 256), (500, 240)):
        image = Image.fromarray(rng.integers(0, 255, (*size, 3), dtype=np.uint8))
        assert torch.equal(timm_eval(image), ours(image))


def test_features_only_and_out_indices() -> None:
    feats = timm.create_model("micronet_m2", features_only=True)
    assert feats.feature_info.reduction() == [2, 4, 8, 16, 32]
    assert feats.feature_info.channels() == [8, 12, 24, 64, 768]
    outs = feats(torch.randn(1, 3, 64, 64))
    assert [tuple(o.shape) for o in outs] == [
        (1, 8, 32, 32),
        (1, 12, 16, 16),
        (1, 24, 8, 8),
        (1, 64, 4, 4),
        (1, 768, 2, 2),
    ]
    torch.manual_seed(0)
    sub = timm.create_model("micronet_m0", features_only=True, out_indices=(2, 4)).eval()
    torch.manual_seed(0)  # the same initialisation: the wrapped model's last feature is forward_features
    full = timm.create_model("micronet_m0").eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        outs = sub(x)
        assert sub.feature_info.channels() == [12, 384] and len(outs) == 2
        torch.testing.assert_close(outs[-1], full.forward_features(x), rtol=0, atol=0)
    small = timm.create_model("micronet_m0", features_only=True, stem_stride=1)
    assert small.feature_info.reduction() == [1, 2, 4, 8, 16]


def test_smp_timm_universal_encoder() -> None:
    smp = pytest.importorskip("segmentation_models_pytorch")
    net = smp.Unet("tu-micronet_m0", encoder_weights=None, classes=3).eval()
    assert net.encoder.out_channels == [3, 4, 8, 12, 32, 384]
    with torch.no_grad():
        assert net(torch.randn(1, 3, 64, 64)).shape == (1, 3, 64, 64)


def test_classifier_api_and_pre_logits() -> None:
    model = timm.create_model("micronet_m1", num_classes=10).eval()
    assert model.get_classifier() is model.head.fc2 and model.get_classifier()[0].out_features == 10
    x = torch.randn(2, 3, 64, 64)
    feats = model.forward_features(x)
    assert model.forward_head(feats, pre_logits=True).shape == (2, 960)
    model.reset_classifier(5)
    assert model(x).shape == (2, 5) and model.num_classes == 5
    model.reset_classifier(0)
    assert model(x).shape == (2, 960)
    with pytest.raises(ValueError, match="global_pool='avg'"):
        model.reset_classifier(3, global_pool="max")
    headless = timm.create_model("micronet_m0", num_classes=0).eval()
    assert headless(x).shape == (2, 640)


@pytest.mark.quick
def test_keywords_in_chans_drop_rate_and_unsupported() -> None:
    gray = timm.create_model("micronet_m0", in_chans=1, drop_rate=0.3)
    assert gray.get_submodule("stem.0.0").in_channels == 1 and gray.head.dropout.p == 0.3
    assert gray.eval()(torch.randn(1, 1, 32, 32)).shape == (1, 1000)
    with pytest.raises(TypeError, match="output_stride"):
        timm.create_model("micronet_m0", output_stride=16)
    with pytest.raises(TypeError, match="width_mult"):
        timm.create_model("micronet_m0", width_mult=0.5)
    with pytest.raises(ValueError, match="no residual blocks"):
        timm.create_model("micronet_m0", drop_path_rate=0.1)  # M0 has no identity shortcut to drop


def test_drop_path_rate_is_stochastic_depth_on_residual_blocks() -> None:
    model = timm.create_model("micronet_m3", drop_path_rate=0.5, num_classes=4)
    rates = [b.drop_path.drop_prob if b.residual else None for b in model.blocks]
    assert rates[0] is None and rates[2] == pytest.approx(0.5 * 2 / 11) and rates[9] == pytest.approx(0.5 * 9 / 11)
    block = model.blocks[9]  # 120→120 residual
    x = torch.randn(64, 120, 7, 7)
    block.train()
    with torch.no_grad():
        body = block.body(x)
        y = block(x)
    # per sample, the residual branch is either dropped (y = x) or kept and rescaled by 1/(1−p)
    dropped = [(y[i] - x[i]).abs().max() < 1e-6 for i in range(64)]
    assert 0 < sum(dropped) < 64
    keep = 1 - block.drop_path.drop_prob
    i = dropped.index(False)
    torch.testing.assert_close(y[i], x[i] + body[i] / keep)
    block.eval()
    with torch.no_grad():
        torch.testing.assert_close(block(x), x + block.body(x))


@pytest.mark.parametrize("name", NAMES)
def test_fresh_model_gives_normal_scale_outputs(name: str) -> None:
    """Before any training, eval logits are finite and O(1e-2..1) (the authors' init gives ≈1e-14, kept as
    init="released")."""
    torch.manual_seed(0)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        logits = timm.create_model(name).eval()(x)
        released = timm.create_model(name, init="released").eval()(x)
    assert torch.isfinite(logits).all()
    assert 1e-3 < float(logits.std()) < 10.0, float(logits.std())
    assert float(released.std()) < 1e-6  # the released init's collapse that the default init avoids


def test_model_spec_rebuilds_the_32px_variant(tmp_path: Path) -> None:
    """The stem stride is in the spec (timm rebuilds the right model from it) and in the state_dict (a model with
    the wrong stride refuses the weights with a clear error)."""
    small = timm.create_model("micronet_m0", num_classes=10, stem_stride=1)
    spec = model_spec(small)
    assert spec == {"name": "micronet_m0", "kwargs": {"num_classes": 10, "stem_stride": 1}}
    rebuilt = create_from_spec(spec)
    assert rebuilt.total_stride == 16
    rebuilt.load_state_dict(small.state_dict())
    assert timm.create_model(spec["name"], **spec["kwargs"]).total_stride == 16
    wrong = timm.create_model("micronet_m0", num_classes=10)  # the case: stride 2, all keys match
    with pytest.raises(ValueError, match=r"stem has stride 1 but this model's has 2.*stem_stride=1"):
        wrong.load_state_dict(small.state_dict())
    path = tmp_path / "ckpt.pth"
    torch.save({"model": small.state_dict(), "model_spec": spec}, path)
    with pytest.raises(ValueError, match="stem has stride 1"):
        timm.create_model("micronet_m0", num_classes=10, pretrained=True, pretrained_cfg_overlay=dict(file=str(path)))


def _hook_madds(model: nn.Module, x: torch.Tensor) -> int:
    """A plain forward-hook counter: conv MAdds = out elements · (C_in/groups)·k_h·k_w, linear = out · in."""
    total = [0]

    def conv(m: nn.Conv2d, _inp: tuple[torch.Tensor, ...], out: torch.Tensor) -> None:
        total[0] += out.numel() * (m.in_channels // m.groups) * m.kernel_size[0] * m.kernel_size[1]

    def linear(m: nn.Linear, _inp: tuple[torch.Tensor, ...], out: torch.Tensor) -> None:
        total[0] += out.numel() * m.in_features

    hooks = [
        m.register_forward_hook(conv if isinstance(m, nn.Conv2d) else linear)  # type: ignore[arg-type]
        for m in model.modules()
        if isinstance(m, (nn.Conv2d, nn.Linear))
    ]
    with torch.no_grad():
        model(x)
    for h in hooks:
        h.remove()
    return total[0]


def test_count_madds_agrees_with_flop_counter_and_hooks() -> None:
    """M0 at 224×224, one image, eval: count_madds (conv+FC convention) = FlopCounterMode's FLOPs / 2 (conv, mm,
    addmm, bmm) = a forward-hook counter on Conv2d/Linear = 3.45M."""
    from torch.utils.flop_counter import FlopCounterMode

    model = timm.create_model("micronet_m0").eval()
    x = torch.randn(1, 3, 224, 224)
    ours = count_madds(model, x, convention=MAddsConvention(elementwise=False)).total
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(x)
    flops = counter.get_total_flops()
    hooks = _hook_madds(model, x)
    assert ours == hooks == flops // 2
    assert abs(ours - 3.45e6) / 3.45e6 < 0.01
