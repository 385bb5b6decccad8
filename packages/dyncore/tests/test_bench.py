from __future__ import annotations

import time

import pytest
import torch
from torch import nn

from dyncore.bench import (
    call_ms,
    compare_latency,
    compare_train_throughput,
    latency_ms,
    peak_memory_mb,
    ratios,
    train_throughput,
)


def _tiny(width: int = 8) -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, width, 3, padding=1),
        nn.BatchNorm2d(width),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(width, 10),
    )


def test_latency_positive_threads_restored_and_mode_restored():
    torch.set_num_threads(2)
    model = _tiny().train()
    ms = latency_ms(model, torch.randn(1, 3, 16, 16), threads=1, warmup=1, repeats=5)
    assert ms > 0
    assert torch.get_num_threads() == 2
    assert model.training  # restored after eval-mode measurement
    calls = []
    latency_ms(lambda x: calls.append(torch.is_inference_mode_enabled()), torch.zeros(1), warmup=2, repeats=3)
    assert calls == [True] * 5


def test_compare_latency_interleaves_and_ratios():
    order: list[str] = []

    def case(name: str):
        return lambda x: order.append(name)

    res = compare_latency(
        {"a": (case("a"), (0,)), "b": (case("b"), (0,)), "c": (case("c"), (0,))}, rounds=3, repeats=2, warmup=1
    )
    assert set(res) == {"a", "b", "c"} and all(v > 0 for v in res.values())
    timed = order[3:]  # after one warm-up call each
    firsts = [timed[i * 6] for i in range(3)]
    assert firsts == ["a", "b", "c"]  # the case order rotates every round
    assert len(timed) == 3 * 3 * 2
    r = ratios({"a": 2.0, "b": 3.0}, "a")
    assert r == {"a": 1.0, "b": 1.5}
    with pytest.raises(KeyError, match="baseline 'z'"):
        ratios(r, "z")
    with pytest.raises(ValueError, match="repeats must be an int >= 1"):
        latency_ms(_tiny(), torch.randn(1, 3, 8, 8), repeats=0)


def test_train_throughput_restores_weights_and_threads():
    torch.manual_seed(0)
    model = _tiny().eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x, y = torch.randn(4, 3, 8, 8), torch.randint(0, 10, (4,))
    torch.set_num_threads(1)
    ips = train_throughput(model, lambda: (x, y), nn.functional.cross_entropy, threads=2, steps=3, warmup=1)
    assert ips > 0 and torch.get_num_threads() == 1
    assert not model.training
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
    res = compare_train_throughput(
        {
            "small": (_tiny(4), lambda: (x, y), nn.functional.cross_entropy),
            "big": (_tiny(16), lambda: (x, y), nn.functional.cross_entropy),
        },
        rounds=2,
        steps=2,
        warmup=1,
    )
    assert set(res) == {"small", "big"} and all(v > 0 for v in res.values())
    frozen = _tiny().requires_grad_(False)
    with pytest.raises(ValueError, match="no trainable parameters"):
        train_throughput(frozen, lambda: (x, y), nn.functional.cross_entropy, steps=1)


def test_peak_memory_sees_a_large_allocation():
    def alloc() -> None:
        t = torch.ones(64 * 2**20 // 4)  # 64 MiB, touched
        t.add_(1)
        del t

    mb = peak_memory_mb(alloc)
    assert 48 <= mb <= 1024
    assert peak_memory_mb(lambda: None) < 48


def test_call_ms_times_a_plain_callable_with_autograd_untouched() -> None:
    calls = []
    w = torch.ones(3, requires_grad=True)

    def step() -> None:
        calls.append(torch.is_grad_enabled())
        (w * 2).sum().backward()
        time.sleep(0.002)

    ms = call_ms(step, repeats=4, warmup=1, cuda=False)
    assert len(calls) == 5 and all(calls)  # warm-up + repeats, autograd on (a training step)
    assert 2.0 <= ms < 200.0
    with pytest.raises(ValueError):
        call_ms(step, repeats=0)
