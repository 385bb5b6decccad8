"""``build_segmenter``: the segmentation adaptation model M by name (timm-style registry of builders)."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

import segmentation_models_pytorch as smp
import torch
from torch import nn

from bdl.models.deeplabv2 import DeepLabV2
from bdl.models.fcn8s import FCN8s

_BUILDERS: dict[str, Callable[..., nn.Module]] = {}
_HEAD_PREFIXES = ("fc.", "classifier.", "head.", "last_linear.")


def register_segmenter(name: str) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Register a builder ``fn(*, num_classes, encoder, in_channels, **kw) -> nn.Module`` under ``name``."""

    def deco(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        _BUILDERS[name] = fn
        return fn

    return deco


def list_segmenters() -> list[str]:
    return sorted(_BUILDERS)


@register_segmenter("deeplabv2")
def _deeplabv2(*, num_classes: int, encoder: str, in_channels: int, output_stride: int = 8, **kw: Any) -> nn.Module:
    enc = smp.encoders.get_encoder(encoder, in_channels=in_channels, depth=5, weights=None, output_stride=output_stride)
    return DeepLabV2(enc, num_classes, **kw)


@register_segmenter("deeplabv3")
def _deeplabv3(*, num_classes: int, encoder: str, in_channels: int, **kw: Any) -> nn.Module:
    return smp.DeepLabV3(encoder_name=encoder, encoder_weights=None, in_channels=in_channels, classes=num_classes, **kw)


@register_segmenter("deeplabv3plus")
def _deeplabv3plus(*, num_classes: int, encoder: str, in_channels: int, **kw: Any) -> nn.Module:
    return smp.DeepLabV3Plus(
        encoder_name=encoder, encoder_weights=None, in_channels=in_channels, classes=num_classes, **kw
    )


@register_segmenter("unet")
def _unet(*, num_classes: int, encoder: str, in_channels: int, **kw: Any) -> nn.Module:
    return smp.Unet(encoder_name=encoder, encoder_weights=None, in_channels=in_channels, classes=num_classes, **kw)


@register_segmenter("fcn8s")
def _fcn8s(*, num_classes: int, encoder: str, in_channels: int, **kw: Any) -> nn.Module:
    if encoder not in ("vgg16", "resnet101"):  # "resnet101" is only the default of build_segmenter
        raise ValueError(f"fcn8s is built on VGG16; encoder={encoder!r} is not supported")
    if in_channels != 3:
        raise ValueError(f"fcn8s takes 3 input channels, got in_channels={in_channels}")
    return FCN8s(num_classes, **kw)


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """The state dict in ``path`` (dyncore.models.read_state_dict: weights only; a file that is not a checkpoint is a
    CheckpointError naming it); non-finite weights are refused (NonFiniteError naming the tensor and the file)."""
    from dyncore.models import read_state_dict
    from dyncore.training import check_finite_state

    if not path.is_file():
        raise FileNotFoundError(f"weights_path {path} does not exist")
    state = read_state_dict(path)
    check_finite_state(state, source=str(path))
    return state


def load_pretrained(model: nn.Module, path: str | os.PathLike[str]) -> nn.Module:
    """Load a user's (e.g. ImageNet) weights: a full model state dict, or the backbone's (classifier keys dropped).

    Backbone weights go to ``model.encoder`` (smp models, DeepLab-V2) or the VGG16 layers of FCN-8s (torchvision VGG16
    keys ``features.*``; ``classifier.0/3`` become fc6/fc7 when fc_channels is 4096). Missing, unexpected or
    mis-shaped keys raise (dyncore.training.load_state_dict_strict).
    """
    from dyncore.training import load_state_dict_strict

    state = _read_state_dict(Path(path))
    if set(state) == set(model.state_dict()):
        load_state_dict_strict(model, state)
        return model
    if isinstance(model, FCN8s):
        n3, n4 = len(model.to_pool3), len(model.to_pool3) + len(model.to_pool4)
        mapped: dict[str, torch.Tensor] = {}
        for k, v in state.items():
            if k.startswith("features."):
                idx, rest = k.split(".", 2)[1:]
                i = int(idx)
                part = "to_pool3" if i < n3 else "to_pool4" if i < n4 else "to_pool5"
                off = 0 if i < n3 else n3 if i < n4 else n4
                mapped[f"{part}.{i - off}.{rest}"] = v
        fc6, fc7 = cast(nn.Conv2d, model.fc[0]), cast(nn.Conv2d, model.fc[3])
        if "classifier.0.weight" in state and fc6.weight.shape[0] == state["classifier.0.weight"].shape[0]:
            mapped["fc.0.weight"] = state["classifier.0.weight"].reshape(fc6.weight.shape)
            mapped["fc.0.bias"] = state["classifier.0.bias"]
            mapped["fc.3.weight"] = state["classifier.3.weight"].reshape(fc7.weight.shape)
            mapped["fc.3.bias"] = state["classifier.3.bias"]
        full = model.state_dict()
        full.update(mapped)
        load_state_dict_strict(model, full)
        return model
    encoder = getattr(model, "encoder", None)
    if encoder is None:
        raise ValueError(f"weights_path {path}: keys match neither the model nor a known backbone")
    state = {k.removeprefix("encoder."): v for k, v in state.items()}
    state = {k: v for k, v in state.items() if not k.startswith(_HEAD_PREFIXES)}
    # timm-universal encoders keep their weights under "model."
    enc_keys = set(encoder.state_dict())
    if not (set(state) & enc_keys) and all("model." + k in enc_keys for k in list(state)[:5]):
        state = {"model." + k: v for k, v in state.items()}
    load_state_dict_strict(encoder, state)
    return model


def known_encoders() -> list[str]:
    """smp encoder names usable here (including ones registered by ``--register``); any ``tu-<timm model>`` too."""
    return sorted(smp.encoders.encoders)


def check_encoder(encoder: str) -> None:
    """UsageError naming ``--encoder`` and listing the known names when smp cannot build ``encoder``."""
    from dyncore.cli import UsageError

    if encoder.startswith("tu-"):
        import timm

        if not timm.is_model(encoder[3:].split(".")[0]):
            raise UsageError(f"--encoder {encoder!r}: timm has no model {encoder[3:]!r} (see timm.list_models())")
        return
    if encoder in smp.encoders.encoders:
        return
    raise UsageError(
        f"--encoder {encoder!r} is not a known encoder; known: {', '.join(known_encoders())}, or tu-<any timm "
        "model>; encoders of other packages need --register MODULE:FUNCTION first (e.g. "
        "micronet.segmentation:register_smp_encoders)"
    )


def input_requirements(model: nn.Module) -> tuple[int, bool]:
    """(stride, divisible): images need sides ≥ stride, and multiples of it when ``divisible`` (smp checks that in
    forward). From the model's ``input_stride`` or its smp encoder's ``output_stride``."""
    stride = getattr(model, "input_stride", None)
    if stride is None:
        encoder = getattr(model, "encoder", None)
        stride = getattr(encoder, "output_stride", 1) if encoder is not None else 1
    return int(stride), bool(getattr(model, "requires_divisible_input_shape", False))


def build_segmenter(
    name: str = "deeplabv2",
    *,
    num_classes: int = 19,
    encoder: str = "resnet101",
    in_channels: int = 3,
    weights_path: str | os.PathLike[str] | None = None,
    **kwargs: Any,
) -> nn.Module:
    """Build the segmentation adaptation model M.  forward: (B, 3, H, W) in [-1, 1] → logits (B, num_classes, H, W).

    Args:
        name: one of :func:`list_segmenters` — ``"deeplabv2"`` (ASPP-sum head, output stride 8; the paper's model with
            ``encoder="resnet101"``), ``"fcn8s"`` (VGG16), ``"deeplabv3"``, ``"deeplabv3plus"``, ``"unet"`` (smp).
        num_classes: output classes (19 for Cityscapes train ids).
        encoder: any segmentation-models-pytorch encoder name (e.g. ``"resnet101"``, ``"tu-mobilenetv3_small_050"``).
            Always randomly initialised here (no download); pass ``weights_path`` for ImageNet weights.
        weights_path: a state dict file (full model, or backbone/ImageNet weights) loaded after building.
        kwargs: forwarded to the model class (e.g. ``fc_channels`` for FCN-8s, ``rates`` for DeepLab-V2).

    The returned module has ``.num_classes`` and ``.segmenter_name`` attributes.
    """
    if name not in _BUILDERS:
        raise ValueError(f"unknown segmenter {name!r}; choose from {list_segmenters()}")
    if num_classes < 1:
        raise ValueError(f"num_classes must be positive, got {num_classes}")
    if name != "fcn8s":  # FCN-8s is VGG16 by construction (its builder checks the name)
        check_encoder(encoder)
    model = _BUILDERS[name](num_classes=num_classes, encoder=encoder, in_channels=in_channels, **kwargs)
    model.num_classes = num_classes  # type: ignore[assignment]
    model.segmenter_name = name  # type: ignore[assignment]
    if weights_path is not None:
        load_pretrained(model, weights_path)
    return model
