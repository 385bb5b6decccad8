"""Shared fixtures for the cross-package tests: run a package's CLI in a subprocess."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

METHODS = ("covnorm", "dcd", "micronet", "bdl", "drt")


@pytest.fixture
def cli(tmp_path: Path) -> Callable[..., subprocess.CompletedProcess[str]]:
    """``cli("dcd", "demo", "--quick", ...)`` runs ``python -m dcd ...`` and fails the test with its output on error."""
    env = {**os.environ, "DYNCORE_NO_PROGRESS": "1", "OMP_NUM_THREADS": "2"}

    def run(*args: str, check: bool = True, timeout: float = 600) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(
            [sys.executable, "-m", *args], capture_output=True, text=True, env=env, timeout=timeout, cwd=tmp_path
        )
        if check and proc.returncode != 0:
            pytest.fail(
                f"`python -m {' '.join(args)}` exited {proc.returncode}\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
            )
        return proc

    return run


@pytest.fixture(scope="session")
def cli_in(dyncore_cache: Path) -> Callable[..., subprocess.CompletedProcess[str]]:
    """``cli`` for module/session-scoped fixtures: ``cli_in(cwd, "dcd", "demo", ...)``; ``env=`` adds variables."""

    def run(
        cwd: Path, *args: str, check: bool = True, timeout: float = 600, env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        full_env = {**os.environ, "DYNCORE_NO_PROGRESS": "1", "OMP_NUM_THREADS": "2", **(env or {})}
        proc = subprocess.run(
            [sys.executable, "-m", *args], capture_output=True, text=True, env=full_env, timeout=timeout, cwd=cwd
        )
        if check and proc.returncode != 0:
            pytest.fail(
                f"`python -m {' '.join(args)}` exited {proc.returncode}\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
            )
        return proc

    return run


@pytest.fixture(scope="session", autouse=True)
def dyncore_cache() -> Iterator[Path]:
    """Embedded datasets are generated once and cached under ``$DYNCORE_CACHE`` (nox sets it); when unset, the
    cache nox uses (``.nox/dyncore-cache``) is shared, so repeated runs and subprocess CLIs reuse the data."""
    previous = os.environ.get("DYNCORE_CACHE")
    cache = Path(previous) if previous else Path(__file__).resolve().parents[1] / ".nox" / "dyncore-cache"
    cache.mkdir(parents=True, exist_ok=True)
    os.environ["DYNCORE_CACHE"] = str(cache)
    yield cache
    if previous is None:
        os.environ.pop("DYNCORE_CACHE", None)
