"""The CLI skeleton every package reuses, and dyncore's own CLI (``dyncore count|gallery``).

A method package's CLI is a list of :class:`Command` s handed to :func:`run_cli`::

    # dcd/cli.py
    def _train_args(p: argparse.ArgumentParser) -> None:
        p.add_argument("--epochs", type=int, default=90, help="training epochs")

    def _train(args: argparse.Namespace) -> int:
        run = RunDir(args.out)
        run.write_config(vars(args))
        ...
        run.metrics.log(step=epoch, top1=top1)
        return 0

    def main(argv: list[str] | None = None) -> None:
        sys.exit(run_cli("dcd", __doc__, [Command("train", "train a DCD network", _train_args, _train), ...], argv))

Every subcommand gets the common flags (:func:`add_common_args`: ``--out --seed --device --threads --quick``) unless
it defines them itself; ``--device auto`` is resolved to ``cuda`` when available, else ``cpu``, before ``run`` is
called, and ``--threads N`` sets ``torch.set_num_threads(N)``.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dyncore.io import atomic_write_json, atomic_write_text, remove_stale_tmp

if TYPE_CHECKING:
    from dyncore.training import JSONLLogger

__all__ = ["Command", "RunDir", "UsageError", "add_common_args", "main", "resolve_device", "run_cli"]


class UsageError(ValueError):
    """A user error (a bad flag value, an unusable file): :func:`run_cli` prints ``<prog> <command>: error: <msg>``
    and exits 2, without a traceback."""


class RunDir:
    """A run directory: ``config.json``, ``metrics.jsonl``, ``checkpoints/``, ``plots/``.

    Args:
        path: the directory (created with parents; reusing an existing one is allowed — e.g. to resume).
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        if self.path.exists() and not self.path.is_dir():
            raise NotADirectoryError(f"RunDir: {self.path} exists and is not a directory")
        self.checkpoints.mkdir(parents=True, exist_ok=True)
        self.plots.mkdir(parents=True, exist_ok=True)
        #: temporaries of writes a killed run left behind, removed here (by rank 0 alone: under torchrun another
        #: rank's RunDir must not delete a file rank 0 is writing)
        self.removed_tmp = remove_stale_tmp(self.path) if os.environ.get("RANK", "0") == "0" else []
        self._metrics: JSONLLogger | None = None

    @property
    def checkpoints(self) -> Path:
        """``<path>/checkpoints`` (give it to ``dyncore.training.Checkpointer``)."""
        return self.path / "checkpoints"

    @property
    def plots(self) -> Path:
        """``<path>/plots``."""
        return self.path / "plots"

    @property
    def config_path(self) -> Path:
        return self.path / "config.json"

    @property
    def metrics_path(self) -> Path:
        return self.path / "metrics.jsonl"

    @property
    def result_path(self) -> Path:
        return self.path / "result.json"

    def write_config(self, config: dict[str, Any] | argparse.Namespace) -> Path:
        """Write the resolved config to ``config.json`` atomically (Paths, devices and other objects as strings);
        returns it. Call it once the run is known to proceed (after a resume check), so that a refused run does not
        overwrite the config of the run it refused to continue."""
        data = dict(vars(config)) if isinstance(config, argparse.Namespace) else dict(config)
        data = {k: v for k, v in data.items() if not callable(v)}  # drop argparse's bound handler, if any
        text = json.dumps(data, indent=2, sort_keys=True, default=str)
        return atomic_write_text(self.config_path, text + "\n")

    def read_result(self) -> dict[str, Any]:
        """``result.json`` as a dict ({} when there is none yet)."""
        if not self.result_path.exists():
            return {}
        try:
            data = json.loads(self.result_path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise UsageError(f"{self.result_path} is not valid JSON ({exc}); remove it or use another --out") from exc
        if not isinstance(data, dict):
            raise UsageError(f"{self.result_path} holds a {type(data).__name__}, expected a JSON object")
        return data

    def update_result(self, **fields: Any) -> dict[str, Any]:
        """Merge ``fields`` into ``result.json`` (written atomically) and return the merged result. Use
        :meth:`read_result` first to carry a best value across resumes."""
        data = {**self.read_result(), **fields}
        atomic_write_json(self.result_path, data, sort_keys=True)
        return data

    @property
    def metrics(self) -> JSONLLogger:
        """A ``dyncore.training.JSONLLogger`` appending to ``metrics.jsonl`` (created on first use)."""
        if self._metrics is None:
            from dyncore.training import JSONLLogger

            self._metrics = JSONLLogger(self.metrics_path)
        return self._metrics

    def plot(self, name: str) -> Path:
        """Path for a plot: ``plots/<name>`` (``.png`` appended when ``name`` has no suffix)."""
        if not name or "/" in name or "\\" in name:
            raise ValueError(f"RunDir.plot: name must be a plain file name, got {name!r}")
        return self.plots / (name if Path(name).suffix else f"{name}.png")

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"


@dataclass
class Command:
    """One subcommand: ``add_arguments(parser)`` declares its flags, ``run(args)`` returns an exit code (None → 0).

    ``common=False`` leaves out the common flags (for tools that write no run directory, like ``dyncore count``).
    """

    name: str
    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int | None]
    common: bool = True


def _has_option(parser: argparse.ArgumentParser, flag: str) -> bool:
    return flag in parser._option_string_actions


def add_common_args(parser: argparse.ArgumentParser, *, default_out: str | None = None) -> None:
    """Add ``--out --seed --device --threads --quick`` (each only if the parser does not define it already)."""
    if not _has_option(parser, "--out"):
        parser.add_argument(
            "--out",
            type=Path,
            default=default_out,
            help="run directory (config.json, metrics.jsonl, checkpoints/, plots/); default runs/<prog>/<command>",
        )
    if not _has_option(parser, "--seed"):
        parser.add_argument("--seed", type=int, default=0, help="random seed (python, numpy, torch)")
    if not _has_option(parser, "--device"):
        parser.add_argument(
            "--device", default="auto", help="torch device: auto (cuda if available, else cpu), cpu, cuda, cuda:N"
        )
    if not _has_option(parser, "--threads"):
        parser.add_argument(
            "--threads", type=int, default=None, help="torch intra-op CPU threads (default: torch's own setting)"
        )
    if not _has_option(parser, "--quick"):
        parser.add_argument(
            "--quick", action="store_true", help="tiny settings (few steps, small data) for a fast smoke run"
        )


def resolve_device(device: str) -> str:
    """``auto`` → ``cuda`` if available else ``cpu``; otherwise validate the name (ValueError if unusable)."""
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError) as exc:
        raise ValueError(f"--device: unknown device {device!r} (use auto, cpu, cuda or cuda:N)") from exc
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"--device: {device!r} requested but CUDA is not available (use cpu or auto)")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(f"--device: {device!r} but only {torch.cuda.device_count()} CUDA device(s) exist")
    return str(dev)


class _Formatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Shows defaults (except uninformative None/False/[]) and keeps the description's line breaks (docstrings)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default is None or action.default is False or action.default == []:
            return action.help
        return super()._get_help_string(action)


#: Exceptions that are the user's doing (a flag, a file): reported as ``error: <message>``, exit 2.
USER_ERRORS: tuple[type[BaseException], ...] = (ValueError, OSError)


def _user_errors() -> tuple[type[BaseException], ...]:
    from dyncore.training.checkpoint import CheckpointError

    return (*USER_ERRORS, CheckpointError)


def _package_version(prog: str) -> str:
    from importlib import metadata

    try:
        return metadata.version(prog)
    except metadata.PackageNotFoundError:
        return "unknown (not installed as a distribution)"


def run_cli(prog: str, description: str | None, commands: Sequence[Command], argv: Sequence[str] | None = None) -> int:
    """Parse ``argv`` (default ``sys.argv[1:]``) into one of ``commands`` and run it; returns the exit code.

    ``--help`` / ``--version`` → 0; an unknown subcommand or a bad flag → 2 (argparse prints the usage to stderr);
    otherwise the command's return value (None → 0). The common flags are added to every subcommand; ``args.device``
    is resolved, ``args.out`` defaults to ``runs/<prog>/<command>`` and ``--threads`` is applied before ``run``.

    Errors raised by the command become one line on stderr, never a traceback (``--debug`` re-raises them):
    a user error (:class:`UsageError`, ValueError, OSError, ``CheckpointError``) →
    ``<prog> <command>: error: <message>``, exit 2; anything else → ``... error: internal error: <Type>: <message>``,
    exit 1; Ctrl-C (SIGINT) → ``... interrupted; rerun the same command to resume``, exit 130.
    """
    names = [c.name for c in commands]
    if not commands or len(set(names)) != len(names):
        raise ValueError(f"run_cli: commands must be non-empty with unique names, got {names}")
    parser = argparse.ArgumentParser(prog=prog, description=description, formatter_class=_Formatter)
    parser.add_argument("--version", action="version", version=f"{prog} {_package_version(prog)}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", title="commands")
    sub.required = True
    parsers: dict[str, argparse.ArgumentParser] = {}
    for cmd in commands:
        p = sub.add_parser(cmd.name, help=cmd.help, description=cmd.help, formatter_class=_Formatter)
        cmd.add_arguments(p)
        if cmd.common:
            add_common_args(p)
        if not _has_option(p, "--debug"):
            p.add_argument("--debug", action="store_true", help="show the full traceback of an error")
        parsers[cmd.name] = p
    try:
        args = parser.parse_args(None if argv is None else list(argv))
    except SystemExit as exc:  # --help / --version (0) or a usage error (2)
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 2)
    command = next(c for c in commands if c.name == args.command)
    sub_parser = parsers[command.name]
    where = f"{prog} {command.name}"
    try:
        if getattr(args, "device", None) is not None:
            args.device = resolve_device(str(args.device))
        if getattr(args, "threads", None) is not None:
            if args.threads < 1:
                raise ValueError(f"--threads must be >= 1, got {args.threads}")
            import torch

            torch.set_num_threads(args.threads)
    except ValueError as exc:
        sub_parser.print_usage(sys.stderr)
        print(f"{where}: error: {exc}", file=sys.stderr)
        return 2
    if hasattr(args, "out") and args.out is None:
        args.out = Path("runs") / prog / command.name
    debug = bool(getattr(args, "debug", False))
    try:
        rc = command.run(args)
    except KeyboardInterrupt:
        if debug:
            traceback.print_exc()
        print(f"{where}: interrupted; rerun the same command to resume", file=sys.stderr)
        return 130
    except _user_errors() as exc:
        if debug:
            raise
        print(f"{where}: error: {_message(exc)}", file=sys.stderr)
        return 2
    except Exception as exc:
        if debug:
            raise
        print(
            f"{where}: error: internal error: {type(exc).__name__}: {_message(exc)} "
            "(rerun with --debug for the traceback)",
            file=sys.stderr,
        )
        return 1
    return 0 if rc is None else int(rc)


def _message(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.filename is not None and exc.strerror:
        return f"{exc.filename}: {exc.strerror}"
    return str(exc) or type(exc).__name__


# ----------------------------------------------------------------------------------------------------------------------
# dyncore's own CLI


def _build_model(name: str, num_classes: int | None) -> Any:
    """A torchvision model by name if torchvision knows it, else a timm model (never pretrained)."""
    import torchvision

    kwargs: dict[str, Any] = {} if num_classes is None else {"num_classes": num_classes}
    if name in torchvision.models.list_models():
        return torchvision.models.get_model(name, weights=None, **kwargs)
    try:
        timm: Any = importlib.import_module("timm")
    except ImportError:  # timm is optional for dyncore
        timm = None
    if timm is not None and timm.is_model(name):
        return timm.create_model(name, pretrained=False, **kwargs)
    raise ValueError(
        f"model {name!r} is neither a torchvision nor a timm model name (use --import PKG to register models "
        f"of a package, e.g. --import micronet)"
    )


def _parse_size(text: str) -> tuple[int, int]:
    parts = text.lower().split("x")
    try:
        sizes = [int(p) for p in parts]
    except ValueError:
        sizes = []
    if len(sizes) not in (1, 2) or min(sizes) <= 0:
        raise argparse.ArgumentTypeError(f"input size must be N or HxW with positive ints, got {text!r}")
    return (sizes[0], sizes[-1])


def _count_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="timm or torchvision model name (e.g. resnet18, mobilenetv3_small_050)")
    p.add_argument("--input-size", type=_parse_size, default="224", help="input H×W: N or HxW")
    p.add_argument("--in-chans", type=int, default=3, help="input channels")
    p.add_argument("--num-classes", type=int, default=None, help="classifier classes (default: the model's own)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads for the counting forward pass")
    p.add_argument(
        "--import",
        dest="imports",
        action="append",
        default=[],
        metavar="MODULE",
        help="import MODULE first so it registers its models with timm (repeatable)",
    )
    p.add_argument("--table", action="store_true", help="also print the per-module MAdds table")
    p.add_argument("--json", action="store_true", help="print the result as JSON")


def _count(args: argparse.Namespace) -> int:
    import torch

    from dyncore.complexity import MAddsConvention, count_madds, count_parameters

    for mod in args.imports:
        importlib.import_module(mod)
    try:
        model = _build_model(args.model, args.num_classes)
    except ValueError as exc:
        print(f"dyncore count: error: {exc}", file=sys.stderr)
        return 2
    h, w = args.input_size
    x = torch.randn(1, args.in_chans, h, w)
    rows: list[dict[str, Any]] = []
    reports = []
    for dynamic in ("per_sample", "per_pixel"):
        for elementwise in (False, True):
            conv = MAddsConvention(dynamic=dynamic, elementwise=elementwise)
            rep = count_madds(model, x, convention=conv)
            reports.append(rep)
            rows.append({"dynamic": dynamic, "elementwise": elementwise, "madds": rep.total})
    params = count_parameters(model)
    result = {"model": args.model, "input": [args.in_chans, h, w], "params": params, "madds": rows}
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print(f"{args.model}  input {args.in_chans}x{h}x{w}  params {params:,} ({params / 1e6:.3f} M)")
    print(f"{'dynamic':<11} {'element-wise':<13} {'MAdds':>16} {'M':>10}")
    for r in rows:
        print(
            f"{r['dynamic']:<11} {'counted' if r['elementwise'] else 'not counted':<13} {r['madds']:>16,} "
            f"{r['madds'] / 1e6:>10.2f}"
        )
    if args.table:
        print()
        print(reports[0])
    return 0


def _gallery_module() -> Any:
    try:
        return importlib.import_module("dyncore.data.gallery")
    except ImportError:
        return None


def _gallery_args(p: argparse.ArgumentParser) -> None:
    gallery = _gallery_module()
    if gallery is not None and callable(getattr(gallery, "add_arguments", None)):
        gallery.add_arguments(p)
    else:
        p.add_argument("gallery_args", nargs=argparse.REMAINDER, help="arguments passed to dyncore.data.gallery")


def _gallery(args: argparse.Namespace) -> int:
    gallery = _gallery_module()
    if gallery is None or not callable(getattr(gallery, "main", None)):
        print(
            "dyncore gallery: error: dyncore.data.gallery.main is not available in this installation "
            "(the embedded-data gallery module is missing)",
            file=sys.stderr,
        )
        return 1
    rc = gallery.main(args)
    return 0 if rc is None else int(rc)


COMMANDS: list[Command] = [
    Command(
        "count",
        "parameters and MAdds of a timm/torchvision model under each counting convention",
        _count_args,
        _count,
        common=False,
    ),
    Command("gallery", "render PNG grids of the embedded datasets' samples per domain/task", _gallery_args, _gallery),
]


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point of the ``dyncore`` script and ``python -m dyncore``."""
    sys.exit(run_cli("dyncore", "dyncore tools: complexity counts and dataset gallery.", COMMANDS, argv))
