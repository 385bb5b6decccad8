"""Training and evaluation plumbing shared by every method package.

- seeding/determinism: :func:`seed_everything`, :func:`get_rng_state`, :func:`set_rng_state`
- DDP via torchrun: :class:`DistEnv`, :func:`init_distributed`, :func:`wrap_ddp`, :func:`all_reduce_mean`,
  :func:`barrier`, :func:`shutdown`, :func:`unwrap`
- AMP: :func:`autocast` (bf16 on CPU, fp16 on CUDA), :func:`make_grad_scaler` (no-op on CPU)
- checkpoints: :func:`save_checkpoint` (atomic), :func:`load_checkpoint`, :class:`Checkpointer` (exact resume),
  :func:`load_state_dict_strict`, errors :class:`CheckpointError`, :class:`ConfigMismatchError`,
  :class:`IncompatibleCheckpointError`
- metrics: :func:`accuracy` (top-k, percent), :class:`ConfusionMatrix` (IoU/mIoU with ignore index)
- logs: :class:`JSONLLogger`, :func:`get_logger`, :func:`progress`
- data: :class:`InfiniteLoader`
- guards: :func:`check_finite` (loss), :func:`check_finite_state` (weights), :class:`NonFiniteError`
"""

from __future__ import annotations

from dyncore.training.amp import autocast, make_grad_scaler
from dyncore.training.checkpoint import (
    Checkpointer,
    CheckpointError,
    CheckpointNotFoundError,
    ConfigMismatchError,
    IncompatibleCheckpointError,
    config_fingerprint,
    load_checkpoint,
    load_state_dict_strict,
    save_checkpoint,
)
from dyncore.training.distributed import (
    DistEnv,
    all_reduce_mean,
    barrier,
    init_distributed,
    shutdown,
    unwrap,
    wrap_ddp,
)
from dyncore.training.guards import NonFiniteError, check_finite, check_finite_state
from dyncore.training.loaders import InfiniteLoader
from dyncore.training.logs import JSONLLogger, get_logger, progress, progress_enabled
from dyncore.training.metrics import ConfusionMatrix, accuracy
from dyncore.training.seed import get_rng_state, seed_everything, set_rng_state

__all__ = [
    "CheckpointError",
    "CheckpointNotFoundError",
    "Checkpointer",
    "ConfigMismatchError",
    "ConfusionMatrix",
    "DistEnv",
    "IncompatibleCheckpointError",
    "InfiniteLoader",
    "JSONLLogger",
    "NonFiniteError",
    "accuracy",
    "all_reduce_mean",
    "autocast",
    "barrier",
    "check_finite",
    "check_finite_state",
    "config_fingerprint",
    "get_logger",
    "get_rng_state",
    "init_distributed",
    "load_checkpoint",
    "load_state_dict_strict",
    "make_grad_scaler",
    "progress",
    "progress_enabled",
    "save_checkpoint",
    "seed_everything",
    "set_rng_state",
    "shutdown",
    "unwrap",
    "wrap_ddp",
]
