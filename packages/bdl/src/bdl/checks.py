"""Up-front validation shared by the configs, the pipeline and the CLI: every error names the setting and its flag.

A run of Algorithm 2 takes hours; a value that cannot work (a probability threshold of 1.5, a NaN learning rate, a
batch larger than the data, images smaller than the network's stride) must fail before the first stage, not after
four of them.
"""

from __future__ import annotations

import importlib
import math
from collections.abc import Callable
from typing import Any

from torch.utils.data import Dataset


def _name(field: str, flag: str | None) -> str:
    return f"{field} ({flag})" if flag else field


def check_number(
    value: Any,
    field: str,
    flag: str | None = None,
    *,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    high_open: bool = False,
    integer: bool = False,
) -> None:
    """ValueError unless ``value`` is a finite number (an int when ``integer``) within [low, high] (open ends as
    asked). The message names ``field`` and its CLI ``flag``."""
    kind = "an integer" if integer else "a finite number"
    ok_type = isinstance(value, int) if integer else isinstance(value, int | float)
    ok = ok_type and not isinstance(value, bool) and math.isfinite(value)
    if ok and low is not None:
        ok = value > low if low_open else value >= low
    if ok and high is not None:
        ok = value < high if high_open else value <= high
    if not ok:
        lo = "" if low is None else ("(" if low_open else "[") + f"{low:g}"
        hi = "" if high is None else f"{high:g}" + (")" if high_open else "]")
        if low is not None and high is not None:
            where = f" in {lo}, {hi}"
        elif low is not None:
            where = f" {'>' if low_open else '≥'} {low:g}"
        elif high is not None:
            where = f" {'<' if high_open else '≤'} {high:g}"
        else:
            where = ""
        raise ValueError(f"{_name(field, flag)} must be {kind}{where}, got {value!r}")


def check_choice(value: Any, field: str, flag: str | None, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"{_name(field, flag)} must be one of {list(choices)}, got {value!r}")


def check_batch_size(batch_size: int, dataset: Dataset, what: str, *, flag: str = "--batch-size") -> None:
    """A batch must fit in the data: batches are drawn without a notion of epochs, so a batch larger than the data set
    would silently repeat images."""
    n = len(dataset)  # type: ignore[arg-type]
    if batch_size > n:
        raise ValueError(f"{flag} {batch_size} is larger than the {what} data set ({n} images); lower {flag}")


def check_image_size(
    size: tuple[int, int], stride: int, what: str, network: str, flag: str, *, divisible: bool = False
) -> None:
    """Images must be at least ``stride`` pixels on each side (and multiples of it when ``divisible``)."""
    h, w = size
    if h < stride or w < stride or (divisible and (h % stride or w % stride)):
        need = f"multiples of its stride {stride}" if divisible else f"at least its stride {stride}"
        raise ValueError(
            f"{flag}: the {what} images are {h}×{w} but {network} needs a height and width of {need}; "
            f"choose another {flag}"
        )


def load_register_function(spec: str) -> Callable[[], Any]:
    """``MODULE:FUNCTION`` (``--register``) → the function (default name ``register_smp_encoders``)."""
    module_name, _, function = spec.partition(":")
    if not module_name:
        raise ValueError(
            f"--register {spec!r}: expected MODULE:FUNCTION, e.g. micronet.segmentation:register_smp_encoders"
        )
    try:
        register = getattr(importlib.import_module(module_name), function or "register_smp_encoders")
    except (ImportError, AttributeError) as exc:
        raise ValueError(f"--register {spec!r}: cannot load it ({exc})") from exc
    if not callable(register):
        raise ValueError(f"--register {spec!r}: {function} is not a function")
    return register  # type: ignore[no-any-return]


def run_register(specs: list[str] | tuple[str, ...]) -> None:
    """Call every ``--register`` function (registering encoders of other packages by import path: no dependency)."""
    for spec in specs:
        load_register_function(spec)()
