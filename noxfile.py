"""Every check of the monorepo: `nox` (lint, typecheck, per-package tests, integration, isolation),
`nox -s demo` (the main job) and `nox -s bench` (benchmarks).

How torch is installed once per machine
---------------------------------------
torch + torchvision are ~5.5 GB. Instead of installing them into every session's virtualenv, the first session builds
one *base* virtualenv (``.nox/base``) holding every third-party dependency (torch, timm, smp, test tools ...). Each
session's own virtualenv then gets a one-line ``_dyn_base.pth`` file naming the base's site-packages, so the base's
packages are importable there (~30 MB per session, seconds instead of minutes). Our six packages are never installed
into the base: each session installs exactly the ones it tests (``--no-deps``), so a session for ``dcd`` sees dyncore
and dcd, and not micronet. The base is rebuilt only when ``BASE_REQUIREMENTS`` (or the Python version) changes; a
stamp file records what it holds. Override the torch pair with ``DYN_TORCH="torch==X torchvision==Y"``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import nox

ROOT = Path(__file__).resolve().parent
BASE = ROOT / ".nox" / "base"
PACKAGES = ["dyncore", "covnorm", "dcd", "micronet", "bdl", "drt"]
METHODS = PACKAGES[1:]
TORCH = os.environ.get("DYN_TORCH", "torch==2.14.1 torchvision==0.29.1").split()
BASE_REQUIREMENTS = [
    "timm==1.0.31",
    "segmentation-models-pytorch==0.6.0",
    "numpy",
    "pillow",
    "tqdm",
    "matplotlib",
    "scikit-image",
    "scikit-learn",
    "mlxtend",
    "scipy",
    "fvcore",
    "torchmetrics",
    "onnx",
    "onnxruntime",
    "onnxscript",
    "pytest>=8",
    "ruff==0.17.5",
    "mypy==2.4.1",
    "poetry-core>=2.0",
]

nox.options.sessions = ["lint", "typecheck", "tests", "integration", "isolation"]
nox.options.reuse_existing_virtualenvs = True
nox.options.error_on_missing_interpreters = True


def _base_python() -> Path:
    return BASE / ("Scripts/python.exe" if os.name == "nt" else "bin/python")


def _purelib(python: Path | str) -> str:
    out = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True,
        capture_output=True,
        text=True,
    )
    return out.stdout.strip()


def ensure_base() -> Path:
    """Create (once) the shared base virtualenv with torch and every third-party dependency; return its site dir."""
    stamp_text = json.dumps({"torch": TORCH, "reqs": BASE_REQUIREMENTS, "py": sys.version_info[:2]})
    stamp = BASE / "dyn-base-stamp.json"
    if stamp.exists() and stamp.read_text() == stamp_text and _base_python().exists():
        return Path(_purelib(_base_python()))
    t0 = time.time()
    print(f"[base] building the shared base environment at {BASE} (once per machine)", flush=True)
    if not _base_python().exists():
        subprocess.run([sys.executable, "-m", "venv", str(BASE)], check=True)
    pip = [str(_base_python()), "-m", "pip", "install", "--disable-pip-version-check", "-q"]
    subprocess.run([*pip, "--upgrade", "pip"], check=True)
    subprocess.run([*pip, *TORCH], check=True)
    # torch is pinned by what is installed: keep the resolver from replacing it.
    frozen = subprocess.run(
        [str(_base_python()), "-m", "pip", "freeze"], check=True, capture_output=True, text=True
    ).stdout
    pins = [line for line in frozen.splitlines() if line.lower().startswith(("torch==", "torchvision=="))]
    constraints = BASE / "dyn-torch-constraints.txt"
    constraints.write_text("\n".join(pins) + "\n")
    subprocess.run([*pip, "-c", str(constraints), *BASE_REQUIREMENTS], check=True)
    stamp.write_text(stamp_text)
    print(f"[base] ready in {time.time() - t0:.0f} s", flush=True)
    return Path(_purelib(_base_python()))


def link_base(session: nox.Session) -> None:
    """Point the session's virtualenv at the base's site-packages with a .pth file."""
    base_site = ensure_base()
    site = Path(_purelib(Path(session.bin) / "python"))
    (site / "_dyn_base.pth").write_text(str(base_site) + "\n")


def install_local(session: nox.Session, *names: str, editable: bool = True) -> None:
    """Install our packages (no dependencies: those come from the base) into the session."""
    args = ["python", "-m", "pip", "install", "--disable-pip-version-check", "-q", "--no-deps", "--no-build-isolation"]
    for name in names:
        args += (["-e"] if editable else []) + [str(ROOT / "packages" / name)]
    session.run(*args)


def prepare(session: nox.Session, *names: str) -> None:
    link_base(session)
    install_local(session, *names)
    session.env.setdefault("OMP_NUM_THREADS", str(os.cpu_count() or 2))
    session.env["DYNCORE_CACHE"] = str(ROOT / ".nox" / "dyncore-cache")


def pytest(session: nox.Session, *args: str) -> None:
    """Run pytest on ``args``, or on the session's positional arguments when given (``nox -s ... -- path -k x``)."""
    # `python -m pytest`: the base's pytest script would run the base's interpreter.
    session.run("python", "-m", "pytest", "-q", "-p", "no:cacheprovider", *(session.posargs or args))


@nox.session(venv_backend="venv")
@nox.parametrize("package", PACKAGES)
def tests(session: nox.Session, package: str) -> None:
    """One package's tests, with only dyncore and that package installed."""
    prepare(session, *dict.fromkeys(["dyncore", package]))
    pytest(session, f"packages/{package}/tests")


@nox.session(venv_backend="venv")
def integration(session: nox.Session) -> None:
    """Cross-package tests: all six packages installed, exercised through their public APIs."""
    prepare(session, *PACKAGES)
    pytest(session, "integration")


@nox.session(venv_backend="venv")
def lint(session: nox.Session) -> None:
    link_base(session)
    session.run("python", "-m", "ruff", "check", ".")
    session.run("python", "-m", "ruff", "format", "--check", ".")


@nox.session(venv_backend="venv")
def typecheck(session: nox.Session) -> None:
    """mypy: strict on dyncore (the shared core everything relies on)."""
    prepare(session, "dyncore")
    session.run("python", "-m", "mypy", "packages/dyncore/src/dyncore")


@nox.session(venv_backend="venv")
@nox.parametrize("package", METHODS)
def isolation(session: nox.Session, package: str) -> None:
    """Build the wheels of dyncore and one method package with poetry-core, install just those two into a fresh
    environment that shares the torch install, run the package's quick tests against the installed wheel, and check
    that no sibling method package is importable."""
    link_base(session)
    dist = Path(session.create_tmp()) / "dist"
    shutil.rmtree(dist, ignore_errors=True)
    for name in ("dyncore", package):
        session.run(
            "python", "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
            "-w", str(dist), str(ROOT / "packages" / name),
        )  # fmt: skip
    wheels = sorted(str(p) for p in dist.glob("*.whl"))
    if len(wheels) != 2:
        session.error(f"expected 2 wheels in {dist}, found {wheels}")
    session.run("python", "-m", "pip", "uninstall", "-q", "-y", *PACKAGES, success_codes=[0, 1], silent=True)
    session.run("python", "-m", "pip", "install", "-q", "--no-deps", "--force-reinstall", *wheels)
    siblings = [p for p in METHODS if p != package]
    check = (
        "import importlib.util as u, sys;"
        f"import {package}, dyncore;"
        f"assert '/site-packages/' in {package}.__file__.replace(chr(92), '/'), {package}.__file__;"
        f"bad=[s for s in {siblings!r} if u.find_spec(s) is not None];"
        "sys.exit(f'sibling packages importable: {bad}') if bad else print('isolated:', "
        f"{package}.__name__, 'imports; not importable:', {siblings!r})"
    )
    session.run("python", "-c", check)
    session.env["DYNCORE_CACHE"] = str(ROOT / ".nox" / "dyncore-cache")
    session.run("python", "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "quick", f"packages/{package}/tests")


def _run_each(session: nox.Session, command: str, out: Path, extra: list[str]) -> None:
    for package in METHODS:
        session.run("python", "-m", package, command, "--out", str(out / package), *extra)


@nox.session(venv_backend="venv")
def demo(session: nox.Session) -> None:
    """The main job: every method's demo on the embedded data, one summary report (Markdown + JSON + PNGs)."""
    prepare(session, *PACKAGES)
    out = ROOT / "runs" / time.strftime("demo-%Y%m%d-%H%M%S")
    t0 = time.time()
    _run_each(session, "demo", out, session.posargs)
    session.run("python", "-m", "dyncore.report", "demo", str(out), "--seconds", f"{time.time() - t0:.0f}")


@nox.session(venv_backend="venv")
def bench(session: nox.Session) -> None:
    """Every package's benchmark; one JSON of ratios plus a Markdown table."""
    prepare(session, *PACKAGES)
    out = ROOT / "runs" / time.strftime("bench-%Y%m%d-%H%M%S")
    t0 = time.time()
    _run_each(session, "bench", out, session.posargs)
    session.run("python", "-m", "dyncore.report", "bench", str(out), "--seconds", f"{time.time() - t0:.0f}")


@nox.session(python=False)
def dev(session: nox.Session) -> None:
    """Make `.venv`: a development environment over the base with all six packages installed in develop mode."""
    base_site = ensure_base()
    venv = ROOT / ".venv"
    if not (venv / "bin" / "python").exists():
        session.run(sys.executable, "-m", "venv", str(venv))
    (Path(_purelib(venv / "bin" / "python")) / "_dyn_base.pth").write_text(str(base_site) + "\n")
    args = [str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation"]
    for name in PACKAGES:
        args += ["-e", str(ROOT / "packages" / name)]
    session.run(*args)
    print(f"activate with: source {venv}/bin/activate")
