"""The authors' released DCD checkpoints (MobileNetV2 ×1.0/×0.5/×0.35, ResNet-18/50): renaming and loading.

A released file is a dict, often ``{"state_dict": ...}`` or ``{"model": ...}``, with keys usually prefixed
``module.``. Only the names differ from ours (``shared/spec/released-checkpoints.md``):

* a DCD layer: ``conv.weight``/``cls.weight`` → ``weight``, ``cls.bias`` → ``bias``, ``conv_q``/``q``/``cls_q`` →
  ``q``, ``conv_p``/``p``/``cls_p`` → ``p``, ``fc.0`` → ``branch.fc``, ``fc.1.fc.0`` → ``branch.gate``, ``fc_phi`` →
  ``branch.heads.phi``, ``fc_scale`` → ``branch.heads.scale``, ``bn1``/``bn2`` → ``bn_q``/``bn_phi``; the three
  ``cls*`` Linear weights (O, I) become (O, I, 1, 1);
* MobileNetV2: ``features.0.{0,1}`` → ``features.0.{conv,bn}``, ``features.i.conv.k`` →
  ``features.i.conv.{k//3}.{conv|bn}``, ``conv.{0,1}`` → ``features.18.{conv,bn}``;
* ResNet: ``conv1``/``bn1`` → ``stem.0.{conv,bn}``, ``layerS.B.conv{n}`` → ``layerS.B.conv{n}.conv``,
  ``layerS.B.bn{n}`` → ``layerS.B.conv{n}.bn``, ``layerS.B.downsample.{0,1}`` → ``layerS.B.shortcut.{conv,bn}``;
* the classifier ``classifier.0.*`` (built without dropout) or ``classifier.1.*`` (``classifier.0`` = Dropout) →
  ``classifier.*`` (MobileNetV2) / ``fc.*`` (ResNet).

Two routes, the same renaming: :func:`load_released` and timm's own
``timm.create_model(name, pretrained=True, pretrained_cfg_overlay=dict(file=PATH))`` (the registry's
``pretrained_filter_fn`` is :func:`filter_released`).
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from typing import Any

from torch import Tensor, nn

from dyncore.models import load_converted, read_state_dict
from dyncore.training import CheckpointError

__all__ = ["filter_released", "load_released", "rename_released"]

_LAYER = {
    "conv.weight": "weight",
    "cls.weight": "weight",
    "cls.bias": "bias",
    "conv_q.weight": "q",
    "q.weight": "q",
    "cls_q.weight": "q",
    "conv_p.weight": "p",
    "p.weight": "p",
    "cls_p.weight": "p",
    "fc.0.weight": "branch.fc.weight",
    "fc.1.fc.0.weight": "branch.gate.weight",
    "fc_phi.weight": "branch.heads.phi.weight",
    "fc_scale.weight": "branch.heads.scale.weight",
    "weight": "weight",  # a static conv inside a DCD model (MobileNetV2's depthwise and t = 1 convs)
}
_CLS_LINEAR = ("cls.weight", "cls_q.weight", "cls_p.weight")


def _layer(rest: str) -> str:
    """A name inside one conv-like layer, released → ours (the layer rule)."""
    if rest in _LAYER:
        return _LAYER[rest]
    for released, ours in (("bn1.", "bn_q."), ("bn2.", "bn_phi.")):
        if rest.startswith(released):
            return ours + rest[len(released) :]
    raise KeyError(rest)


def _mobilenetv2(key: str) -> str:
    if m := re.fullmatch(r"features\.0\.([01])\.(.+)", key):
        return f"features.0.{'conv' if m[1] == '0' else 'bn'}.{m[2]}"
    if m := re.fullmatch(r"features\.(\d+)\.conv\.(\d+)\.(.+)", key):
        k = int(m[2])
        if k % 3 == 0:
            return f"features.{m[1]}.conv.{k // 3}.conv.{_layer(m[3])}"
        if k % 3 == 1:
            return f"features.{m[1]}.conv.{k // 3}.bn.{m[3]}"
    if m := re.fullmatch(r"conv\.([01])\.(.+)", key):
        return f"features.18.{'conv' if m[1] == '0' else 'bn'}.{m[2]}"
    if m := re.fullmatch(r"classifier\.[01]\.(.+)", key):
        return f"classifier.{_layer(m[1])}"
    raise KeyError(key)


def _resnet(key: str) -> str:
    if key == "conv1.weight":
        return "stem.0.conv.weight"
    if m := re.fullmatch(r"bn1\.(.+)", key):
        return f"stem.0.bn.{m[1]}"
    if m := re.fullmatch(r"(layer\d+\.\d+)\.conv(\d)\.(.+)", key):
        return f"{m[1]}.conv{m[2]}.conv.{_layer(m[3])}"
    if m := re.fullmatch(r"(layer\d+\.\d+)\.bn(\d)\.(.+)", key):
        return f"{m[1]}.conv{m[2]}.bn.{m[3]}"
    if m := re.fullmatch(r"(layer\d+\.\d+)\.downsample\.([01])\.(.+)", key):
        return f"{m[1]}.shortcut.{'conv' if m[2] == '0' else 'bn'}.{m[3]}"
    if m := re.fullmatch(r"classifier\.[01]\.(.+)", key):
        return f"fc.{_layer(m[1])}"
    raise KeyError(key)


def _family(model: nn.Module) -> str:
    from dcd.models import MobileNetV2, ResNet

    if isinstance(model, MobileNetV2):
        return "mobilenetv2"
    if isinstance(model, ResNet):
        return "resnet"
    raise TypeError(f"released DCD checkpoints exist for MobileNetV2 and ResNet models, not {type(model).__name__}")


def _unwrap(state: Mapping[str, Any]) -> dict[str, Tensor]:
    """Unwrap ``state_dict``/``model`` and strip ``module.`` (timm's route hands over the raw file content)."""
    for key in ("state_dict", "model"):
        if isinstance(state.get(key), Mapping):
            state = state[key]
            break
    out = {k: v for k, v in state.items() if isinstance(v, Tensor)}
    if out and all(k.startswith("module.") for k in out):
        out = {k[len("module.") :]: v for k, v in out.items()}
    return out


def rename_released(state_dict: Mapping[str, Any], model: nn.Module) -> dict[str, Tensor]:
    """Released names → ours for ``model``'s family (keys that fit no rule are kept, so a strict load names them).

    The classifier's three Linear weights (O, I) are reshaped to our 1×1-conv layout (O, I, 1, 1)."""
    rule = _mobilenetv2 if _family(model) == "mobilenetv2" else _resnet
    out: dict[str, Tensor] = {}
    for key, value in _unwrap(state_dict).items():
        try:
            new = rule(key)
        except KeyError:
            out[key] = value  # unmatched: reported by the strict load
            continue
        cls_linear = re.fullmatch(r"classifier\.[01]\.(" + "|".join(re.escape(k) for k in _CLS_LINEAR) + ")", key)
        if cls_linear and value.dim() == 2:
            value = value[:, :, None, None]
        out[new] = value
    return out


def filter_released(state_dict: dict[str, Any], model: nn.Module) -> dict[str, Tensor]:
    """timm ``pretrained_filter_fn``: rename, and raise :class:`CheckpointError` naming the unmatched keys (timm's
    own strict load would only print torch's generic message). A file already in our names passes unchanged."""
    renamed = rename_released(state_dict, model)
    own = model.state_dict()
    plain = _unwrap(state_dict)
    if set(plain) == set(own):  # already ours (e.g. a `dcd train` checkpoint)
        return plain
    missing = [k for k in own if k not in renamed]
    unexpected = [k for k in renamed if k not in own]
    if missing or unexpected:
        raise CheckpointError(
            f"the checkpoint fits neither released DCD layout (classifier.0.* / classifier.1.*) of "
            f"{type(model).__name__}: file keys with no match ({len(unexpected)}): {unexpected[:20]}; model keys "
            f"with no match ({len(missing)}): {missing[:20]}"
        )
    return renamed


def load_released(model: nn.Module | str, path: str | os.PathLike[str], **kwargs: Any) -> nn.Module:
    """Load the authors' released checkpoint ``path`` into ``model`` (or a model name: built by timm with ``kwargs``).

    Returns the model. Raises :class:`dyncore.training.CheckpointError` naming the file and the unmatched keys when
    the file fits neither layout (or is not a checkpoint)."""
    if isinstance(model, str):
        import timm

        model = timm.create_model(model, **kwargs)
    elif kwargs:
        raise TypeError(f"load_released: keyword arguments {sorted(kwargs)} only apply when a model name is given")
    state = read_state_dict(path)
    return load_converted(model, state, rename_released, source=str(path))
