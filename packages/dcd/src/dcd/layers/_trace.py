"""Input checks and pooling as leaf functions for ``torch.fx``.

``torch.fx.symbolic_trace`` cannot branch on a traced shape (``x.dim() not in ranks``, ``h >= 2``), so the checks
and the 2×2 pooling of the dynamic branch are registered with :func:`torch.fx.wrap`: a traced graph calls them as
single nodes (the checks still run on the real tensor), while eager mode, ``torch.compile``, ``torch.export`` and the
ONNX exporters see ordinary Python code on concrete (or static) shapes. Call them as ``_trace.check_input(...)``:
``torch.fx.wrap`` patches this module's globals only.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from dyncore.nn import check_channels, check_rank
from dyncore.nn.coefficients import _avg_pool_2x2

__all__ = ["branch_pool", "check_input"]


def check_input(x: Tensor, rank: int, channels: int, who: str) -> None:
    """ValueError naming ``who`` unless ``x`` has rank ``rank`` and ``channels`` channels (dimension 1)."""
    check_rank(x, (rank,), who)
    check_channels(x, channels, who)


def branch_pool(x: Tensor, pool: int) -> Tensor:
    """The dynamic branch's pooling, as :class:`dyncore.nn.CoefficientBranch` pools: global (``pool=1``) or the
    2×2 regions of adaptive pooling (``pool=2``, 4·C features). (B, C, H, W) → (B, C·pool²)."""
    if pool == 1:
        return x.mean(dim=(2, 3))
    # python ints: the TorchScript ONNX exporter with a dynamic batch axis would otherwise trace the kernel size as
    # a tensor expression, which avg_pool2d cannot take (the map size is fixed in an exported graph)
    h, w = int(x.shape[-2]), int(x.shape[-1])
    if h >= 2 and w >= 2:
        return F.avg_pool2d(x, ((h + 1) // 2, (w + 1) // 2), (h // 2, w // 2)).flatten(1)
    return _avg_pool_2x2(x).flatten(1)


torch.fx.wrap("check_input")
torch.fx.wrap("branch_pool")
