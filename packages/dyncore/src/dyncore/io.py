"""Atomic file and directory writes: the one implementation every package uses.

A write goes to a temporary file (or directory) beside the target — same filesystem, so the final ``os.replace`` is
atomic on POSIX and Windows — which is flushed and fsynced first. A crash or a SIGKILL mid-write therefore leaves
either the old target or the new one, never a torn file; what it can leave is the temporary, named
``.<target>.<random>.tmp``, which :func:`remove_stale_tmp` (called by ``dyncore.cli.RunDir``) clears on the next run.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

__all__ = [
    "TMP_SUFFIX",
    "atomic_directory",
    "atomic_torch_save",
    "atomic_write_bytes",
    "atomic_write_json",
    "atomic_write_text",
    "fsync_directory",
    "remove_stale_tmp",
]

#: Suffix of every temporary file or directory made here (and only here).
TMP_SUFFIX = ".tmp"


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def fsync_directory(directory: str | os.PathLike[str]) -> None:
    """Make a rename inside ``directory`` durable (best effort: not every platform/filesystem allows it)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _target(path: str | os.PathLike[str], what: str) -> Path:
    target = Path(path)
    if target.is_dir():
        raise IsADirectoryError(f"{what}: {target} is a directory, expected a file path")
    target.parent.mkdir(parents=True, exist_ok=True)
    return target


@contextlib.contextmanager
def _atomic_file(path: str | os.PathLike[str], what: str) -> Iterator[Any]:
    """Yield a binary file object; on success it replaces ``path`` atomically, on error it is removed."""
    target = _target(path, what)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=TMP_SUFFIX, dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600 files; give the usual permissions
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    fsync_directory(target.parent)


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (parents created); returns the path."""
    with _atomic_file(path, "atomic_write_bytes") as f:
        f.write(data)
    return Path(path)


def atomic_write_text(path: str | os.PathLike[str], text: str, *, encoding: str = "utf-8") -> Path:
    """Write ``text`` to ``path`` atomically (parents created); returns the path."""
    with _atomic_file(path, "atomic_write_text") as f:
        f.write(text.encode(encoding))
    return Path(path)


def atomic_write_json(path: str | os.PathLike[str], obj: Any, *, indent: int = 2, sort_keys: bool = False) -> Path:
    """Write ``obj`` as JSON (NaN/inf refused: they are not JSON) to ``path`` atomically; returns the path."""
    text = json.dumps(obj, indent=indent, sort_keys=sort_keys, allow_nan=False, default=str)
    return atomic_write_text(path, text + "\n")


def atomic_torch_save(path: str | os.PathLike[str], obj: Any) -> Path:
    """``torch.save(obj)`` to ``path`` atomically; returns the path."""
    import torch

    with _atomic_file(path, "atomic_torch_save") as f:
        torch.save(obj, f)
    return Path(path)


@contextlib.contextmanager
def atomic_directory(path: str | os.PathLike[str], *, overwrite: bool = True) -> Iterator[Path]:
    """Yield a temporary directory beside ``path``; when the block succeeds it becomes ``path``.

    An existing ``path`` is replaced (``overwrite=True``) or refused with FileExistsError. On error the temporary
    directory is removed and ``path`` is untouched. Replacing an existing directory is two renames (old aside, new in);
    a crash between them leaves the old one under a ``.tmp`` name, which :func:`remove_stale_tmp` clears.
    """
    target = Path(path)
    if target.exists() and not overwrite:
        raise FileExistsError(f"atomic_directory: {target} exists (overwrite=False)")
    if target.exists() and not target.is_dir():
        raise NotADirectoryError(f"atomic_directory: {target} exists and is not a directory")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=TMP_SUFFIX, dir=target.parent))
    try:
        yield tmp
        if target.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{target.name}.old.", suffix=TMP_SUFFIX, dir=target.parent))
            os.replace(target, old / target.name)
            os.replace(tmp, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    fsync_directory(target.parent)


def remove_stale_tmp(directory: str | os.PathLike[str], *, recursive: bool = True) -> list[Path]:
    """Remove the temporaries of interrupted atomic writes (``.<name>.<random>.tmp`` files and directories) under
    ``directory``; returns what was removed. Only names made by this module match: a hidden name ending in ``.tmp``."""
    root = Path(directory)
    if not root.is_dir():
        return []
    found = root.rglob(f".*{TMP_SUFFIX}") if recursive else root.glob(f".*{TMP_SUFFIX}")
    removed: list[Path] = []
    for p in sorted(found, key=lambda q: len(q.parts)):
        if any(parent in removed for parent in p.parents):
            continue
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p, ignore_errors=True)
        else:
            with contextlib.suppress(FileNotFoundError):
                p.unlink()
        removed.append(p)
    return removed
