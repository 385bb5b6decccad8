"""Helpers for checks against reference outputs of the authors' released code.

A reference file (``released_<model>.npz``) holds a released-format state dict in compact form and what the authors'
model computes for it: ``keys`` (released names, in order), ``rule_std`` (tensor ``i`` is
``randn(shape, generator=manual_seed(crc32(key))) · rule_std[i]`` when > 0, else stored as ``x:<key>``),
``shape:<key>``, and the logits ``eval64`` / ``eval32`` / ``train64`` for :func:`reference_input`.
"""

from __future__ import annotations

import os
import zlib

import numpy as np
import torch
from torch import Tensor

__all__ = ["reference_input", "released_reference"]

OUTPUTS = ("eval64", "eval32", "train64")


def released_reference(path: str | os.PathLike[str]) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """(the released state dict rebuilt from ``path``, {"eval64", "eval32", "train64"} logits)."""
    with np.load(path) as f:
        state: dict[str, Tensor] = {}
        for key, std in zip(f["keys"], f["rule_std"], strict=True):
            key = str(key)
            if std > 0:
                shape = tuple(int(s) for s in f["shape:" + key])
                gen = torch.Generator().manual_seed(zlib.crc32(key.encode()))
                state[key] = torch.randn(shape, generator=gen, dtype=torch.float32) * float(std)
            else:
                state[key] = torch.from_numpy(np.array(f["x:" + key]))
        outputs = {k: torch.from_numpy(np.array(f[k])) for k in OUTPUTS}
    return state, outputs


def reference_input() -> Tensor:
    """The input the reference logits were computed for: randn(2, 3, 224, 224) from seed 2, float32."""
    return torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(2))
