"""Run logs: JSON-lines metrics, a stdlib logger that tees to a file, and tqdm progress bars."""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import sys
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any, TypeVar

import torch
from tqdm.auto import tqdm

__all__ = ["JSONLLogger", "get_logger", "progress", "progress_enabled"]

T = TypeVar("T")
_HANDLER_TAG = "_dyncore_handler"


def _jsonable(value: Any, key: str) -> Any:
    if isinstance(value, torch.Tensor):
        if value.numel() != 1:
            return [_jsonable(v, key) for v in value.detach().cpu().reshape(-1).tolist()]
        value = value.detach().cpu().item()
    if hasattr(value, "item") and callable(value.item) and not isinstance(value, (list, tuple, dict, str)):
        with contextlib.suppress(TypeError, ValueError):
            value = value.item()  # numpy scalars
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None  # strict JSON has no NaN/inf
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, dict):
        return {str(k): _jsonable(v, f"{key}.{k}") for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v, key) for v in value]
    raise TypeError(
        f"JSONLLogger.log: value for {key!r} has type {type(value).__name__}, which is not JSON-serialisable"
    )


class JSONLLogger:
    """Appends one JSON object per :meth:`log` call to ``path`` (JSON lines; parent directories created).

    Every record carries ``step`` (given, or the number of earlier records from this logger) and ``time`` (Unix
    seconds). Tensors/NumPy scalars become numbers; NaN/inf become ``null`` (strict JSON). ``enabled=False`` (e.g.
    ``enabled=env.is_main``) makes it a no-op on non-main processes.
    """

    def __init__(self, path: str | os.PathLike[str], *, enabled: bool = True) -> None:
        self.path = Path(path)
        self.enabled = enabled
        self._count = 0
        if enabled:
            self.path.parent.mkdir(parents=True, exist_ok=True)

    def log(self, step: int | None = None, **metrics: Any) -> dict[str, Any]:
        """Append ``{"step", "time", **metrics}`` as one line; returns the record written."""
        record: dict[str, Any] = {"step": self._count if step is None else int(step), "time": round(time.time(), 3)}
        for k, v in metrics.items():
            record[k] = _jsonable(v, k)
        self._count += 1
        if self.enabled:
            with self.path.open("a", encoding="utf-8") as f:
                f.write(json.dumps(record, allow_nan=False) + "\n")
                f.flush()
        return record

    def resume(self, step: int) -> int:
        """Continue a run resumed at ``step``: drop the records with a step ≥ ``step`` (written after the checkpoint
        the run resumes from, so they will be logged again) by an atomic rewrite, and continue the default step
        count after the records kept. Returns how many records were dropped. A missing file is fine (none kept)."""
        kept: list[dict[str, Any]] = []
        dropped = 0
        if self.path.exists():
            for record in self.read(self.path):
                if int(record.get("step", -1)) < step:
                    kept.append(record)
                else:
                    dropped += 1
            if self.enabled and dropped:
                from dyncore.io import atomic_write_text

                atomic_write_text(self.path, "".join(json.dumps(r, allow_nan=False) + "\n" for r in kept))
        self._count = len(kept)
        return dropped

    @staticmethod
    def read(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
        """All records of a JSONL file (raises ValueError naming the file and line for a malformed line)."""
        records = []
        with Path(path).open(encoding="utf-8") as f:
            for lineno, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    records.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise ValueError(f"{path}:{lineno}: malformed JSON line ({e.msg})") from None
        return records


def get_logger(name: str, file: str | os.PathLike[str] | None = None, *, level: int = logging.INFO) -> logging.Logger:
    """A stdlib logger writing ``time name level: message`` to stdout and, if ``file`` is given, to that file too.

    Calling it again for the same ``name`` replaces the handlers it added before (no duplicated lines).
    """
    logger = logging.getLogger(name)
    logger.setLevel(level)
    logger.propagate = False
    for h in list(logger.handlers):
        if getattr(h, _HANDLER_TAG, False):
            logger.removeHandler(h)
            h.close()
    fmt = logging.Formatter("%(asctime)s %(name)s %(levelname)s: %(message)s", datefmt="%Y-%m-%d %H:%M:%S")
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stdout)]
    if file is not None:
        Path(file).parent.mkdir(parents=True, exist_ok=True)
        handlers.append(logging.FileHandler(file, encoding="utf-8"))
    for h in handlers:
        h.setFormatter(fmt)
        setattr(h, _HANDLER_TAG, True)
        logger.addHandler(h)
    return logger


def progress_enabled() -> bool:
    """False when ``DYNCORE_NO_PROGRESS=1`` or on a non-main torchrun process (``RANK`` ≠ 0)."""
    if os.environ.get("DYNCORE_NO_PROGRESS", "").strip() not in ("", "0"):
        return False
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank() == 0
    return os.environ.get("RANK", "0") in ("", "0")


def progress(iterable: Iterable[T], **kw: Any) -> tqdm:
    """``tqdm(iterable, **kw)``, disabled off the main process or when the env var ``DYNCORE_NO_PROGRESS=1``.

    An explicit ``disable=True`` in ``kw`` also disables it. Returns the tqdm object (iterate it; ``set_postfix``).
    """
    disable = bool(kw.pop("disable", False)) or not progress_enabled()
    return tqdm(iterable, disable=disable, **kw)
