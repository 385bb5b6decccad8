"""Optional automatic mixed precision: bfloat16 autocast on CPU, float16 autocast + loss scaling on CUDA."""

from __future__ import annotations

import torch

__all__ = ["autocast", "make_grad_scaler"]


def _device_type(device: str | torch.device, fn: str) -> str:
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise ValueError(f"{fn}: invalid `device` {device!r} ({e})") from None
    if dev.type not in ("cpu", "cuda"):
        raise ValueError(f"{fn}: `device` must be a CPU or CUDA device, got {dev.type!r}")
    return dev.type


def autocast(device: str | torch.device, enabled: bool = True) -> torch.autocast:
    """Autocast context for ``device``: bfloat16 on CPU, float16 on CUDA; a no-op context when ``enabled`` is False.

    Usage: ``with autocast(env.device, cfg.amp): loss = criterion(model(x), y)``.
    """
    device_type = _device_type(device, "autocast")
    dtype = torch.float16 if device_type == "cuda" else torch.bfloat16
    return torch.autocast(device_type=device_type, dtype=dtype, enabled=bool(enabled))


def make_grad_scaler(device: str | torch.device, enabled: bool = True) -> torch.amp.GradScaler:
    """GradScaler for float16 training on CUDA; a disabled (pass-through) scaler on CPU or when ``enabled`` is False.

    bfloat16 (CPU autocast) has float32's exponent range and needs no loss scaling, so on CPU ``scale(loss)`` returns
    ``loss`` unchanged and ``step(optimizer)`` simply calls ``optimizer.step()``. Its state is checkpointed by
    :class:`~dyncore.training.Checkpointer`.
    """
    device_type = _device_type(device, "make_grad_scaler")
    use = bool(enabled) and device_type == "cuda"
    return torch.amp.GradScaler(device=device_type, enabled=use)
