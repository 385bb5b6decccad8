"""Benchmark helpers: batch-1 latency, training throughput, peak memory.

Speed targets live in benchmarks (``<pkg> bench`` → ``bench.json`` via :func:`dyncore.report.write_bench`), never in
timed unit tests. Machines are noisy, so:

- every number is a **median** over repeats, after warm-up runs;
- comparisons **interleave** the cases (round 1: A, B, C; round 2: B, C, A; …) so a burst of background load hits all
  of them alike, and report **ratios** to a baseline (:func:`ratios`) rather than absolute times;
- the thread count is fixed for the measurement (``torch.set_num_threads``) and restored afterwards.
"""

from __future__ import annotations

import contextlib
import copy
import ctypes
import gc
import resource
import statistics
import sys
import threading
import time
import tracemalloc
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

__all__ = [
    "call_ms",
    "compare_latency",
    "compare_train_throughput",
    "latency_ms",
    "peak_memory_mb",
    "ratios",
    "train_throughput",
    "tune_malloc",
]

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3


def tune_malloc(threshold: int = 256 << 20) -> bool:
    """Keep large freed blocks in glibc's heap (mmap and trim thresholds raised to ``threshold`` bytes).

    Feature maps of a few MB are otherwise mmap-ed and unmapped on every allocation, and each fresh page is a page
    fault: on the 2-core test machines that made e.g. conv → multiply on a 96×112×112 map 40× slower than the two ops
    alone. Dynamic layers create more such temporaries than static ones, so the effect skews comparisons. Applies to
    the whole process (every model alike); call it once before a benchmark, demo or training run. Returns False where
    glibc's ``mallopt`` is unavailable.
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    return bool(libc.mallopt(_M_MMAP_THRESHOLD, threshold)) and bool(libc.mallopt(_M_TRIM_THRESHOLD, threshold))


LatencyCase = tuple[Callable[..., Any], tuple[Any, ...]]
TrainCase = tuple[nn.Module, Callable[[], tuple[Any, Any]], Callable[[Any, Any], Tensor]]


@contextlib.contextmanager
def _threads(threads: int | None) -> Iterator[None]:
    """Set ``torch.set_num_threads(threads)`` for the block and restore the previous value."""
    previous = torch.get_num_threads()
    if threads is not None:
        if threads < 1:
            raise ValueError(f"threads must be >= 1, got {threads}")
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def _on_cuda(args: tuple[Any, ...]) -> bool:
    return any(isinstance(a, Tensor) and a.is_cuda for a in args)


def _check_counts(**counts: int) -> None:
    for name, n in counts.items():
        if not isinstance(n, int) or n < (0 if name == "warmup" else 1):
            raise ValueError(f"{name} must be an int >= {0 if name == 'warmup' else 1}, got {n!r}")


@contextlib.contextmanager
def _eval_mode(fn: Callable[..., Any]) -> Iterator[None]:
    """Eval mode for the block when ``fn`` is a module that has one (a frozen TorchScript module has none)."""
    was_training = getattr(fn, "training", None)
    if isinstance(fn, nn.Module) and isinstance(was_training, bool):
        fn.eval()
        try:
            yield
        finally:
            fn.train(was_training)
    else:
        yield


def _time_calls(fn: Callable[..., Any], example: tuple[Any, ...], n: int, *, cuda: bool | None = None) -> list[float]:
    """``n`` timings (ms) of ``fn(*example)``; CUDA work is synchronised inside each timing (``cuda=None``: when an
    example tensor is on a GPU)."""
    cuda = _on_cuda(example) if cuda is None else cuda
    times = []
    for _ in range(n):
        if cuda:
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn(*example)
        if cuda:
            torch.cuda.synchronize()
        times.append((time.perf_counter() - t0) * 1e3)
    return times


def call_ms(fn: Callable[[], Any], *, repeats: int, warmup: int = 3, cuda: bool | None = None) -> float:
    """Median wall time (ms) of ``fn()`` as the caller runs it (no eval mode, autograd untouched): for training
    steps and replayed CUDA graphs. ``cuda=None`` synchronises the GPU around each call when one is available."""
    _check_counts(warmup=warmup, repeats=repeats)
    sync = torch.cuda.is_available() if cuda is None else cuda
    _time_calls(fn, (), warmup, cuda=sync)
    return statistics.median(_time_calls(fn, (), repeats, cuda=sync))


def latency_ms(
    fn_or_model: Callable[..., Any], *example: Any, threads: int | None = 1, warmup: int = 3, repeats: int = 20
) -> float:
    """Median wall time (ms) of one call ``fn_or_model(*example)`` under ``torch.inference_mode``.

    A model is run in eval mode (its mode is restored). ``threads`` fixes ``torch.set_num_threads`` for the
    measurement (restored afterwards; None leaves it). The default is the paper setting: batch 1 (your example),
    single thread.
    """
    _check_counts(warmup=warmup, repeats=repeats)
    with _threads(threads), _eval_mode(fn_or_model), torch.inference_mode():
        _time_calls(fn_or_model, example, warmup)
        return statistics.median(_time_calls(fn_or_model, example, repeats))


def compare_latency(
    cases: Mapping[str, LatencyCase],
    *,
    threads: int | None = 1,
    rounds: int = 5,
    repeats: int = 10,
    warmup: int = 3,
) -> dict[str, float]:
    """Median latency (ms) of several ``name → (fn, example_args)`` cases measured in interleaved rounds.

    Each round times every case ``repeats`` times; the case order rotates between rounds. The median is over all
    ``rounds · repeats`` timings of a case. Use :func:`ratios` to compare against a baseline.
    """
    if not cases:
        raise ValueError("compare_latency: cases is empty")
    _check_counts(rounds=rounds, repeats=repeats, warmup=warmup)
    names = list(cases)
    samples: dict[str, list[float]] = {name: [] for name in names}
    with _threads(threads), torch.inference_mode():
        for name in names:
            fn, example = cases[name]
            with _eval_mode(fn):
                _time_calls(fn, tuple(example), warmup)
        for r in range(rounds):
            shift = r % len(names)
            for name in names[shift:] + names[:shift]:
                fn, example = cases[name]
                with _eval_mode(fn):
                    samples[name] += _time_calls(fn, tuple(example), repeats)
    return {name: statistics.median(samples[name]) for name in names}


def ratios(results: Mapping[str, float], baseline: str) -> dict[str, float]:
    """``results[name] / results[baseline]`` for every name (the baseline maps to 1.0)."""
    if baseline not in results:
        raise KeyError(f"ratios: baseline {baseline!r} is not one of {sorted(results)}")
    base = results[baseline]
    if not base > 0:
        raise ValueError(f"ratios: baseline {baseline!r} has non-positive value {base}")
    return {name: value / base for name, value in results.items()}


def _batch_size(batch: Any) -> int:
    x = batch[0] if isinstance(batch, (tuple, list)) else batch
    if not isinstance(x, Tensor) or x.dim() == 0:
        raise ValueError("make_batch must return (inputs, targets) with inputs a batched tensor (B, ...)")
    return int(x.shape[0])


class _TrainStepper:
    """One training case: forward, loss, backward, optimizer step; restores the model's weights on close."""

    def __init__(
        self,
        model: nn.Module,
        make_batch: Callable[[], tuple[Any, Any]],
        loss_fn: Callable[[Any, Any], Tensor],
        optimizer: Callable[[list[nn.Parameter]], torch.optim.Optimizer] | None,
    ) -> None:
        self.model = model
        self.make_batch = make_batch
        self.loss_fn = loss_fn
        self.state = copy.deepcopy(model.state_dict())
        self.was_training = model.training
        params = [p for p in model.parameters() if p.requires_grad]
        if not params:
            raise ValueError("train_throughput: the model has no trainable parameters")
        self.opt = optimizer(params) if optimizer is not None else torch.optim.SGD(params, lr=1e-3, momentum=0.9)
        model.train()

    def step_ms(self) -> tuple[float, int]:
        x, y = self.make_batch()
        n = _batch_size((x, y))
        cuda = _on_cuda((x,))
        if cuda:
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        self.opt.zero_grad(set_to_none=True)
        loss = self.loss_fn(self.model(x), y)
        loss.backward()
        self.opt.step()
        if cuda:
            torch.cuda.synchronize()
        return (time.perf_counter() - t0) * 1e3, n

    def close(self) -> None:
        self.model.load_state_dict(self.state)
        self.model.train(self.was_training)


def train_throughput(
    model: nn.Module,
    make_batch: Callable[[], tuple[Any, Any]],
    loss_fn: Callable[[Any, Any], Tensor],
    *,
    threads: int | None = 2,
    steps: int = 10,
    warmup: int = 2,
    optimizer: Callable[[list[nn.Parameter]], torch.optim.Optimizer] | None = None,
) -> float:
    """Training throughput in images/s: ``batch / median step time``.

    A step is zero_grad → forward → ``loss_fn(model(x), y)`` → backward → optimizer step (default SGD with momentum;
    ``optimizer`` builds another from the trainable parameters). ``make_batch()`` returns ``(x, y)`` and is not timed.
    The model's weights and train/eval mode are restored afterwards.
    """
    return compare_train_throughput(
        {"model": (model, make_batch, loss_fn)},
        threads=threads,
        rounds=1,
        steps=steps,
        warmup=warmup,
        optimizer=optimizer,
    )["model"]


def compare_train_throughput(
    cases: Mapping[str, TrainCase],
    *,
    threads: int | None = 2,
    rounds: int = 3,
    steps: int = 5,
    warmup: int = 2,
    optimizer: Callable[[list[nn.Parameter]], torch.optim.Optimizer] | None = None,
) -> dict[str, float]:
    """Images/s of several ``name → (model, make_batch, loss_fn)`` cases, in interleaved rounds of ``steps`` steps."""
    if not cases:
        raise ValueError("compare_train_throughput: cases is empty")
    _check_counts(rounds=rounds, steps=steps, warmup=warmup)
    names = list(cases)
    steppers: dict[str, _TrainStepper] = {}
    samples: dict[str, list[float]] = {name: [] for name in names}
    with _threads(threads):
        try:
            for name in names:
                steppers[name] = _TrainStepper(*cases[name], optimizer)
                for _ in range(warmup):
                    steppers[name].step_ms()
            for r in range(rounds):
                shift = r % len(names)
                for name in names[shift:] + names[:shift]:
                    for _ in range(steps):
                        ms, n = steppers[name].step_ms()
                        samples[name].append(n / (ms / 1e3))
        finally:
            for stepper in steppers.values():
                stepper.close()
    return {name: statistics.median(samples[name]) for name in names}


def _rss_bytes() -> int | None:
    """Current resident set size from /proc (Linux); None elsewhere."""
    try:
        fields = Path("/proc/self/statm").read_text().split()
    except OSError:
        return None
    return int(fields[1]) * resource.getpagesize()


def _release_freed_memory() -> None:
    """Return freed heap memory to the OS (glibc ``malloc_trim``) so that re-used memory shows up as RSS growth."""
    gc.collect()
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):  # not glibc: nothing to trim
            ctypes.CDLL("libc.so.6").malloc_trim(0)


def _maxrss_bytes() -> int:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak) if sys.platform == "darwin" else int(peak) * 1024  # macOS reports bytes, Linux KiB


def peak_memory_mb(
    fn: Callable[[], Any], *, device: str | torch.device | None = None, interval_s: float = 0.001
) -> float:
    """Peak extra memory (MiB) used while ``fn()`` runs.

    What it measures:

    - CUDA (``device`` is a CUDA device): ``torch.cuda.max_memory_allocated`` during ``fn`` minus the allocation
      before — the tensors ``fn`` allocated at their peak (caching-allocator reserve not included).
    - CPU (default): the growth of the process' resident memory — RSS sampled every ``interval_s`` by a background
      thread (Linux ``/proc/self/statm``) and the ``ru_maxrss`` high-water mark — and ``tracemalloc``'s peak for
      Python objects; the largest of these. Freed heap memory is handed back to the OS first (glibc
      ``malloc_trim``) so re-used memory counts as growth; allocator caches it cannot release can still make RSS
      growth under-count, so prefer a fresh process per case for absolute numbers.
    """
    if device is not None and torch.device(device).type == "cuda":
        dev = torch.device(device)
        torch.cuda.synchronize(dev)
        before = torch.cuda.memory_allocated(dev)
        torch.cuda.reset_peak_memory_stats(dev)
        fn()
        torch.cuda.synchronize(dev)
        return max(0, torch.cuda.max_memory_allocated(dev) - before) / 2**20

    _release_freed_memory()
    base_rss = _rss_bytes()
    base_max = _maxrss_bytes()
    peak_rss = base_rss or 0
    stop = threading.Event()

    def sample() -> None:
        nonlocal peak_rss
        while not stop.is_set():
            rss = _rss_bytes()
            if rss is not None and rss > peak_rss:
                peak_rss = rss
            stop.wait(interval_s)

    sampler = threading.Thread(target=sample, daemon=True) if base_rss is not None else None
    tracing = tracemalloc.is_tracing()
    if not tracing:
        tracemalloc.start()
    tracemalloc.reset_peak()
    if sampler is not None:
        sampler.start()
    try:
        fn()
        end_rss = _rss_bytes()
    finally:
        stop.set()
        if sampler is not None:
            sampler.join()
        _, py_peak = tracemalloc.get_traced_memory()
        if not tracing:
            tracemalloc.stop()
    if end_rss is not None:
        peak_rss = max(peak_rss, end_rss)
    rss_growth = peak_rss - base_rss if base_rss is not None else 0
    maxrss_growth = _maxrss_bytes() - base_max
    return max(rss_growth, maxrss_growth, py_peak, 0) / 2**20
