"""Every package's CLI: ``python -m <pkg> --help`` lists its subcommands, each subcommand's ``--help`` works, and a
usage error exits 2 (the dyncore.cli contract)."""

from __future__ import annotations

import importlib
import re
import subprocess
from collections.abc import Callable

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
