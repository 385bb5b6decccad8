"""The authors' released MicroNet checkpoints (micronet-m0.pth … m3), loaded into our models.

A released file is a dict, usually ``{"state_dict": {...}}`` (or ``"model"``), keys prefixed ``module.``
(DataParallel). Our modules compute exactly the released functions; only the names differ (rule below, from
``shared/spec/released-checkpoints.md``; the tests check it against reference outputs of the authors' code):

=========================================================  ==========================================
released                                                   ours
=========================================================  ==========================================
``features.0.stem.0.conv.{k}.*`` (3×1 conv, BN, 1×3, BN)   ``stem.{k//2}.{k%2}.*``
``features.{i}.layers.{j}.*``                              ``blocks.{i-1}.body.{j'}.*``
``classifier.0.linear.{0,1}.*`` / ``classifier.2...``      ``head.fc1.{0,1}.*`` / ``head.fc2.{0,1}.*``
=========================================================  ==========================================

j' = j, except: in an A-row whose activation after the depthwise pair is ReLU6, j ≥ 4 → j − 1 (the released slot 3
is an empty Sequential); in a C-row, j ≥ 5 → j − 1 (slot 4 is always empty). Inside a slot: Dynamic Shift-Max
``fc.0`` → ``coefficients.fc``, ``fc.2`` → ``coefficients.heads.out``; a factorised depthwise pair (A-row slot 0,
C-row slot 3) ``conv.{k}`` → ``{k//2}.{k%2}``; a group conv + BN ``conv.{k}`` → ``{k}``.

Two routes load a file: :func:`load_released` (a plain function) and timm's own,
``timm.create_model("micronet_m0", pretrained=True, pretrained_cfg_overlay=dict(file=PATH))``, whose checkpoint
filter is :func:`checkpoint_filter_fn`. A file in neither the released nor our own layout is a
:class:`dyncore.training.CheckpointError` naming the unmatched keys.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping

import torch
from torch import Tensor, nn

from dyncore.models import check_fits, load_converted, read_state_dict
from micronet.model import MicroNet

__all__ = ["checkpoint_filter_fn", "convert_released", "is_released_layout", "load_released", "released_key"]

_STEM = re.compile(r"features\.0\.stem\.0\.conv\.(\d+)\.(.+)")
_LAYER = re.compile(r"features\.(\d+)\.layers\.(\d+)\.(.+)")
_HEAD = re.compile(r"classifier\.([02])\.linear\.([01])\.(.+)")
_CONV = re.compile(r"conv\.(\d+)\.(.+)")


def _unwrap(model: nn.Module) -> MicroNet:
    inner = getattr(model, "model", model) if not isinstance(model, MicroNet) else model
    if not isinstance(inner, MicroNet):
        raise TypeError(f"released MicroNet checkpoints load into a MicroNet, got {type(model).__name__}")
    return inner


def released_key(key: str, model: MicroNet) -> str | None:
    """Our name for the released ``key`` (without ``module.``), or None when it fits no released pattern."""
    if m := _STEM.fullmatch(key):
        k, rest = int(m[1]), m[2]
        return f"stem.{k // 2}.{k % 2}.{rest}"
    if m := _HEAD.fullmatch(key):
        return f"head.fc{1 if m[1] == '0' else 2}.{m[2]}.{m[3]}"
    m = _LAYER.fullmatch(key)
    if m is None:
        return None
    i, j, rest = int(m[1]), int(m[2]), m[3]
    if not 1 <= i <= len(model.config.blocks):
        return None
    row = model.config.blocks[i - 1]
    if row.kind == "A":
        jj = j - 1 if j >= 4 and row.act2.kind == "relu6" else j
        depthwise = j == 0
    elif row.kind == "C":
        jj = j - 1 if j >= 5 else j
        depthwise = j == 3
    else:
        jj, depthwise = j, False
    if rest.startswith("fc.0."):
        inner = "coefficients.fc." + rest[len("fc.0.") :]
    elif rest.startswith("fc.2."):
        inner = "coefficients.heads.out." + rest[len("fc.2.") :]
    elif c := _CONV.fullmatch(rest):
        k = int(c[1])
        inner = f"{k // 2}.{k % 2}.{c[2]}" if depthwise else f"{k}.{c[2]}"
    else:
        return None
    return f"blocks.{i - 1}.body.{jj}.{inner}"


def is_released_layout(state_dict: Mapping[str, Tensor]) -> bool:
    """Whether the keys are in the authors' layout (``features.*`` / ``classifier.*``)."""
    return any(k.startswith("features.0.stem.") for k in state_dict)


def convert_released(state_dict: Mapping[str, Tensor], model: nn.Module) -> dict[str, Tensor]:
    """Rename a released state_dict (``module.`` already stripped) to our keys for ``model``.

    Keys that fit no released pattern are kept under their own name, so a strict load reports them. The stem's
    stride record (``stem.stride``) is the model's own: the released weights fit stride 1 or 2 alike.
    """
    net = _unwrap(model)
    out: dict[str, Tensor] = {}
    for key, value in state_dict.items():
        ours = released_key(key, net)
        out[ours if ours is not None else key] = value
    out["stem.stride"] = net.stem.stride.detach().clone()
    return out


def _fit_classifier(state_dict: dict[str, Tensor], net: MicroNet) -> dict[str, Tensor]:
    """Drop the file's classifier (head.fc2.*) when its class count differs from the model's (fine-tuning on other
    classes, timm's rule); a strict load then names what is missing if the model did not ask for new classes."""
    weight = state_dict.get("head.fc2.0.weight")
    if weight is not None and weight.shape[0] != net.num_classes:
        return {k: v for k, v in state_dict.items() if not k.startswith("head.fc2.")}
    return state_dict


def _check_fits(state_dict: Mapping[str, Tensor], net: MicroNet, *, source: str, classifier_dropped: bool) -> None:
    check_fits(
        state_dict,
        net,
        source=source,
        may_be_missing=lambda k: classifier_dropped and k.startswith("head.fc2."),
        model_name=f"{net.config.name} (neither the released layout nor ours)",
    )


def checkpoint_filter_fn(state_dict: dict[str, Tensor], model: nn.Module) -> dict[str, Tensor]:
    """timm's ``pretrained_filter_fn`` for every micronet entrypoint: a released file is renamed
    (:func:`convert_released`), a file in our own layout passes unchanged; either must then fit the model (else a
    CheckpointError naming the unmatched keys). A classifier for another class count is dropped (timm then loads
    non-strictly, as for its own models)."""
    net = _unwrap(model)
    sd = {k[len("module.") :] if k.startswith("module.") else k: v for k, v in state_dict.items()}
    if is_released_layout(sd):
        sd = convert_released(sd, net)
    fitted = _fit_classifier(sd, net)
    _check_fits(fitted, net, source="the pretrained checkpoint", classifier_dropped=fitted is not sd)
    return fitted


def load_released(model_or_name: nn.Module | str, path: str | os.PathLike[str], **kwargs: object) -> MicroNet:
    """Load the authors' released checkpoint ``path`` into a MicroNet (or into ``timm.create_model(name, **kwargs)``).

    The file may wrap the weights in ``state_dict``/``model`` and prefix them with ``module.``. Returns the model.

    Raises:
        CheckpointError: the file is not a checkpoint, or its keys/shapes fit neither layout (names the unmatched
            keys and the file).
    """
    if isinstance(model_or_name, str):
        import timm

        model: nn.Module = timm.create_model(model_or_name, **kwargs)
    elif kwargs:
        raise TypeError(f"load_released: keyword arguments {sorted(kwargs)} only apply when a model name is given")
    else:
        model = model_or_name
    net = _unwrap(model)
    state_dict = read_state_dict(path)
    convert = convert_released if is_released_layout(state_dict) else (lambda sd, _m: dict(sd))
    with torch.no_grad():
        load_converted(net, state_dict, convert, source=str(path))
    return net
