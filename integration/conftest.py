"""Shared fixtures for the cross-package tests: run a package's CLI in a subprocess."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
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
            pytest.fail(f"`python -m {' '.join(args)}` exited {proc.returncode}\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}")
        return proc

    return run
