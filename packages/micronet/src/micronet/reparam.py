"""The explicit inference form of MicroNet's modules (thesis Section 4.5.5: "dynamic Shift-Max is not optimized … can
be sped up").

Every module with a faster eval-only equivalent has ``reparameterize() -> nn.Module`` (the protocol of
:func:`dyncore.nn.reparameterize_model`); nothing runs a folded form behind the model's back. What the conversions
do:

1. **BN folded** into the preceding conv / linear (:func:`dyncore.nn.fold_batchnorm`): W' = W·γ/σ, b' = β − μ·γ/σ.
2. **Micro-Factorized depthwise composed**: the k×1 conv (+BN) and the 1×k depthwise conv (+BN) become ONE k×k
   grouped conv with the rank-1 kernels W1 ⊗ W2 and a per-column bias map (:class:`ComposedFactorizedConv`); the
   stem's 3×1 / 1×3 pair too.
3. **Permutations composed**: every run of channel shuffles (shuf(g) → perm2) becomes ONE precomputed index.
4. **Dynamic Shift-Max fused with the permutation that follows it** (:class:`FusedShiftMax`): the permutation P is
   pushed into the coefficient FC's output rows and into the gather indices, and the coefficient map
   (h_sigmoid(t) − 0.5)·4 + init is folded into the FC as clamp(t', 0, 4) + (init − 2).

Block-level conversions (:meth:`MicroBlock.reparameterize`, :meth:`Stem.reparameterize`,
:meth:`MicroNetHead.reparameterize`) use :func:`convert_sequence`, which applies 1–4 across the block's flat module
list (a per-layer conversion could not compose a shuffle into the Shift-Max before it).
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from micronet.layers import (
    ChannelShuffle,
    ComposedFactorizedConv,
    ConvBN,
    DynamicShiftMax,
    FusedShiftMax,
    MicroFactorizedDepthwise,
    composable,
    fold_bn,
)

__all__ = ["FusedHead", "FusedMicroBlock", "Permute", "convert_sequence", "shuffle_index"]


def shuffle_index(channels: int, groups: int) -> Tensor:
    """Index with ``x[:, idx] == channel_shuffle(x, groups)``."""
    n = channels // groups
    return torch.arange(channels).view(groups, n).t().reshape(-1)


class Permute(nn.Module):
    """A fixed channel permutation (B, C, H, W) → (B, C, H, W) as one gather."""

    index: Tensor

    def __init__(self, index: Tensor) -> None:
        super().__init__()
        self.register_buffer("index", index.clone())

    def forward(self, x: Tensor) -> Tensor:
        return x.index_select(1, self.index)


def _flatten(mods: list[nn.Module]) -> list[nn.Module]:
    """Conv/BN/activation/permutation leaves; a ConvBN or factorized pair becomes its (conv, BN) leaves."""
    out: list[nn.Module] = []
    for m in mods:
        if isinstance(m, (ConvBN, MicroFactorizedDepthwise)) or type(m) is nn.Sequential:
            out += _flatten(list(m.children()))
        else:
            out.append(m)
    return out


def _as_index(m: nn.Module, channels: int) -> Tensor | None:
    if isinstance(m, ChannelShuffle):
        return shuffle_index(channels, m.groups)
    if isinstance(m, Permute):
        return m.index
    return None


def _take_permutation(flat: list[nn.Module], i: int, channels: int) -> tuple[Tensor | None, int]:
    """Compose the run of permutations starting at ``flat[i]`` into one index; returns (index or None, next i)."""
    idx: Tensor | None = None
    while i < len(flat):
        nxt = _as_index(flat[i], channels)
        if nxt is None:
            break
        idx = nxt if idx is None else idx[nxt]
        i += 1
    return idx, i


def _fold_at(flat: list[nn.Module], i: int) -> tuple[nn.Module, int]:
    """The conv at ``flat[i]`` with a following BatchNorm folded in; returns (module, next i)."""
    conv = flat[i]
    if i + 1 < len(flat) and isinstance(flat[i + 1], nn.BatchNorm2d):
        return fold_bn(conv, flat[i + 1]), i + 2  # type: ignore[arg-type]
    return copy.deepcopy(conv), i + 1


@torch.no_grad()
def convert_sequence(mods: list[nn.Module], *, compose_depthwise: bool = True) -> nn.Sequential:
    """Eval-only equivalent of running ``mods`` in order (steps 1–4 of the module docstring)."""
    flat = _flatten(mods)
    out: list[nn.Module] = []
    channels = 0
    i = 0
    while i < len(flat):
        m = flat[i]
        if isinstance(m, nn.Conv2d):
            conv, i = _fold_at(flat, i)
            assert isinstance(conv, nn.Conv2d)
            channels = conv.out_channels
            if compose_depthwise and i < len(flat) and composable(conv, flat[i]):
                second, i = _fold_at(flat, i)
                assert isinstance(second, nn.Conv2d)
                channels = second.out_channels
                out.append(ComposedFactorizedConv(conv, second))
            else:
                out.append(conv)
        elif isinstance(m, DynamicShiftMax):
            channels = m.channels
            perm, i = _take_permutation(flat, i + 1, channels)
            out.append(FusedShiftMax(m, perm))
        elif _as_index(m, channels) is not None:
            perm, i = _take_permutation(flat, i, channels)
            assert perm is not None
            if not torch.equal(perm, torch.arange(len(perm))):
                out.append(Permute(perm))
        else:
            if not isinstance(m, (nn.Identity, nn.Dropout)):
                out.append(copy.deepcopy(m))
            i += 1
    return nn.Sequential(*out)


class FusedMicroBlock(nn.Module):
    """Eval-only Micro-Block: the converted body (+ identity residual). (B, Cin, H, W) → (B, Cout, H/s, W/s)."""

    def __init__(self, body: nn.Sequential, residual: bool) -> None:
        super().__init__()
        self.body = body
        self.residual = residual

    def forward(self, x: Tensor) -> Tensor:
        y = self.body(x)
        return x + y if self.residual else y


class FusedHead(nn.Module):
    """Eval-only classifier head: ReLU6 → GAP → h_swish → FC1 (BN1d folded) → h_swish → FC2 (BN1d folded) →
    h_swish (dropout is the identity in eval). (B, C_last, H, W) → (B, classes) or (B, OUT_CH) with pre_logits."""

    def __init__(self, fc1: nn.Linear, fc2: nn.Linear | None) -> None:
        super().__init__()
        self.fc1, self.fc2 = fc1, fc2  # fc2 None: a model without classifier (num_classes=0)

    def forward(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        x = F.hardswish(self.fc1(F.hardswish(F.relu6(x).mean((2, 3)))))
        return x if pre_logits or self.fc2 is None else F.hardswish(self.fc2(x))
