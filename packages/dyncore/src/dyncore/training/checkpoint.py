"""Atomic checkpoints and exact resume.

``save_checkpoint`` never leaves a half-written file at ``path``: it writes a temporary file in the same directory,
flushes and fsyncs it, then ``os.replace``-s it over ``path`` (atomic on POSIX and Windows). A crash mid-write loses
at most the new checkpoint, never the previous one.

:class:`Checkpointer` stores everything a run needs to continue bit-identically: model, optimizer, LR scheduler,
GradScaler, every global RNG (Python, NumPy, torch CPU/CUDA), the step, caller extras (e.g. the data loader position
from :meth:`InfiniteLoader.state_dict`) and a fingerprint of the run config, so resuming into a different config
fails loudly (:class:`ConfigMismatchError`) instead of silently training something else.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import pickle
import zipfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn

from dyncore.io import atomic_torch_save
from dyncore.training.distributed import DistEnv, barrier, unwrap
from dyncore.training.seed import get_rng_state, set_rng_state

__all__ = [
    "CheckpointError",
    "CheckpointNotFoundError",
    "Checkpointer",
    "ConfigMismatchError",
    "IncompatibleCheckpointError",
    "config_fingerprint",
    "load_checkpoint",
    "load_state_dict_strict",
    "save_checkpoint",
]

_FORMAT = "dyncore.checkpoint"
_FORMAT_VERSION = 1
_WRAPPER_PREFIXES = ("module.", "_orig_mod.")


class CheckpointError(RuntimeError):
    """A checkpoint file cannot be used (missing, truncated, corrupt, not a checkpoint, or incompatible)."""


class CheckpointNotFoundError(CheckpointError, FileNotFoundError):
    """The checkpoint file does not exist."""


class IncompatibleCheckpointError(CheckpointError):
    """A state dict does not fit the model. ``missing``/``unexpected`` keys, ``mismatched`` {key: (ckpt, model)}."""

    def __init__(
        self,
        message: str,
        *,
        missing: list[str],
        unexpected: list[str],
        mismatched: dict[str, tuple[tuple[int, ...], tuple[int, ...]]],
    ) -> None:
        super().__init__(message)
        self.missing = missing
        self.unexpected = unexpected
        self.mismatched = mismatched


class ConfigMismatchError(CheckpointError):
    """Resuming into a config that differs from the checkpoint's. ``differences`` maps dotted key → (saved, current)."""

    def __init__(self, message: str, *, differences: dict[str, tuple[Any, Any]]) -> None:
        super().__init__(message)
        self.differences = differences


class _Stateful(Protocol):
    def state_dict(self) -> Any: ...

    def load_state_dict(self, state_dict: Any, /) -> Any: ...


# --------------------------------------------------------------------------------------------------------------------
# Files
# --------------------------------------------------------------------------------------------------------------------
def save_checkpoint(path: str | os.PathLike[str], state: Mapping[str, Any]) -> Path:
    """Write ``state`` (a dict) to ``path`` atomically (temp file in the same directory → fsync → ``os.replace``).

    Parent directories are created. Returns the path. On any error the temporary file is removed and an existing
    file at ``path`` is left untouched.
    """
    if not isinstance(state, Mapping):
        raise TypeError(f"save_checkpoint: `state` must be a dict, got {type(state).__name__}")
    if Path(path).is_dir():
        raise IsADirectoryError(f"save_checkpoint: {path} is a directory, expected a file path")
    return atomic_torch_save(path, dict(state))


def load_checkpoint(
    path: str | os.PathLike[str], *, map_location: str | torch.device | None = "cpu", weights_only: bool = True
) -> dict[str, Any]:
    """Load a checkpoint dict written by :func:`save_checkpoint` (or any ``torch.save``-d dict).

    Loads onto ``map_location`` (CPU by default) with ``weights_only=True`` (no arbitrary code execution); pass
    ``weights_only=False`` only for trusted files holding custom Python objects.

    Raises:
        CheckpointNotFoundError: ``path`` does not exist.
        CheckpointError: ``path`` is truncated, corrupt, not a torch checkpoint, or does not hold a dict. The message
            names the file.
    """
    p = Path(path)
    if not p.exists():
        raise CheckpointNotFoundError(f"checkpoint file {p} does not exist")
    if p.is_dir():
        raise CheckpointError(f"checkpoint path {p} is a directory, expected a file")
    size = p.stat().st_size
    if size == 0:
        raise CheckpointError(f"checkpoint file {p} is empty (0 bytes): an interrupted copy or write?")
    if not _looks_like_torch_file(p):
        raise CheckpointError(
            f"checkpoint file {p} ({size} bytes) is not a checkpoint: truncated, corrupt or not a torch checkpoint "
            "(neither a complete torch.save zip archive nor a legacy torch pickle)"
        )
    try:
        obj = torch.load(p, map_location=map_location, weights_only=weights_only)
    except pickle.UnpicklingError as e:
        if weights_only and "weights_only" in str(e) and zipfile.is_zipfile(p):
            raise CheckpointError(
                f"checkpoint file {p} contains Python objects that weights_only loading refuses; if you trust "
                f"the file, call load_checkpoint(..., weights_only=False). Details: {_first_line(e)}"
            ) from e
        raise CheckpointError(
            f"checkpoint file {p} ({size} bytes) is corrupt or not a torch checkpoint: {_first_line(e)}"
        ) from e
    except Exception as e:  # garbage bytes can fail anywhere inside the unpickler (IndexError, KeyError, ...)
        raise CheckpointError(
            f"checkpoint file {p} ({size} bytes) is truncated, corrupt or not a torch checkpoint: {_first_line(e)}"
        ) from e
    if not isinstance(obj, dict):
        raise CheckpointError(f"checkpoint file {p} holds a {type(obj).__name__}, not a checkpoint dict")
    return obj


def _looks_like_torch_file(p: Path) -> bool:
    """A ``torch.save`` file: a zip archive (the default since torch 1.6) or a legacy pickle (protocol ≥ 2 header)."""
    if zipfile.is_zipfile(p):
        return True
    with p.open("rb") as f:
        head = f.read(2)
    return len(head) == 2 and head[0] == 0x80 and 2 <= head[1] <= 5


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0] if text else ''}"


# --------------------------------------------------------------------------------------------------------------------
# State dicts
# --------------------------------------------------------------------------------------------------------------------
def _strip_wrapper_prefix(state_dict: Mapping[str, Any], model_keys: set[str]) -> Mapping[str, Any]:
    keys = list(state_dict)
    for prefix in _WRAPPER_PREFIXES:
        if keys and all(k.startswith(prefix) for k in keys) and not any(k.startswith(prefix) for k in model_keys):
            return {k[len(prefix) :]: v for k, v in state_dict.items()}
    return state_dict


def load_state_dict_strict(model: nn.Module, state_dict: Mapping[str, Any]) -> None:
    """Load ``state_dict`` into ``model`` (unwrapped), requiring identical keys and shapes.

    A uniform ``module.`` (DDP) or ``_orig_mod.`` (torch.compile) prefix on every key is stripped first.

    Raises:
        IncompatibleCheckpointError: listing every missing key, unexpected key and shape mismatch at once.
    """
    if not isinstance(state_dict, Mapping):
        raise TypeError(f"load_state_dict_strict: `state_dict` must be a dict, got {type(state_dict).__name__}")
    target = unwrap(model)
    own = target.state_dict()
    state_dict = _strip_wrapper_prefix(state_dict, set(own))
    missing = [k for k in own if k not in state_dict]
    unexpected = [k for k in state_dict if k not in own]
    mismatched: dict[str, tuple[tuple[int, ...], tuple[int, ...]]] = {}
    for k, v in state_dict.items():
        if k in own and isinstance(v, torch.Tensor) and tuple(v.shape) != tuple(own[k].shape):
            mismatched[k] = (tuple(v.shape), tuple(own[k].shape))
    if missing or unexpected or mismatched:
        parts = [f"checkpoint does not fit {type(target).__name__}:"]
        if missing:
            parts.append(f"missing keys ({len(missing)}): {_preview(missing)}")
        if unexpected:
            parts.append(f"unexpected keys ({len(unexpected)}): {_preview(unexpected)}")
        if mismatched:
            shown = [f"{k}: checkpoint {list(a)} vs model {list(b)}" for k, (a, b) in mismatched.items()]
            parts.append(f"shape mismatches ({len(mismatched)}): {_preview(shown)}")
        raise IncompatibleCheckpointError(
            "\n  ".join(parts), missing=missing, unexpected=unexpected, mismatched=mismatched
        )
    target.load_state_dict(state_dict, strict=True)


def _preview(items: list[str], limit: int = 20) -> str:
    shown = ", ".join(items[:limit])
    return shown + (f", ... (+{len(items) - limit} more)" if len(items) > limit else "")


# --------------------------------------------------------------------------------------------------------------------
# Config fingerprint
# --------------------------------------------------------------------------------------------------------------------
def _canonical(value: Any, where: str) -> Any:
    """A JSON-able, order-independent form of a config value (tuples → lists, paths → str, dataclasses → dict)."""
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else repr(value)
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, Mapping):
        return {str(k): _canonical(v, f"{where}.{k}" if where else str(k)) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_canonical(v, f"{where}[{i}]") for i, v in enumerate(value)]
    if hasattr(value, "__dataclass_fields__"):
        from dataclasses import asdict

        return _canonical(asdict(value), where)
    if isinstance(value, torch.device | torch.dtype):
        return str(value)
    raise TypeError(
        f"Checkpointer: config value at {where!r} has type {type(value).__name__}, which is not JSON-like "
        "(use numbers, strings, bools, None, lists, dicts, paths or dataclasses)"
    )


def config_fingerprint(config: Mapping[str, Any]) -> str:
    """SHA-256 of the canonical JSON of ``config`` (key order does not matter; tuples equal lists)."""
    text = json.dumps(_canonical(dict(config), ""), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def _flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, dict) and value:
        out: dict[str, Any] = {}
        for k, v in value.items():
            out.update(_flatten(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    return {prefix: value}


def _config_differences(saved: Mapping[str, Any], current: Mapping[str, Any]) -> dict[str, tuple[Any, Any]]:
    a, b = _flatten(dict(saved)), _flatten(dict(current))
    missing = object()
    diffs: dict[str, tuple[Any, Any]] = {}
    for k in sorted(set(a) | set(b)):
        va, vb = a.get(k, missing), b.get(k, missing)
        if va != vb:
            diffs[k] = (
                "<absent>" if va is missing else va,
                "<absent>" if vb is missing else vb,
            )
    return diffs


# --------------------------------------------------------------------------------------------------------------------
# Checkpointer
# --------------------------------------------------------------------------------------------------------------------
class Checkpointer:
    """Saves and resumes a whole training run in ``directory``.

    Args:
        directory: where checkpoint files live (created on first save).
        config: the run's resolved config (JSON-like dict). Its canonical form and fingerprint are stored; resuming
            with a config that differs (outside ``ignore``) raises :class:`ConfigMismatchError`.
        ignore: top-level or dotted config keys that may change between save and resume (e.g. ``"epochs"`` when
            extending a run, output paths).
        env: distributed environment; only the main process writes, and every process waits for the write.

    Example::

        ckpt = Checkpointer(run.path / "checkpoints", cfg)
        resumed = ckpt.resume(model=model, optimizer=opt, scheduler=sched, scaler=scaler)
        start = 0 if resumed is None else resumed["step"]
        if resumed: loader.load_state_dict(resumed["extra"]["loader"])
        for step in range(start, total): ...; ckpt.save(step + 1, model=model, optimizer=opt, ...,
                                                        extra={"loader": loader.state_dict()})
    """

    def __init__(
        self,
        directory: str | os.PathLike[str],
        config: Mapping[str, Any],
        *,
        ignore: Iterable[str] = (),
        env: DistEnv | None = None,
    ) -> None:
        if not isinstance(config, Mapping):
            raise TypeError(f"Checkpointer: `config` must be a dict, got {type(config).__name__}")
        self.directory = Path(directory)
        if self.directory.exists() and not self.directory.is_dir():
            raise NotADirectoryError(f"Checkpointer: `directory` {self.directory} exists and is not a directory")
        self.ignore = tuple(ignore)
        self.env = env or DistEnv()
        self.config: dict[str, Any] = _canonical(dict(config), "")
        self.fingerprint = config_fingerprint(self._compared(self.config))

    def _compared(self, config: Mapping[str, Any]) -> dict[str, Any]:
        flat = _flatten(dict(config))
        kept = {k: v for k, v in flat.items() if not any(k == i or k.startswith(i + ".") for i in self.ignore)}
        return kept

    def path(self, name: str = "last.pt") -> Path:
        """Path of the checkpoint file ``name`` inside the directory."""
        if not name or Path(name).name != name:
            raise ValueError(f"Checkpointer: `name` must be a plain file name, got {name!r}")
        return self.directory / name

    def exists(self, name: str = "last.pt") -> bool:
        """Whether the checkpoint ``name`` has been written."""
        return self.path(name).is_file()

    def save(
        self,
        step: int,
        *,
        model: nn.Module,
        optimizer: torch.optim.Optimizer | None = None,
        scheduler: _Stateful | None = None,
        scaler: torch.amp.GradScaler | None = None,
        extra: Mapping[str, Any] | None = None,
        name: str = "last.pt",
    ) -> Path:
        """Atomically write model/optimizer/scheduler/scaler/RNG/step/extra/config to ``directory/name``.

        ``step`` is the number of completed optimisation steps (training continues at ``step``). ``extra`` must hold
        weights-only-loadable values (tensors, numbers, strings, lists, dicts), e.g. ``loader.state_dict()``.
        """
        if isinstance(step, bool) or not isinstance(step, int) or step < 0:
            raise ValueError(f"Checkpointer.save: `step` must be a non-negative int, got {step!r}")
        path = self.path(name)
        if self.env.is_main:
            state: dict[str, Any] = {
                "format": _FORMAT,
                "format_version": _FORMAT_VERSION,
                "step": step,
                "model": unwrap(model).state_dict(),
                "optimizer": optimizer.state_dict() if optimizer is not None else None,
                "scheduler": scheduler.state_dict() if scheduler is not None else None,
                "scaler": scaler.state_dict() if scaler is not None else None,
                "rng": get_rng_state(),
                "config": self.config,
                "config_fingerprint": self.fingerprint,
                "extra": dict(extra) if extra is not None else {},
            }
            save_checkpoint(path, state)
        barrier(self.env)
        return path

    def load(self, name: str = "last.pt") -> dict[str, Any]:
        """Load and validate ``directory/name`` without restoring anything (raises :class:`CheckpointError`)."""
        path = self.path(name)
        ckpt = load_checkpoint(path)
        missing = [k for k in ("format", "step", "model", "rng", "config", "config_fingerprint") if k not in ckpt]
        if missing or ckpt.get("format") != _FORMAT:
            raise CheckpointError(
                f"checkpoint file {path} was not written by dyncore.training.Checkpointer (missing keys {missing})"
            )
        if ckpt["format_version"] > _FORMAT_VERSION:
            raise CheckpointError(
                f"checkpoint file {path} has format version {ckpt['format_version']}, newer than this dyncore "
                f"({_FORMAT_VERSION}); upgrade dyncore"
            )
        return ckpt

    def resume(
        self,
        *,
        model: nn.Module,
        optimizer: torch.optim.Optimizer | None = None,
        scheduler: _Stateful | None = None,
        scaler: torch.amp.GradScaler | None = None,
        name: str = "last.pt",
    ) -> dict[str, Any] | None:
        """Restore a run from ``directory/name``; ``None`` when that file does not exist (a fresh run).

        Restores model (strictly), optimizer, scheduler, scaler and every global RNG. Returns
        ``{"step", "extra", "config", "path"}``.

        Raises:
            ConfigMismatchError: the saved config differs from this Checkpointer's (names the differing keys).
            IncompatibleCheckpointError: the model does not fit the saved weights.
            CheckpointError: the file is corrupt, or a component is missing from it (e.g. an optimizer was passed
                but none was saved).
        """
        path = self.path(name)
        if not path.exists():
            return None
        ckpt = self.load(name)
        if config_fingerprint(self._compared(ckpt["config"])) != self.fingerprint:
            diffs = _config_differences(self._compared(ckpt["config"]), self._compared(self.config))
            shown = "; ".join(f"{k}: saved {a!r} vs current {b!r}" for k, (a, b) in diffs.items())
            raise ConfigMismatchError(
                f"cannot resume from {path}: the config differs in key(s) {sorted(diffs)} ({shown}). Use a new output "
                "directory, or list keys that may change in Checkpointer(..., ignore=[...])",
                differences=diffs,
            )
        components: dict[str, _Stateful | None] = {"optimizer": optimizer, "scheduler": scheduler, "scaler": scaler}
        for key, obj in components.items():
            if obj is not None and ckpt.get(key) is None:
                raise CheckpointError(
                    f"cannot resume from {path}: `{key}` was passed but the checkpoint holds no {key} state"
                )
        try:
            load_state_dict_strict(model, ckpt["model"])
        except IncompatibleCheckpointError as e:
            raise IncompatibleCheckpointError(
                f"cannot resume from {path}: {e}", missing=e.missing, unexpected=e.unexpected, mismatched=e.mismatched
            ) from None
        for key, obj in components.items():
            if obj is not None:
                try:
                    obj.load_state_dict(ckpt[key])
                except (ValueError, KeyError, RuntimeError) as e:
                    raise CheckpointError(
                        f"cannot resume from {path}: the saved {key} state does not fit the "
                        f"{type(obj).__name__} passed ({e})"
                    ) from e
        set_rng_state(ckpt["rng"])
        return {"step": int(ckpt["step"]), "extra": ckpt.get("extra") or {}, "config": ckpt["config"], "path": path}
