"""The on-disk dataset cache: content hash, build-once, corrupt/tampered/stale files rebuilt, atomic writes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from dyncore.data import CacheWarning, cache_dir, content_hash, load_or_build
from dyncore.data.cache import VERSION, cache_path


def _builder(counter: list[int]):  # type: ignore[no-untyped-def]
    def build() -> dict[str, np.ndarray]:
        counter.append(1)
        return {"images": np.arange(3 * 4 * 4, dtype=np.uint8).reshape(3, 4, 4), "labels": np.array([0, 1, 2])}

    return build


@pytest.mark.quick
def test_content_hash_is_stable_and_sensitive() -> None:
    a = {"x": np.arange(10, dtype=np.uint8), "y": np.zeros(3)}
    assert content_hash(a) == content_hash({"y": np.zeros(3), "x": np.arange(10, dtype=np.uint8)})
    b = {"x": a["x"].copy(), "y": a["y"].copy()}
    b["x"][4] += 1
    assert content_hash(a) != content_hash(b)
    # dtype and shape are part of the hash, not only the bytes
    assert content_hash({"x": np.zeros(4, np.uint8)}) != content_hash({"x": np.zeros((2, 2), np.uint8)})
    assert len(content_hash(a)) == 64


@pytest.mark.quick
def test_builds_once_then_loads(tmp_path: Path) -> None:
    calls: list[int] = []
    a1, h1 = load_or_build("toy", {"seed": 0}, _builder(calls), root=tmp_path)
    a2, h2 = load_or_build("toy", {"seed": 0}, _builder(calls), root=tmp_path)
    assert len(calls) == 1 and h1 == h2 == content_hash(a1)
    np.testing.assert_array_equal(a1["images"], a2["images"])
    load_or_build("toy", {"seed": 1}, _builder(calls), root=tmp_path)  # other params → other file
    assert len(calls) == 2
    assert not list(tmp_path.rglob("*.tmp")), "temporary files left behind"


def test_truncated_cache_is_rebuilt(tmp_path: Path) -> None:
    calls: list[int] = []
    _, h = load_or_build("toy", {"seed": 0}, _builder(calls), root=tmp_path)
    path = cache_path("toy", {"seed": 0}, tmp_path)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.warns(CacheWarning, match=r"toy-.*\.npz is unreadable"):
        _, h2 = load_or_build("toy", {"seed": 0}, _builder(calls), root=tmp_path)
    assert len(calls) == 2 and h2 == h
    load_or_build("toy", {"seed": 0}, _builder(calls), root=tmp_path)  # repaired: no third build
    assert len(calls) == 2


def test_tampered_cache_fails_hash_and_is_rebuilt(tmp_path: Path) -> None:
    calls: list[int] = []
    arrays, h = load_or_build("toy", {"seed": 0}, _builder(calls), root=tmp_path)
    path = cache_path("toy", {"seed": 0}, tmp_path)
    with np.load(path) as z:
        meta = str(z["__meta__"])
    bad = dict(arrays)
    bad["images"] = arrays["images"].copy()
    bad["images"][0, 0, 0] ^= 1  # one flipped bit, old metadata kept
    np.savez(path, **bad, __meta__=np.array(meta))
    with pytest.warns(CacheWarning, match="content hash mismatch"):
        a2, h2 = load_or_build("toy", {"seed": 0}, _builder(calls), root=tmp_path)
    assert len(calls) == 2 and h2 == h
    np.testing.assert_array_equal(a2["images"], arrays["images"])


def test_stale_version_is_rebuilt(tmp_path: Path) -> None:
    calls: list[int] = []
    load_or_build("toy", {"seed": 0}, _builder(calls), root=tmp_path)
    with pytest.warns(CacheWarning, match=rf"stale \(generator version {VERSION}, current {VERSION + 1}\)"):
        load_or_build("toy", {"seed": 0}, _builder(calls), root=tmp_path, version=VERSION + 1)
    assert len(calls) == 2
    with np.load(cache_path("toy", {"seed": 0}, tmp_path)) as z:
        assert json.loads(str(z["__meta__"]))["version"] == VERSION + 1


def test_cache_dir_from_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DYNCORE_CACHE", str(tmp_path / "env"))
    assert cache_dir() == tmp_path / "env"
    assert cache_dir(tmp_path / "explicit") == tmp_path / "explicit"
    monkeypatch.delenv("DYNCORE_CACHE")
    assert cache_dir() == Path.home() / ".cache" / "dyncore"
    monkeypatch.setenv("DYNCORE_CACHE", str(tmp_path / "env"))
    load_or_build("toy", {"seed": 0}, _builder([]), root=None)
    assert cache_path("toy", {"seed": 0}).parent == tmp_path / "env" / "data"
    assert cache_path("toy", {"seed": 0}).is_file()
