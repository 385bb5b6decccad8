"""On-disk cache of generated datasets: ``.npz`` files with a content hash and a generator version.

A cached file holds the generated arrays plus a ``__meta__`` entry (JSON) with the generator ``VERSION`` and the
sha256 of the arrays. On load both are checked; a truncated/corrupt file, a hash mismatch or another version is
reported with a warning and rebuilt. Files are written atomically (temporary file in the same folder, then
``os.replace``), so concurrent processes never observe a half-written cache.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import warnings
import zipfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["CACHE_ENV", "VERSION", "CacheWarning", "cache_dir", "cache_path", "content_hash", "load_or_build"]

#: Bump when any generator changes its output: every older cache file is then stale and rebuilt.
VERSION = 1
#: Environment variable naming the cache directory (default ``~/.cache/dyncore``).
CACHE_ENV = "DYNCORE_CACHE"
_META = "__meta__"

Arrays = dict[str, np.ndarray]


class CacheWarning(UserWarning):
    """A cache file was corrupt or stale and is being rebuilt."""


class _InvalidCache(Exception):
    pass


def cache_dir(root: str | os.PathLike[str] | None = None) -> Path:
    """The cache directory: ``root`` if given, else ``$DYNCORE_CACHE``, else ``~/.cache/dyncore``."""
    if root is not None:
        return Path(root)
    env = os.environ.get(CACHE_ENV)
    return Path(env) if env else Path.home() / ".cache" / "dyncore"


def content_hash(arrays: Mapping[str, np.ndarray]) -> str:
    """sha256 over names, dtypes, shapes and bytes of ``arrays`` (sorted by name)."""
    h = hashlib.sha256()
    for key in sorted(arrays):
        a = np.ascontiguousarray(arrays[key])
        h.update(key.encode())
        h.update(str(a.dtype).encode())
        h.update(str(a.shape).encode())
        h.update(a.tobytes())
    return h.hexdigest()


def cache_path(name: str, params: Mapping[str, Any], root: str | os.PathLike[str] | None = None) -> Path:
    """Path of the cache file for dataset ``name`` generated with ``params`` (JSON-serialisable)."""
    key = hashlib.sha256(json.dumps({"name": name, **params}, sort_keys=True).encode()).hexdigest()[:16]
    return cache_dir(root) / "data" / f"{name}-{key}.npz"


def _read(path: Path, version: int) -> tuple[Arrays, str]:
    try:
        with np.load(path, allow_pickle=False) as z:
            meta = json.loads(str(z[_META]))
            arrays = {k: z[k] for k in z.files if k != _META}
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile, json.JSONDecodeError) as e:
        raise _InvalidCache(f"unreadable ({type(e).__name__}: {e})") from e
    if meta.get("version") != version:
        raise _InvalidCache(f"stale (generator version {meta.get('version')}, current {version})")
    digest = content_hash(arrays)
    if digest != meta.get("sha256"):
        raise _InvalidCache("content hash mismatch")
    return arrays, digest


def _write_atomic(path: Path, arrays: Arrays, meta: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        payload: dict[str, Any] = {**arrays, _META: np.array(json.dumps(meta, sort_keys=True))}
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **payload)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def load_or_build(
    name: str,
    params: Mapping[str, Any],
    build: Callable[[], Arrays],
    *,
    root: str | os.PathLike[str] | None = None,
    version: int = VERSION,
) -> tuple[Arrays, str]:
    """Return ``(arrays, sha256)`` for ``name``/``params`` from the cache, building and caching them if needed.

    A corrupt, tampered or stale (other ``version``) file emits a :class:`CacheWarning` and is rebuilt.
    """
    path = cache_path(name, params, root)
    if path.exists():
        try:
            return _read(path, version)
        except _InvalidCache as e:
            warnings.warn(f"dataset cache {path} is {e}; rebuilding", CacheWarning, stacklevel=2)
    arrays = build()
    digest = content_hash(arrays)
    _write_atomic(path, arrays, {"name": name, "params": dict(params), "version": version, "sha256": digest})
    return arrays, digest
