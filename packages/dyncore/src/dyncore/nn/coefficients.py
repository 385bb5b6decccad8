"""The coefficient branch ("hyper-function") shared by every dynamic layer of the thesis.

W(x) = Λ(x)·W0 + ΔW(x): the input-dependent coefficients (Λ, Φ in DCD; a, b in Dynamic Shift-Max; π, Λ in DRT;
the routing weights of CondConv / DY-Conv) all come from the same light branch::

    x (B, C, H, W) ─ pool (global, or 2×2 → 4·C features) ─ Linear(→ hidden) ─ ReLU | gate | none
                   ─ per-head Linear(hidden → n) ─ output map (softmax/τ, sigmoid, h_sigmoid, hsig2, raw)

With ``hidden=None`` each head reads the pooled features directly (CondConv's single FC routing).
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dyncore.nn.functional import check_channels, check_rank, h_sigmoid, hsig2

__all__ = ["HIDDEN_ACTIVATIONS", "OUTPUT_MAPS", "CoefficientBranch", "apply_output_map"]

OUTPUT_MAPS = ("softmax", "sigmoid", "hsigmoid", "hsig2", "raw")
HIDDEN_ACTIVATIONS = ("relu", "gate", "none")


def apply_output_map(t: Tensor, name: str, temperature: float = 1.0) -> Tensor:
    """Map raw head outputs (B, n) to coefficients: softmax over n with temperature, sigmoid, h_sigmoid
    (ReLU6(t+3)/6), hsig2 (ReLU6(t+3)/3) or raw."""
    if name == "softmax":
        return torch.softmax(t / temperature, dim=1)
    if name == "sigmoid":
        return torch.sigmoid(t)
    if name == "hsigmoid":
        return h_sigmoid(t)
    if name == "hsig2":
        return hsig2(t)
    if name == "raw":
        return t
    raise ValueError(f"unknown output map {name!r}; choose one of {OUTPUT_MAPS}")


def _avg_pool_2x2(x: Tensor) -> Tensor:
    """Adaptive average pooling to 2×2 (regions rows [⌊iH/2⌋, ⌈(i+1)H/2⌉), as ``adaptive_avg_pool2d``), written as a
    plain average pooling with kernel ⌈H/2⌉ and stride ⌊H/2⌋ — the same, possibly overlapping, regions for any size
    ≥ 2 (7×7: rows [0, 4) and [3, 7)), one op that exports to ONNX, and 2–4× faster on CPU than
    ``adaptive_avg_pool2d``. A side of 1 takes its single row/column twice. (B, C, H, W) → (B, C, 2, 2)."""
    h, w = x.shape[-2:]
    if h >= 2 and w >= 2:
        return F.avg_pool2d(x, ((h + 1) // 2, (w + 1) // 2), (h // 2, w // 2))
    rows = [(0, (h + 1) // 2), (h // 2, h)]
    cols = [(0, (w + 1) // 2), (w // 2, w)]
    cells = [x[:, :, r0:r1, c0:c1].mean(dim=(2, 3)) for r0, r1 in rows for c0, c1 in cols]
    return torch.stack(cells, dim=2).reshape(x.shape[0], x.shape[1], 2, 2)


class CoefficientBranch(nn.Module):
    """Pool → FC → non-linearity or gate → FC per head → output map.

    Args:
        in_channels: C of the input feature map.
        heads: number of outputs (forward returns a Tensor (B, n)) or a mapping name → n (forward returns a dict).
        hidden: width S of the hidden layer; ``None`` for heads reading the pooled features directly.
        pool: 1 for global average pooling (C features), 2 for 2×2 average pooling (4·C features).
        hidden_activation: "relu"; "gate" (DCD: u ↦ u ⊙ hsig2(FC(u))); "none".
        output: the output map, one name for every head or a mapping head → name.
        temperature: softmax temperature (mutable attribute, e.g. annealed for DY-Conv).
        bias: whether the head FCs have a bias; ``hidden_bias`` (default: ``bias``) for the hidden FCs.

    Shapes: input (B, C, H, W) or already pooled (B, C); output (B, n) per head.
    """

    def __init__(
        self,
        in_channels: int,
        heads: int | Mapping[str, int],
        *,
        hidden: int | None = None,
        pool: int = 1,
        hidden_activation: str = "relu",
        output: str | Mapping[str, str] = "raw",
        temperature: float = 1.0,
        bias: bool = False,
        hidden_bias: bool | None = None,
    ) -> None:
        super().__init__()
        if in_channels <= 0:
            raise ValueError(f"CoefficientBranch: in_channels must be positive, got {in_channels}")
        if pool not in (1, 2):
            raise ValueError(f"CoefficientBranch: pool must be 1 (global) or 2 (2×2), got {pool}")
        if hidden_activation not in HIDDEN_ACTIVATIONS:
            raise ValueError(
                f"CoefficientBranch: unknown hidden_activation {hidden_activation!r}; "
                f"choose one of {HIDDEN_ACTIVATIONS}"
            )
        if hidden is not None and hidden <= 0:
            raise ValueError(f"CoefficientBranch: hidden must be positive or None, got {hidden}")
        self.single = isinstance(heads, int)
        head_sizes: dict[str, int] = {"out": heads} if isinstance(heads, int) else dict(heads)
        if not head_sizes or any(n <= 0 for n in head_sizes.values()):
            raise ValueError(f"CoefficientBranch: every head needs a positive size, got {head_sizes}")
        maps = {k: output for k in head_sizes} if isinstance(output, str) else dict(output)
        if set(maps) != set(head_sizes):
            raise ValueError(f"CoefficientBranch: output maps {sorted(maps)} do not match heads {sorted(head_sizes)}")
        for name in maps.values():
            if name not in OUTPUT_MAPS:
                raise ValueError(f"CoefficientBranch: unknown output map {name!r}; choose one of {OUTPUT_MAPS}")
        self.in_channels = in_channels
        self.pool = pool
        self.hidden_activation = hidden_activation
        self.temperature = temperature
        self.output_maps = maps
        self.head_sizes = head_sizes
        features = in_channels * pool * pool
        hidden_bias = bias if hidden_bias is None else hidden_bias
        self.fc: nn.Linear | None = None
        self.gate: nn.Linear | None = None
        width = features
        if hidden is not None:
            self.fc = nn.Linear(features, hidden, bias=hidden_bias)
            if hidden_activation == "gate":
                self.gate = nn.Linear(hidden, hidden, bias=hidden_bias)
            width = hidden
        self.heads = nn.ModuleDict({k: nn.Linear(width, n, bias=bias) for k, n in head_sizes.items()})

    @property
    def temperature(self) -> float:
        """Softmax temperature τ (> 0, finite); validated on every assignment (annealing schedules set it)."""
        return self._temperature

    @temperature.setter
    def temperature(self, value: float) -> None:
        t = float(value)
        if not math.isfinite(t) or t <= 0:
            raise ValueError(f"CoefficientBranch: temperature must be a positive finite number, got {value}")
        self._temperature = t

    def pooled(self, x: Tensor) -> Tensor:
        """(B, C, H, W) → (B, C·pool²); a (B, C) input is taken as already pooled (pool must be 1)."""
        check_rank(x, (2, 4), type(self).__name__)
        check_channels(x, self.in_channels, type(self).__name__)
        if x.dim() == 2:
            if self.pool != 1:
                raise ValueError("CoefficientBranch: a pooled (B, C) input needs pool=1")
            return x
        if self.pool == 1:
            return x.mean(dim=(2, 3))
        return _avg_pool_2x2(x).flatten(1)

    def hidden_features(self, x: Tensor) -> Tensor:
        u = self.pooled(x)
        if self.fc is None:
            return u
        u = self.fc(u)
        if self.hidden_activation == "relu":
            return F.relu(u)
        if self.gate is not None:
            return u * hsig2(self.gate(u))
        return u

    def forward(self, x: Tensor) -> Tensor | dict[str, Tensor]:
        u = self.hidden_features(x)
        out = {k: apply_output_map(head(u), self.output_maps[k], self.temperature) for k, head in self.heads.items()}
        return out["out"] if self.single else out

    def extra_repr(self) -> str:
        return f"pool={self.pool}, activation={self.hidden_activation}, maps={self.output_maps}"
