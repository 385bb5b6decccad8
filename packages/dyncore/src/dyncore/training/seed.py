"""Seeding, determinism and capture/restore of every random number generator a training loop touches.

The RNG snapshot returned by :func:`get_rng_state` holds only plain Python containers, numbers, strings and CPU
tensors, so a checkpoint that contains it loads with ``torch.load(..., weights_only=True)`` (the safe default).
"""

from __future__ import annotations

import os
import random
from typing import Any

import numpy as np
import torch

__all__ = ["get_rng_state", "seed_everything", "set_rng_state"]

_MAX_SEED = 2**32 - 1  # numpy's legacy seeding accepts [0, 2**32 - 1]
_RNG_KEYS = ("python", "numpy", "torch")


def seed_everything(seed: int, *, deterministic: bool = False) -> None:
    """Seed Python's ``random``, NumPy's global RNG and torch (CPU and every CUDA device).

    Args:
        seed: integer in ``[0, 2**32 - 1]``.
        deterministic: also ask torch for deterministic kernels (``torch.use_deterministic_algorithms(True)``,
            cuDNN deterministic and no benchmark autotuning, ``CUBLAS_WORKSPACE_CONFIG`` set for cuBLAS). Ops
            without a deterministic implementation then raise instead of silently varying. ``False`` leaves the
            current determinism settings untouched.
    """
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise TypeError(f"seed_everything: `seed` must be an int, got {type(seed).__name__}")
    seed = int(seed)
    if not 0 <= seed <= _MAX_SEED:
        raise ValueError(f"seed_everything: `seed` must be in [0, 2**32 - 1], got {seed}")
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # also seeds every CUDA device (lazily if CUDA is not initialised yet)
    if deterministic:
        # cuBLAS needs a fixed workspace to be reproducible; must be set before the first cuBLAS call.
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False


def get_rng_state() -> dict[str, Any]:
    """Snapshot the global RNGs: ``{"python", "numpy", "torch"[, "cuda"]}``.

    ``"python"`` is ``random.getstate()`` with its tuples turned into lists, ``"numpy"`` the legacy MT19937 state
    with the key array as a uint32-valued int64 tensor, ``"torch"`` the CPU ByteTensor, ``"cuda"`` (only when CUDA
    is available) a list of per-device ByteTensors. Restore with :func:`set_rng_state`.
    """
    version, internal, gauss_next = random.getstate()
    np_state = np.random.get_state(legacy=True)
    assert isinstance(np_state, tuple)  # legacy=True always gives the 5-tuple
    name, keys, pos, has_gauss, cached_gaussian = np_state
    state: dict[str, Any] = {
        "python": [int(version), list(internal), gauss_next],
        "numpy": {
            "name": str(name),
            "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached_gaussian),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore a snapshot made by :func:`get_rng_state`.

    Raises:
        TypeError / ValueError: ``state`` is not such a snapshot (the message names the missing or malformed key).
    """
    if not isinstance(state, dict):
        raise TypeError(f"set_rng_state: `state` must be a dict from get_rng_state(), got {type(state).__name__}")
    missing = [k for k in _RNG_KEYS if k not in state]
    if missing:
        raise ValueError(f"set_rng_state: `state` is missing RNG key(s) {missing}; expected keys {list(_RNG_KEYS)}")
    try:
        version, internal, gauss_next = state["python"]
        random.setstate((int(version), tuple(int(v) for v in internal), gauss_next))
    except (TypeError, ValueError) as e:
        raise ValueError(f"set_rng_state: malformed 'python' RNG state ({e})") from e
    try:
        np_state = state["numpy"]
        keys = np_state["keys"]
        keys_np = keys.numpy() if isinstance(keys, torch.Tensor) else np.asarray(keys)
        np.random.set_state(
            (
                np_state["name"],
                keys_np.astype(np.uint32),
                int(np_state["pos"]),
                int(np_state["has_gauss"]),
                float(np_state["cached_gaussian"]),
            )
        )
    except (TypeError, ValueError, KeyError) as e:
        raise ValueError(f"set_rng_state: malformed 'numpy' RNG state ({e!r})") from e
    torch_state = state["torch"]
    if not isinstance(torch_state, torch.Tensor) or torch_state.dtype != torch.uint8:
        raise ValueError("set_rng_state: 'torch' RNG state must be a uint8 tensor from torch.get_rng_state()")
    torch.set_rng_state(torch_state.cpu())
    cuda_states = state.get("cuda")
    if cuda_states is not None and torch.cuda.is_available():
        n = min(len(cuda_states), torch.cuda.device_count())
        # A checkpoint from a machine with more GPUs restores the devices that exist here.
        torch.cuda.set_rng_state_all([s.cpu() for s in cuda_states[:n]])
