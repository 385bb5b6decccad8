"""Seeding, RNG capture/restore, the single-process DistEnv, unwrap, and AMP helpers."""

from __future__ import annotations

import io
import random

import numpy as np
import pytest
import torch
from torch import nn

from dyncore.training import (
    DistEnv,
    all_reduce_mean,
    autocast,
    barrier,
    get_rng_state,
    init_distributed,
    make_grad_scaler,
    seed_everything,
    set_rng_state,
    shutdown,
    unwrap,
    wrap_ddp,
)


def _draw() -> tuple[float, float, torch.Tensor]:
    return random.random(), float(np.random.rand()), torch.rand(4)


@pytest.mark.quick
def test_seed_everything_and_rng_state_roundtrip() -> None:
    seed_everything(3)
    a = _draw()
    seed_everything(3)
    b = _draw()
    assert a[:2] == b[:2] and torch.equal(a[2], b[2])
    seed_everything(4)
    assert not torch.equal(_draw()[2], a[2])

    np.random.randn()  # leave a cached Gaussian in NumPy's state
    buf = io.BytesIO()
    torch.save(get_rng_state(), buf)
    buf.seek(0)
    state = torch.load(buf, weights_only=True)  # the snapshot survives the safe loader checkpoints use
    first = (_draw(), float(np.random.randn()), random.gauss(0, 1))
    set_rng_state(state)
    second = (_draw(), float(np.random.randn()), random.gauss(0, 1))
    assert first[0][:2] == second[0][:2] and torch.equal(first[0][2], second[0][2])
    assert first[1:] == second[1:]


def test_seed_and_rng_bad_input() -> None:
    with pytest.raises(ValueError, match=r"`seed` must be in \[0, 2\*\*32 - 1\], got -1"):
        seed_everything(-1)
    with pytest.raises(TypeError, match="`seed` must be an int, got float"):
        seed_everything(1.5)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"missing RNG key\(s\) \['numpy'\]"):
        set_rng_state({"python": [], "torch": torch.get_rng_state()})


def test_deterministic_flag_sets_torch_determinism() -> None:
    before = torch.are_deterministic_algorithms_enabled()
    cudnn = (torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark)
    try:
        seed_everything(0, deterministic=True)
        assert torch.are_deterministic_algorithms_enabled()
        assert torch.backends.cudnn.deterministic and not torch.backends.cudnn.benchmark
    finally:
        torch.use_deterministic_algorithms(before)
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = cudnn


def test_single_process_env_and_helpers(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(var, raising=False)
    env = init_distributed(device="cpu")
    assert (env.rank, env.world_size, env.is_main, env.is_distributed, env.backend) == (0, 1, True, False, None)
    assert env.device == torch.device("cpu")
    model = nn.Linear(3, 2)
    assert wrap_ddp(model, env) is model  # nothing to wrap for one process
    t = torch.tensor([1, 2, 3])
    out = all_reduce_mean(t, env)
    assert out.dtype == torch.float32 and torch.equal(out, torch.tensor([1.0, 2.0, 3.0]))
    barrier(env)
    shutdown(env)
    # unwrap strips DataParallel and torch.compile-style wrappers
    assert unwrap(nn.DataParallel(model)) is model
    holder = nn.Module()
    holder._orig_mod = model  # what torch.compile's OptimizedModule stores
    assert unwrap(nn.DataParallel(holder)) is model
    assert unwrap(model) is model


def test_init_distributed_bad_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WORLD_SIZE", "two")
    with pytest.raises(ValueError, match="WORLD_SIZE='two' is not an integer"):
        init_distributed()
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "5")
    with pytest.raises(ValueError, match="inconsistent torchrun environment RANK=5, WORLD_SIZE=2"):
        init_distributed()
    with pytest.raises(ValueError, match="unknown `backend` 'tcp'"):
        init_distributed("tcp")
    monkeypatch.setenv("RANK", "1")
    with pytest.raises(ValueError, match="backend 'nccl' needs a CUDA device"):
        init_distributed("nccl", device="cpu")
    with pytest.raises(TypeError, match=r"`model` must be an nn\.Module"):
        wrap_ddp("model", DistEnv())  # type: ignore[arg-type]


def test_autocast_cpu_bf16_and_scaler_noop() -> None:
    lin = nn.Linear(8, 4)
    x = torch.randn(2, 8)
    with autocast("cpu", enabled=True):
        assert lin(x).dtype == torch.bfloat16
    with autocast(torch.device("cpu"), enabled=False):
        assert lin(x).dtype == torch.float32
    scaler = make_grad_scaler("cpu")
    assert not scaler.is_enabled()
    loss = lin(x).sum()
    assert scaler.scale(loss) is loss  # pass-through on CPU
    with pytest.raises(ValueError, match="`device` must be a CPU or CUDA device, got 'meta'"):
        autocast("meta", True)
    with pytest.raises(ValueError, match="invalid `device` 'gpu0'"):
        make_grad_scaler("gpu0")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_rng_state_autocast_fp16_and_real_scaler(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(var, raising=False)
    seed_everything(5)
    state = get_rng_state()
    assert len(state["cuda"]) == torch.cuda.device_count()
    a = torch.rand(8, device="cuda")
    set_rng_state(state)
    assert torch.equal(torch.rand(8, device="cuda"), a)
    lin = nn.Linear(8, 4).cuda()
    with autocast("cuda", enabled=True):
        out = lin(torch.randn(2, 8, device="cuda"))
    assert out.dtype == torch.float16
    scaler = make_grad_scaler("cuda")
    assert scaler.is_enabled()
    loss = out.float().sum()
    assert torch.allclose(scaler.scale(loss), loss * scaler.get_scale())
    env = init_distributed()  # single process on a GPU machine: the model goes to cuda:LOCAL_RANK
    assert env.device.type == "cuda" and wrap_ddp(nn.Linear(2, 2), env).weight.is_cuda
