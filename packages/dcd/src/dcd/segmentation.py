"""DCD networks as segmentation-models-pytorch encoders (optional: needs ``segmentation-models-pytorch``).

A DCD ResNet or MobileNetV2 (:mod:`dcd.models`) is split into five stages at output strides 2, 4, 8, 16, 32 and the
classifier is dropped:

* ResNet: [stem conv 7×7/2], [max-pool + layer1], [layer2], [layer3], [layer4];
* MobileNetV2: a new stage starts at every stride-2 block; the last 1×1 conv (→ 1280) closes the stride-32 stage.

After :func:`register_smp_encoders`::

    smp.DeepLabV3Plus(encoder_name="dcd_resnet18", encoder_weights=None, classes=19)

builds a randomly initialised DCD-ResNet-18 encoder. Output strides 16 and 8 are supported: the static convs are
dilated by :class:`dyncore.segmentation.StagedEncoder`; the dynamic layers (DCD, depthwise/joint DCD, DY-Conv,
CondConv) are not ``nn.Conv2d`` s, so the encoder registered here also turns their strides into dilations
(:func:`dilate_dynamic_layers`).
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from dcd.layers import DynamicConvDecomposition
from dcd.models.common import DYNAMIC_TYPES
from dcd.models.mobilenetv2 import MBV2_SETTINGS, MobileNetV2
from dcd.models.registry import ARCHS, MODEL_NAMES, create
from dcd.models.resnet import RESNET_DEPTHS, Bottleneck, ResNet
from dyncore.nn import make_divisible

__all__ = ["ENCODER_NAMES", "dcd_stages", "dilate_dynamic_layers", "register_smp_encoders", "stage_channels"]

ENCODER_NAMES: tuple[str, ...] = tuple(f"dcd_{arch}" for arch in ARCHS)


def _arch(name: str) -> str:
    if name not in MODEL_NAMES:
        raise ValueError(f"dcd segmentation: unknown dcd model {name!r}; choose one of {MODEL_NAMES}")
    return next(arch for arch in ARCHS if name.startswith(f"dcd_{arch}"))


def stage_channels(name: str) -> tuple[int, ...]:
    """smp ``out_channels`` of the registered model ``name``: (3, stride-2, …, stride-32 channels), e.g.
    (3, 64, 64, 128, 256, 512) for ``dcd_resnet18``."""
    _, defaults = ARCHS[_arch(name)]
    if "depth" in defaults:
        block, _ = RESNET_DEPTHS[int(defaults["depth"])]
        e = Bottleneck.expansion if block == "bottleneck" else 1
        return (3, 64, 64 * e, 128 * e, 256 * e, 512 * e)
    wm = float(defaults["width_mult"])
    channels = [3, make_divisible(32 * wm, 8)]
    for st in MBV2_SETTINGS:
        if st.s == 2:
            channels.append(0)
        channels[-1] = make_divisible(st.c * wm, 8)
    channels[-1] = make_divisible(1280 * max(1.0, wm), 8)
    return tuple(channels)


def _stride(module: nn.Module) -> int:
    """The largest stride of a conv-like layer inside ``module`` (1 if none)."""
    strides = [1]
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            strides.append(max(m.stride))
        elif isinstance(m, DYNAMIC_TYPES):
            strides.append(int(m.stride))
    return max(strides)


def dcd_stages(model: nn.Module) -> list[nn.Module]:
    """Five stages (strides 2, 4, 8, 16, 32) of a DCD :class:`~dcd.models.ResNet` or
    :class:`~dcd.models.MobileNetV2` built for full-size inputs (``small_input=False``). The stages share the
    model's modules (no copy). Stage i maps (B, C_{i-1}, H, W) → (B, C_i, H/2, W/2).

    Raises:
        TypeError: ``model`` is neither family.
        ValueError: the model does not have five stride-2 stages (e.g. ``small_input=True``).
    """
    if isinstance(model, ResNet):
        if len(model.stem) != 2:
            raise ValueError("dcd_stages: a small_input ResNet (stride-1 stem, no max-pool) has no stride-2/4 stages")
        return [model.stem[0], nn.Sequential(model.stem[1], model.layer1), model.layer2, model.layer3, model.layer4]
    if isinstance(model, MobileNetV2):
        groups: list[list[nn.Module]] = []
        for index, layer in enumerate(model.features):
            if index == 0 or _stride(layer) == 2:
                groups.append([])
            groups[-1].append(layer)
        if len(groups) != 5 or _stride(model.features[0]) != 2:
            raise ValueError(
                f"dcd_stages: MobileNetV2 has {len(groups)} stride-2 stages, an smp encoder needs 5 "
                "(a small_input model has total stride 8)"
            )
        return [nn.Sequential(*g) for g in groups]
    raise TypeError(f"dcd_stages: expected a dcd ResNet or MobileNetV2, got {type(model).__name__}")


def dilate_dynamic_layers(module: nn.Module, rate: int) -> None:
    """Turn the stride of every dynamic layer (DCD, depthwise/joint DCD, DY-Conv, CondConv) in ``module`` into a
    dilation of ``rate`` (stride 1, padding k//2·rate), like :class:`dyncore.segmentation.StagedEncoder` does for
    ``nn.Conv2d``. A DCD layer's 1×1 residual (Q, centre tap) keeps zero padding."""
    if rate < 1:
        raise ValueError(f"dilate_dynamic_layers: rate must be >= 1, got {rate}")
    for m in module.modules():
        if not isinstance(m, DYNAMIC_TYPES):
            continue
        k = int(m.kernel_size)
        m.stride = 1
        m.dilation = rate if k > 1 else 1
        m.padding = k // 2 * m.dilation
        if isinstance(m, DynamicConvDecomposition):
            m.inner_padding = m.padding - m.dilation * (k - 1) // 2


def register_smp_encoders(names: Sequence[str] = ENCODER_NAMES) -> None:
    """Register DCD models (default: ``dcd_<arch>`` for every architecture, DCD layers as released) with
    segmentation-models-pytorch under their model names. Any registered dcd model name (``_static``,
    ``_dyconv``, ``_condconv`` too) may be given.

    Raises:
        ValueError: an unknown model name.
        ImportError: segmentation-models-pytorch is not installed.
    """
    from segmentation_models_pytorch import encoders as smp_encoders

    from dyncore.segmentation import register_smp_encoder

    for name in names:
        channels = stage_channels(name)

        def factory(name: str = name) -> list[nn.Module]:
            return dcd_stages(create(name, num_classes=1))

        register_smp_encoder(name, factory, channels)
        # dyncore's StagedEncoder dilates nn.Conv2d only; extend the registered class to the dynamic layers too.
        base: type[nn.Module] = smp_encoders.encoders[name]["encoder"]

        def make_dilated(self: nn.Module, output_stride: int, _base: type[nn.Module] = base) -> None:
            _base.make_dilated(self, output_stride)  # type: ignore[attr-defined]
            for index, stage in enumerate(self.stages):  # type: ignore[arg-type]
                stride = 2 ** (index + 1)
                if stride > output_stride:
                    dilate_dynamic_layers(stage, stride // output_stride)

        encoder = type(base.__name__, (base,), {"make_dilated": make_dilated})
        smp_encoders.encoders[name]["encoder"] = encoder
