"""Model surgery: find, replace or wrap modules of an existing torchvision/timm model by name/type predicate.

The peft pattern: select modules with a predicate, build the new module with a factory, swap it in, and get a report
of exactly what changed. Used by CovNorm (adapters after frozen convs), DCD (convert convs) and DRT (residual branches
on 3×3 convs)::

    from dyncore.surgery import by_name, by_type, insert_after, replace_modules

    is_3x3 = by_type(nn.Conv2d) & (lambda name, m: m.kernel_size == (3, 3))
    report = replace_modules(model, is_3x3, lambda name, conv: MyConv.from_conv(conv))
    print(report)                                    # name | before | after | params

    insert_after(model, by_type(nn.Conv2d) & by_name(r"^layer\\d\\."), lambda name, conv: Adapter(conv.out_channels))

Matches are collected first and modified afterwards (never while iterating ``named_modules``). A predicate never sees
the inside of a module it already matched: only the outermost match of a nested pair is changed.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from torch import nn

__all__ = [
    "Change",
    "InsertedAfter",
    "Predicate",
    "SurgeryError",
    "SurgeryReport",
    "by_name",
    "by_type",
    "find_modules",
    "insert_after",
    "replace_modules",
    "set_submodule",
]

Factory = Callable[[str, nn.Module], nn.Module]


class SurgeryError(RuntimeError):
    """Raised when surgery cannot be done as asked (nothing matched under strict=True, a bad name, a bad factory)."""


class Predicate:
    """A selector ``(name, module) -> bool`` that combines with ``&``, ``|`` and ``~``.

    Plain callables with the same signature are accepted wherever a predicate is, and can be combined with a
    ``Predicate`` on either side (``by_type(nn.Conv2d) & (lambda n, m: m.groups == 1)``).
    """

    def __init__(self, fn: Callable[[str, nn.Module], bool], description: str) -> None:
        self.fn = fn
        self.description = description

    def __call__(self, name: str, module: nn.Module) -> bool:
        return bool(self.fn(name, module))

    def __and__(self, other: Callable[[str, nn.Module], bool]) -> Predicate:
        o = _as_predicate(other)
        return Predicate(lambda n, m: self(n, m) and o(n, m), f"({self.description} & {o.description})")

    def __rand__(self, other: Callable[[str, nn.Module], bool]) -> Predicate:
        return _as_predicate(other) & self

    def __or__(self, other: Callable[[str, nn.Module], bool]) -> Predicate:
        o = _as_predicate(other)
        return Predicate(lambda n, m: self(n, m) or o(n, m), f"({self.description} | {o.description})")

    def __ror__(self, other: Callable[[str, nn.Module], bool]) -> Predicate:
        return _as_predicate(other) | self

    def __invert__(self) -> Predicate:
        return Predicate(lambda n, m: not self(n, m), f"~{self.description}")

    def __repr__(self) -> str:
        return self.description


def _as_predicate(pred: Callable[[str, nn.Module], bool]) -> Predicate:
    if isinstance(pred, Predicate):
        return pred
    if not callable(pred):
        raise TypeError(f"predicate must be callable (name, module) -> bool, got {type(pred).__name__}")
    return Predicate(pred, getattr(pred, "__name__", repr(pred)))


def by_type(*types: type[nn.Module]) -> Predicate:
    """Select modules that are instances of any of ``types``."""
    if not types or not all(isinstance(t, type) for t in types):
        raise TypeError(f"by_type: pass one or more module classes, got {types!r}")
    names = ", ".join(t.__name__ for t in types)
    return Predicate(lambda n, m: isinstance(m, types), f"by_type({names})")


def by_name(regex: str) -> Predicate:
    """Select modules whose dotted name matches ``regex`` (``re.search``; anchor with ``^``/``$`` as needed)."""
    try:
        pattern = re.compile(regex)
    except re.error as exc:
        raise ValueError(f"by_name: invalid regex {regex!r}: {exc}") from exc
    return Predicate(lambda n, m: pattern.search(n) is not None, f"by_name({regex!r})")


def find_modules(
    model: nn.Module, predicate: Callable[[str, nn.Module], bool], *, include_nested: bool = True
) -> list[tuple[str, nn.Module]]:
    """``(name, module)`` pairs of ``model`` that match ``predicate``, in ``named_modules`` order.

    The root (name ``""``) is never returned. With ``include_nested=False`` a match's descendants are not visited
    (what :func:`replace_modules`/:func:`insert_after` use, so each match can be swapped independently).
    """
    pred = _as_predicate(predicate)
    found: list[tuple[str, nn.Module]] = []
    for name, module in model.named_modules():
        if not name:
            continue
        if not include_nested and any(name.startswith(f"{prev}.") for prev, _ in found):
            continue
        if pred(name, module):
            found.append((name, module))
    return found


def set_submodule(model: nn.Module, dotted_name: str, module: nn.Module) -> None:
    """Replace the submodule at ``dotted_name`` (e.g. ``"layer1.0.conv1"``, ``"features.3"``) with ``module``."""
    if not dotted_name:
        raise SurgeryError("set_submodule: dotted_name is empty (cannot replace the root module)")
    if not isinstance(module, nn.Module):
        raise TypeError(f"set_submodule: module must be an nn.Module, got {type(module).__name__}")
    parent_name, _, child = dotted_name.rpartition(".")
    try:
        parent = model.get_submodule(parent_name) if parent_name else model
    except AttributeError as exc:
        raise SurgeryError(f"set_submodule: {type(model).__name__} has no submodule {parent_name!r}") from exc
    if child not in parent._modules:
        raise SurgeryError(
            f"set_submodule: {type(parent).__name__} at {parent_name or '(root)'!r} has no child {child!r}"
        )
    parent._modules[child] = module


def _num_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@dataclass(frozen=True)
class Change:
    """One module changed by surgery: its dotted name, the module before/after and their parameter counts."""

    name: str
    before: nn.Module
    after: nn.Module
    params_before: int
    params_after: int


@dataclass
class SurgeryReport:
    """What a surgery call changed (``changes`` in model order) and how it selected (``description``)."""

    changes: list[Change] = field(default_factory=list)
    description: str = ""

    @property
    def names(self) -> list[str]:
        """Dotted names of the changed modules."""
        return [c.name for c in self.changes]

    @property
    def params_added(self) -> int:
        """Net change in the parameter count (after − before, summed over changes)."""
        return sum(c.params_after - c.params_before for c in self.changes)

    def __len__(self) -> int:
        return len(self.changes)

    def __str__(self) -> str:
        rows = [
            (c.name, type(c.before).__name__, _describe_after(c.after), c.params_before, c.params_after)
            for c in self.changes
        ]
        header = ("module", "before", "after", "params before", "params after")
        widths = [max([len(header[i]), *(len(str(r[i])) for r in rows)]) for i in range(3)]
        lines = [f"{self.description}: {len(rows)} module(s) changed, params {self.params_added:+,}"]
        lines.append(
            f"{header[0]:<{widths[0]}}  {header[1]:<{widths[1]}}  {header[2]:<{widths[2]}}  {header[3]:>14}  "
            f"{header[4]:>14}"
        )
        for r in rows:
            lines.append(f"{r[0]:<{widths[0]}}  {r[1]:<{widths[1]}}  {r[2]:<{widths[2]}}  {r[3]:>14,}  {r[4]:>14,}")
        return "\n".join(lines)


def _describe_after(module: nn.Module) -> str:
    if isinstance(module, InsertedAfter):
        return f"InsertedAfter({type(module.original).__name__}, {type(module.inserted).__name__})"
    return type(module).__name__


class InsertedAfter(nn.Module):
    """``inserted(original(x))``: a module with another one appended after it.

    State-dict keys are ``original.*`` and ``inserted.*``; ``.original`` is the untouched old module, so its weights
    can still be loaded/frozen by name.
    """

    def __init__(self, original: nn.Module, inserted: nn.Module) -> None:
        super().__init__()
        self.original = original
        self.inserted = inserted

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self.inserted(self.original(*args, **kwargs))


def _match_device(new: nn.Module, old: nn.Module) -> None:
    """Move ``new`` to ``old``'s device when they differ (a CPU-built adapter inside a CUDA model); dtype untouched."""
    old_t = next(itertools.chain(old.parameters(), old.buffers()), None)
    new_t = next(itertools.chain(new.parameters(), new.buffers()), None)
    if old_t is not None and new_t is not None and new_t.device != old_t.device:
        new.to(device=old_t.device)


def _apply(
    model: nn.Module,
    predicate: Callable[[str, nn.Module], bool],
    factory: Factory,
    *,
    strict: bool,
    what: str,
    wrap: bool,
) -> SurgeryReport:
    if not isinstance(model, nn.Module):
        raise TypeError(f"{what}: model must be an nn.Module, got {type(model).__name__}")
    if not callable(factory):
        raise TypeError(f"{what}: factory must be callable (name, module) -> nn.Module, got {type(factory).__name__}")
    pred = _as_predicate(predicate)
    targets = find_modules(model, pred, include_nested=False)  # collect first, modify after
    report = SurgeryReport(description=f"{what}({type(model).__name__}, {pred.description})")
    if not targets and strict:
        raise SurgeryError(
            f"{what}: predicate {pred.description} matched no module of {type(model).__name__} "
            f"(pass strict=False to allow a no-op)"
        )
    for name, old in targets:
        new = factory(name, old)
        if not isinstance(new, nn.Module):
            raise SurgeryError(f"{what}: factory returned {type(new).__name__} for {name!r}, expected an nn.Module")
        _match_device(new, old)
        after = InsertedAfter(old, new) if wrap else new
        after.train(old.training)
        set_submodule(model, name, after)
        report.changes.append(Change(name, old, after, _num_params(old), _num_params(after)))
    return report


def replace_modules(
    model: nn.Module, predicate: Callable[[str, nn.Module], bool], factory: Factory, *, strict: bool = True
) -> SurgeryReport:
    """Replace every (outermost) module matching ``predicate`` by ``factory(name, module)``, in place.

    The new module takes the old one's train/eval mode and, if its tensors are elsewhere, the old one's device.

    Raises:
        SurgeryError: nothing matched and ``strict``; or the factory did not return an ``nn.Module``.
    """
    return _apply(model, predicate, factory, strict=strict, what="replace_modules", wrap=False)


def insert_after(
    model: nn.Module, predicate: Callable[[str, nn.Module], bool], factory: Factory, *, strict: bool = True
) -> SurgeryReport:
    """Wrap every (outermost) matching module as ``InsertedAfter(module, factory(name, module))``, in place.

    The old module's parameters move under ``<name>.original.*``; the new ones are ``<name>.inserted.*``.

    Raises:
        SurgeryError: nothing matched and ``strict``; or the factory did not return an ``nn.Module``.
    """
    return _apply(model, predicate, factory, strict=strict, what="insert_after", wrap=True)
