"""timm-native model builders, model specs carried by checkpoints, and loading of foreign (released) checkpoints.

Every registered model of the method packages is built the way timm builds its own: an entrypoint decorated with
``timm.models.register_model`` calls :func:`build_timm_model`, which hands the class to timm's
``build_model_with_cfg``. So ``pretrained_cfg`` / ``default_cfg``, ``features_only`` + ``out_indices`` (a
``FeatureListNet`` from the model's ``feature_info``), ``pretrained=True`` with
``pretrained_cfg_overlay=dict(file=PATH)`` and a checkpoint filter all behave as for any timm model. What we add:

- **no silent keywords**: a keyword that is neither the model's nor timm's own is a TypeError naming it;
- **offline**: ``pretrained=True`` needs a local ``file`` (nothing is ever downloaded);
- **a model spec**: ``model.model_spec`` = ``{"name": <timm name>, "kwargs": {...}}``, the exact keywords that
  rebuild the architecture. Checkpoints store it (:func:`model_spec`) and :func:`create_from_spec` rebuilds that
  model, so a checkpoint can never be loaded into a model of another shape that happens to have the same keys.

Registering the pretrained cfgs: the module defining the entrypoints sets a module-level ``default_cfgs =
generate_default_cfgs({name: default_cfg(...)})`` *before* the ``@register_model`` functions (timm reads it at
registration).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Collection, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from dyncore.training.checkpoint import CheckpointError, load_checkpoint

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "TIMM_KWARGS",
    "build_timm_model",
    "check_fits",
    "create_from_spec",
    "default_cfg",
    "load_converted",
    "model_spec",
    "read_state_dict",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

#: Keywords timm itself consumes in ``create_model`` / ``build_model_with_cfg`` (never passed to the model class).
TIMM_KWARGS = frozenset(
    {
        "pretrained_cfg",
        "pretrained_cfg_overlay",
        "cache_dir",
        "features_only",
        "out_indices",
        "feature_cls",
        "feature_cfg",
        "flatten_sequential",
        "pretrained_strict",
        "pretrained_model_args",
    }
)
#: Keywords that place the built model (applied after construction, not recorded in the spec).
_PLACEMENT = ("device", "dtype")
#: Keywords of the spec that do not change the architecture's weights (recorded all the same: they rebuild it).
_SPEC_SKIP = frozenset({"pretrained", "pretrained_cfg", "pretrained_cfg_overlay", "cache_dir", "pretrained_strict"})


def default_cfg(
    *,
    num_classes: int = 1000,
    input_size: tuple[int, int, int] = (3, 224, 224),
    pool_size: tuple[int, int] | None = (7, 7),
    crop_pct: float = 0.875,
    interpolation: str = "bilinear",
    mean: tuple[float, ...] = IMAGENET_MEAN,
    std: tuple[float, ...] = IMAGENET_STD,
    first_conv: str = "",
    classifier: str | tuple[str, ...] = "",
    **extra: Any,
) -> dict[str, Any]:
    """A timm pretrained cfg (for ``timm.models.generate_default_cfgs``). ``url`` is empty: weights are never
    downloaded; they come from a local file (``pretrained_cfg_overlay=dict(file=PATH)``)."""
    return {
        "url": "",
        "num_classes": num_classes,
        "input_size": input_size,
        "pool_size": pool_size,
        "crop_pct": crop_pct,
        "interpolation": interpolation,
        "mean": mean,
        "std": std,
        "first_conv": first_conv,
        "classifier": classifier,
        **extra,
    }


def _check_kwargs(variant: str, kwargs: Mapping[str, Any], allowed: Collection[str]) -> None:
    unknown = sorted(k for k in kwargs if k not in allowed and k not in TIMM_KWARGS and k not in _PLACEMENT)
    if unknown:
        raise TypeError(
            f"{variant}: unsupported keyword argument(s) {unknown}; this model accepts {sorted(allowed)} and timm's "
            f"own {sorted(TIMM_KWARGS)}"
        )


def build_timm_model(
    model_cls: Callable[..., nn.Module],
    variant: str,
    pretrained: bool = False,
    *,
    model_kwargs_allowed: Collection[str],
    feature_cfg: dict[str, Any] | None = None,
    pretrained_filter_fn: Callable[[dict[str, Tensor], nn.Module], dict[str, Tensor]] | None = None,
    **kwargs: Any,
) -> nn.Module:
    """Build ``model_cls(**kwargs)`` through timm's ``build_model_with_cfg``, the way timm builds its own models.

    Args:
        model_cls: the model class (or a callable returning the model); receives the model keywords.
        variant: the registered timm name (its pretrained cfg is looked up by this name).
        pretrained: load weights from ``pretrained_cfg_overlay=dict(file=PATH)`` (a local file; never downloaded).
        model_kwargs_allowed: the keywords ``model_cls`` accepts; any other keyword (that timm does not consume
            itself) is a TypeError.
        feature_cfg: timm's feature-extraction cfg (e.g. ``dict(flatten_sequential=True)``).
        pretrained_filter_fn: ``fn(state_dict, model) -> state_dict`` renaming a foreign checkpoint's keys.
        **kwargs: model keywords and timm's own (``features_only``, ``out_indices``, ``pretrained_cfg_overlay`` ...).

    Returns:
        the model (a timm ``FeatureListNet`` when ``features_only=True``), with ``model_spec`` recorded.
    """
    from timm.models import build_model_with_cfg

    _check_kwargs(variant, kwargs, model_kwargs_allowed)
    placement = {k: kwargs.pop(k) for k in _PLACEMENT if k in kwargs}
    if pretrained:
        overlay = kwargs.get("pretrained_cfg_overlay") or {}
        cfg = kwargs.get("pretrained_cfg") or {}
        file = overlay.get("file") or (cfg.get("file") if isinstance(cfg, Mapping) else getattr(cfg, "file", None))
        if not file:
            raise ValueError(
                f"{variant}: pretrained=True but no weights file given; no weights are downloaded: pass "
                "pretrained_cfg_overlay=dict(file=PATH) with the authors' released checkpoint or your own"
            )
        if not Path(file).is_file():
            raise FileNotFoundError(f"{variant}: pretrained weights file {file} does not exist")
    spec_kwargs = {k: v for k, v in kwargs.items() if k not in _SPEC_SKIP and k not in TIMM_KWARGS}
    model = build_model_with_cfg(
        model_cls,
        variant,
        pretrained,
        feature_cfg=dict(feature_cfg or {}),
        pretrained_filter_fn=pretrained_filter_fn,
        **kwargs,
    )
    if placement:
        model.to(**placement)
    spec = {"name": variant, "kwargs": _jsonable_kwargs(variant, spec_kwargs)}
    for m in (model, getattr(model, "model", None)):
        if isinstance(m, nn.Module):
            object.__setattr__(m, "model_spec", spec)
    return model


def _jsonable_kwargs(variant: str, kwargs: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in kwargs.items():
        if isinstance(v, tuple):
            v = list(v)
        if v is not None and not isinstance(v, (bool, int, float, str, list, dict)):
            raise TypeError(f"{variant}: keyword {k}={v!r} cannot be recorded in the model spec (use plain values)")
        out[k] = v
    return out


def model_spec(model: nn.Module) -> dict[str, Any]:
    """The spec (``{"name", "kwargs"}``) that rebuilds ``model``'s architecture with :func:`create_from_spec`.

    Raises:
        ValueError: the model was not built by a registered entrypoint (no ``model_spec``).
    """
    inner = getattr(model, "module", model)  # DDP
    inner = getattr(inner, "_orig_mod", inner)  # torch.compile
    spec = getattr(inner, "model_spec", None)
    if not isinstance(spec, dict) or "name" not in spec:
        raise ValueError(
            f"model_spec: {type(inner).__name__} records no model spec; build it with timm.create_model(<name>, ...)"
        )
    return {"name": str(spec["name"]), "kwargs": dict(spec.get("kwargs", {}))}


def create_from_spec(spec: Mapping[str, Any], *, source: str = "model spec", **overrides: Any) -> nn.Module:
    """Rebuild the model a spec describes (``timm.create_model(spec["name"], **spec["kwargs"], **overrides)``).

    Raises:
        CheckpointError: the spec is malformed or names a model that is not registered (the message names
            ``source`` and which package to import).
    """
    import timm

    if (
        not isinstance(spec, Mapping)
        or not isinstance(spec.get("name"), str)
        or not isinstance(spec.get("kwargs", {}), Mapping)
    ):
        raise CheckpointError(f"{source}: malformed model spec {spec!r} (expected {{'name': str, 'kwargs': dict}})")
    name = spec["name"]
    if not timm.is_model(name):
        raise CheckpointError(
            f"{source}: model {name!r} is not registered with timm; import the package that defines it first"
        )
    kwargs = {**dict(spec.get("kwargs", {})), **overrides}
    try:
        return timm.create_model(name, **kwargs)
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"{source}: model spec {name} {kwargs} does not rebuild: {exc}") from exc


_STATE_KEYS = ("state_dict", "model", "state_dict_ema", "model_ema")


def read_state_dict(path: str | os.PathLike[str]) -> dict[str, Tensor]:
    """A checkpoint file's state dict: unwraps ``state_dict`` / ``model`` / ``state_dict_ema`` / ``model_ema`` and
    strips a uniform ``module.`` (DataParallel/DDP) prefix. Loaded with ``weights_only=True``.

    Raises:
        CheckpointError: the file does not exist, is not a checkpoint, or holds no tensors (names the file).
    """
    obj: Any = load_checkpoint(path)
    for key in _STATE_KEYS:
        if isinstance(obj, Mapping) and isinstance(obj.get(key), Mapping):
            obj = obj[key]
            break
    tensors = {k: v for k, v in obj.items() if isinstance(v, Tensor)} if isinstance(obj, Mapping) else {}
    if not tensors:
        raise CheckpointError(f"{path}: holds no state dict (no tensors under {list(_STATE_KEYS)} or at the top)")
    if all(k.startswith("module.") for k in tensors):
        tensors = {k[len("module.") :]: v for k, v in tensors.items()}
    return tensors


def check_fits(
    state_dict: Mapping[str, Tensor],
    model: nn.Module,
    *,
    source: str,
    may_be_missing: Callable[[str], bool] | None = None,
    model_name: str | None = None,
) -> None:
    """Raise CheckpointError unless ``state_dict`` has exactly ``model``'s keys and shapes (keys for which
    ``may_be_missing`` is true may be absent, e.g. a classifier timm re-initialises); the message lists the first 20
    unmatched keys of each side and names ``source``."""
    own = model.state_dict()
    missing = [k for k in own if k not in state_dict and not (may_be_missing is not None and may_be_missing(k))]
    unexpected = [k for k in state_dict if k not in own]
    shapes = [
        f"{k}: file {list(v.shape)} vs model {list(own[k].shape)}"
        for k, v in state_dict.items()
        if k in own and tuple(v.shape) != tuple(own[k].shape)
    ]
    if missing or unexpected or shapes:
        parts = [f"{source} does not fit {model_name or type(model).__name__}:"]
        if missing:
            parts.append(f"model keys with no match in the file ({len(missing)}): {missing[:20]}")
        if unexpected:
            parts.append(f"file keys with no match in the model ({len(unexpected)}): {unexpected[:20]}")
        if shapes:
            parts.append(f"shape mismatches ({len(shapes)}): {shapes[:20]}")
        raise CheckpointError("\n  ".join(parts))


def load_converted(
    model: nn.Module,
    state_dict: Mapping[str, Tensor],
    convert: Callable[[dict[str, Tensor], nn.Module], dict[str, Tensor]],
    *,
    source: str,
) -> nn.Module:
    """``convert(state_dict, model)`` into our names, then a strict load (shapes too); returns ``model``.

    Raises:
        CheckpointError: the converted keys or shapes do not fit the model; lists the first 20 unmatched keys of
            each side and names ``source``.
    """
    converted = convert(dict(state_dict), model)
    check_fits(converted, model, source=source)
    with torch.no_grad():
        model.load_state_dict(converted, strict=True)
    return model
