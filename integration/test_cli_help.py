"""Every package's CLI: ``python -m <pkg> --help`` lists its subcommands, each subcommand's ``--help`` works, and a
usage error exits 2 (the dyncore.cli contract)."""

from __future__ import annotations

import importlib
import os
import re
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

METHODS = ("covnorm", "dcd", "micronet", "bdl", "drt")
REQUIRED = {"eval", "demo", "bench"}  # plus a training command: `train` (bdl: `train-seg` / `run`)


def _subcommands(help_text: str) -> list[str]:
    """Subcommand names from argparse's top-level help ("commands:" → "  COMMAND" → "    name  help")."""
    section = help_text.split("commands:", 1)[1]
    return re.findall(r"^ {4}([a-z][\w-]*)(?:\s|$)", section, flags=re.MULTILINE)


def _main(pkg: str, argv: list[str]) -> int:
    with pytest.raises(SystemExit) as exc:
        importlib.import_module(f"{pkg}.cli").main(argv)
    code = exc.value.code
    return 0 if code is None else int(code)


@pytest.mark.parametrize("pkg", METHODS)
def test_help_of_every_command(
    pkg: str, cli: Callable[..., subprocess.CompletedProcess[str]], capsys: pytest.CaptureFixture[str]
) -> None:
    top = cli(pkg, "--help")
    assert top.stdout.startswith(f"usage: {pkg} "), top.stdout[:200]
    commands = _subcommands(top.stdout)
    assert set(commands) >= REQUIRED, f"{pkg}: commands {commands} lack {REQUIRED - set(commands)}"
    assert {"train", "train-seg"} & set(commands), f"{pkg}: no training command in {commands}"
    capsys.readouterr()
    for command in commands:
        assert _main(pkg, [command, "--help"]) == 0, f"{pkg} {command} --help"
        out = capsys.readouterr().out
        assert out.startswith(f"usage: {pkg} {command}"), f"{pkg} {command} --help printed {out[:200]!r}"


@pytest.mark.parametrize("pkg", METHODS)
def test_usage_errors_exit_2(pkg: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert _main(pkg, ["no-such-command"]) == 2
    assert "invalid choice: 'no-such-command'" in capsys.readouterr().err
    assert _main(pkg, ["demo", "--no-such-flag"]) == 2
    assert "unrecognized arguments: --no-such-flag" in capsys.readouterr().err


@pytest.mark.parametrize("pkg", METHODS)
def test_version_of_every_cli(pkg: str, capsys: pytest.CaptureFixture[str]) -> None:
    from importlib import metadata

    assert _main(pkg, ["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"{pkg} {metadata.version(pkg)}"


#: the command of each CLI that reads a trained checkpoint, and the flag naming it
EVAL_COMMANDS = {pkg: ["eval", "--checkpoint"] for pkg in METHODS}


@pytest.mark.parametrize("pkg", METHODS)
def test_a_file_that_is_not_a_checkpoint_is_one_error_line_with_exit_2(
    pkg: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    junk = tmp_path / "random.pt"
    junk.write_bytes(os.urandom(2048))
    command, flag = EVAL_COMMANDS[pkg]
    assert _main(pkg, [command, flag, str(junk), "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert f"{pkg} {command}: error:" in err and "not a checkpoint" in err, err
    assert "Traceback" not in err and "weights_only=False" not in err
