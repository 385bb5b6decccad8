"""PyTorch DDP through ``torchrun``: one :class:`DistEnv` describing this process, plus thin helpers.

Launch with the standard launcher, e.g. ``torchrun --standalone --nproc_per_node=2 -m dcd train ...``;
:func:`init_distributed` reads ``RANK``/``WORLD_SIZE``/``LOCAL_RANK`` (and torchrun's ``MASTER_ADDR``/``MASTER_PORT``)
and falls back to a single process when they are absent. No home-made launcher.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

__all__ = ["DistEnv", "all_reduce_mean", "barrier", "init_distributed", "shutdown", "unwrap", "wrap_ddp"]

_BACKENDS = ("gloo", "nccl", "mpi")


@dataclass(frozen=True)
class DistEnv:
    """Where this process sits in a (possibly single-process) job.

    Attributes:
        rank: global rank in ``[0, world_size)``.
        world_size: number of processes (1 when not launched by torchrun).
        local_rank: rank on this machine (selects the CUDA device).
        device: the device this process should put its model and batches on.
        backend: the process-group backend (``"gloo"``/``"nccl"``), ``None`` for a single process.
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    backend: str | None = None

    @property
    def is_main(self) -> bool:
        """True on rank 0: the process that logs, writes checkpoints and shows progress bars."""
        return self.rank == 0

    @property
    def is_distributed(self) -> bool:
        """True when a process group with more than one process is active."""
        return self.world_size > 1


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise ValueError(f"init_distributed: environment variable {name}={raw!r} is not an integer") from None


def init_distributed(backend: str | None = None, *, device: str | torch.device | None = None) -> DistEnv:
    """Join the torchrun process group (or describe a single process) and return this process's :class:`DistEnv`.

    Args:
        backend: ``"gloo"``, ``"nccl"`` or ``"mpi"``; default ``"nccl"`` when CUDA is available, else ``"gloo"``.
        device: override the device (e.g. ``"cpu"`` to run DDP on CPU on a GPU machine). Default: ``cuda:LOCAL_RANK``
            when CUDA is available, else CPU.

    Raises:
        ValueError: an unknown backend, malformed torchrun variables, or ``nccl`` without CUDA.
    """
    if backend is not None and backend not in _BACKENDS:
        raise ValueError(f"init_distributed: unknown `backend` {backend!r}; expected one of {list(_BACKENDS)} or None")
    world_size = _env_int("WORLD_SIZE", 1)
    rank = _env_int("RANK", 0)
    local_rank = _env_int("LOCAL_RANK", 0)
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"init_distributed: inconsistent torchrun environment RANK={rank}, WORLD_SIZE={world_size}")

    if device is not None:
        dev = torch.device(device)
    elif torch.cuda.is_available():
        dev = torch.device("cuda", local_rank % max(torch.cuda.device_count(), 1))
    else:
        dev = torch.device("cpu")
    if dev.type == "cuda":
        torch.cuda.set_device(dev)

    if world_size == 1:
        return DistEnv(rank=0, world_size=1, local_rank=local_rank, device=dev, backend=None)

    chosen = backend or ("nccl" if dev.type == "cuda" else "gloo")
    if chosen == "nccl" and dev.type != "cuda":
        raise ValueError(f"init_distributed: backend 'nccl' needs a CUDA device, but the device is {dev}")
    if dist.is_initialized():
        if dist.get_world_size() != world_size or dist.get_rank() != rank:
            raise RuntimeError(
                "init_distributed: a process group is already initialised with "
                f"rank={dist.get_rank()}, world_size={dist.get_world_size()}, which disagrees with the environment "
                f"RANK={rank}, WORLD_SIZE={world_size}"
            )
        chosen = str(dist.get_backend())
    else:
        dist.init_process_group(backend=chosen, init_method="env://", rank=rank, world_size=world_size)
    return DistEnv(rank=rank, world_size=world_size, local_rank=local_rank, device=dev, backend=chosen)


def wrap_ddp(model: nn.Module, env: DistEnv, *, find_unused_parameters: bool = False) -> nn.Module:
    """Move ``model`` to ``env.device`` and wrap it in DistributedDataParallel when ``env`` has several processes.

    A single-process ``env`` returns the (moved) model unchanged. Set ``find_unused_parameters`` for dynamic networks
    whose forward pass can skip parameters. Use :func:`unwrap` to reach the original module (e.g. for checkpoints).
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"wrap_ddp: `model` must be an nn.Module, got {type(model).__name__}")
    model = model.to(env.device)
    if not env.is_distributed:
        return model
    if not dist.is_initialized():
        raise RuntimeError(
            "wrap_ddp: `env` says world_size > 1 but no process group is initialised; "
            "create `env` with init_distributed()"
        )
    device_ids = [env.device.index] if env.device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=device_ids, find_unused_parameters=find_unused_parameters)


def all_reduce_mean(t: torch.Tensor, env: DistEnv) -> torch.Tensor:
    """Mean of ``t`` over all processes (a new tensor; ``t`` is not modified). Integer tensors are promoted to float.

    A single-process ``env`` returns a detached copy of ``t``.
    """
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"all_reduce_mean: `t` must be a torch.Tensor, got {type(t).__name__}")
    out = t.detach().clone()
    if not (out.is_floating_point() or out.is_complex()):
        out = out.float()
    if env.is_distributed:
        dist.all_reduce(out, op=dist.ReduceOp.SUM)
        out /= env.world_size
    return out


def barrier(env: DistEnv) -> None:
    """Wait until every process reaches this point (no-op for a single process)."""
    if env.is_distributed and dist.is_initialized():
        dist.barrier()


def shutdown(env: DistEnv) -> None:
    """Leave the process group (no-op for a single process or when already destroyed)."""
    if env.is_distributed and dist.is_initialized():
        dist.destroy_process_group()


def unwrap(model: nn.Module) -> nn.Module:
    """Strip DistributedDataParallel / DataParallel and ``torch.compile`` wrappers (in any nesting order)."""
    while True:
        if isinstance(model, (DistributedDataParallel, nn.DataParallel)):
            model = model.module
        elif hasattr(model, "_orig_mod") and isinstance(model._orig_mod, nn.Module):  # torch.compile's OptimizedModule
            model = model._orig_mod
        else:
            return model
