"""Shift-Max activations of MicroNet (thesis Section 4.3, Eq. 4.4) and the baselines of Tables 4.4–4.6.

Eq. 4.4:  y_i = max_{1≤k≤K} Σ_{j=0}^{J-1} a^k_{i,j}(x) · x^j_i,   x^j = the j-th group shift of x.

The shift follows the released implementation (``shift="released"``): channel c of the j-th shifted copy reads
channel ((⌊c/gc⌋ + j) mod G)·gc + ((c mod gc) + j) mod gc — the j-th next group AND the j-th next channel inside the
group, with gc = C/G. ``shift="paper"`` is the plain circular roll x_{(i + j·C/G) mod C} of the text.

Coefficients (per sample and channel, broadcast over H×W) come from :class:`dyncore.nn.CoefficientBranch`:
GAP → FC(C→S, bias) → ReLU → FC(S→J·K·C, bias) → h_sigmoid, then a = (h − 0.5)·4 + init (range init ± 2).
Output order: k-major, then j, then channel ([a1|b1|a2|b2] for J = K = 2).
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dyncore.complexity import MAddsConvention, linear_madds
from dyncore.nn import CoefficientBranch, h_sigmoid

__all__ = [
    "COEFF_SCALE",
    "DynamicReLU",
    "DynamicShiftMax",
    "FusedShiftMax",
    "SEReLU",
    "ShiftRule",
    "StaticShiftMax",
    "default_init",
    "shift_index",
]

ShiftRule = Literal["released", "paper"]
COEFF_SCALE = 4.0  # (h - 0.5) · 4: coefficients span init ± 2 (the released act_max = 2 · 1.0 times 2)
MAX_K = 4


def shift_index(channels: int, groups: int, j: int, rule: ShiftRule = "released") -> Tensor:
    """Index (C,) such that ``x[:, index]`` is the j-th group shift x^j of a (B, C, H, W) tensor (see module doc)."""
    if groups <= 0 or channels % groups:
        raise ValueError(f"shift_index: channels={channels} is not divisible by groups={groups}")
    gc = channels // groups
    c = torch.arange(channels)
    if rule == "paper":
        return (c + j * gc) % channels
    if rule == "released":
        return ((c // gc + j) % groups) * gc + (c % gc + j) % gc
    raise ValueError(f"shift_index: unknown shift rule {rule!r}; choose 'released' or 'paper'")


def default_init(k: int, j: int) -> tuple[tuple[float, ...], ...]:
    """Identity-like init: a^k_0 = 1, every other coefficient 0 (M0–M2 and every K=1 DSM of the released models)."""
    return tuple(tuple(1.0 if jj == 0 else 0.0 for jj in range(j)) for _ in range(k))


def _check_jk(who: str, channels: int, groups: int, k: int, j: int) -> None:
    if not isinstance(channels, int) or channels <= 0:
        raise ValueError(f"{who}: channels must be a positive int, got {channels!r}")
    if not isinstance(groups, int) or groups <= 0:
        raise ValueError(f"{who}: groups must be a positive int, got {groups!r}")
    if channels % groups:
        raise ValueError(f"{who}: channels={channels} is not divisible by groups={groups}")
    if not isinstance(k, int) or not 1 <= k <= MAX_K:
        raise ValueError(f"{who}: unsupported K={k!r} (number of fusions); K must be an int in 1..{MAX_K}")
    if not isinstance(j, int) or j < 1:
        raise ValueError(f"{who}: unsupported J={j!r} (number of group shifts); J must be an int ≥ 1")
    if j > groups:
        raise ValueError(
            f"{who}: unsupported J={j} with groups={groups}: J group shifts need at least J groups "
            "(shifts beyond G repeat the input)"
        )


def _check_init(who: str, init: Sequence[Sequence[float]], k: int, j: int) -> tuple[tuple[float, ...], ...]:
    rows = tuple(tuple(float(v) for v in row) for row in init)
    if len(rows) != k or any(len(r) != j for r in rows):
        raise ValueError(f"{who}: init must be K={k} rows of J={j} values, got {rows}")
    return rows


class _ShiftMaxBase(nn.Module):
    """Shared shift/fusion/max logic; subclasses provide the (B, K, J, C, 1, 1) coefficients."""

    index: Tensor  # (J-1, C) gather indices of the shifted copies
    init: Tensor  # (K·J·C,) initial coefficients, k-major then j then channel (flat: no 5-D buffer for channels_last)

    def __init__(
        self,
        who: str,
        channels: int,
        groups: int,
        k: int,
        j: int,
        init: Sequence[Sequence[float]] | None,
        shift: ShiftRule,
        add_relu: bool,
    ) -> None:
        super().__init__()
        _check_jk(who, channels, groups, k, j)
        self.channels, self.groups, self.k, self.j = channels, groups, k, j
        self.shift, self.add_relu = shift, add_relu
        self.init_values = _check_init(who, default_init(k, j) if init is None else init, k, j)
        if j > 1:
            idx = torch.stack([shift_index(channels, groups, jj, shift) for jj in range(1, j)])
        else:
            idx = torch.zeros(0, channels, dtype=torch.long)
        self.register_buffer("index", idx, persistent=False)  # (J-1, C)
        self.register_buffer(
            "init", torch.tensor(self.init_values).view(k, j, 1).expand(k, j, channels).reshape(-1).clone(), False
        )

    def shifted(self, x: Tensor) -> list[Tensor]:
        """[x^0 = x, x^1, …, x^{J-1}], each (B, C, H, W)."""
        return [x] + [x.index_select(1, self.index[jj]) for jj in range(self.j - 1)]

    def fuse(self, x: Tensor, coeffs: Tensor) -> Tensor:
        """Eq. 4.4 given coefficients (B or 1, K, J, C, 1, 1)."""
        a = coeffs.flatten(1, 2).unbind(1)  # K·J maps (B, C, 1, 1), k-major
        xs = self.shifted(x)
        out: Tensor | None = None
        for kk in range(self.k):
            z = a[kk * self.j] * xs[0]
            for jj in range(1, self.j):
                z = torch.addcmul(z, a[kk * self.j + jj], xs[jj])
            # max(out, z) written as z + relu(out − z): equal values, but autograd's maximum backward (two full-size
            # masked fills + where) is ~6× slower on CPU than relu's single threshold_backward
            out = z if out is None else z + F.relu(out - z)
        assert out is not None
        return F.relu(out) if self.add_relu else out

    def _check_input(self, x: Tensor) -> None:
        if isinstance(x, torch.fx.Proxy):  # symbolic tracing: shapes are not known (and not control flow)
            return
        if x.dim() != 4 or x.shape[1] != self.channels:
            raise ValueError(
                f"{type(self).__name__}: expected input (B, {self.channels}, H, W), got shape {tuple(x.shape)}"
            )

    def _elementwise_madds(self, x: Tensor) -> int:
        # Section 4.3: J multiply-adds per output and fusion (O(HWCJK)); the max's comparisons are not MAdds.
        per_pixel = self.channels * self.j * self.k
        return per_pixel * x.shape[-2] * x.shape[-1]

    def extra_repr(self) -> str:
        return f"channels={self.channels}, groups={self.groups}, K={self.k}, J={self.j}, shift={self.shift!r}"


class DynamicShiftMax(_ShiftMaxBase):
    """Dynamic Shift-Max (Eq. 4.4) with input-dependent coefficients a^k_{i,j}(x).

    The forward always runs the defining computation; :meth:`reparameterize` returns the eval-only
    :class:`FusedShiftMax` (coefficient map folded into the FC).

    Args:
        channels: C.
        groups: G (groups of C/G channels that the shift moves across).
        k: K, number of fusions maxed over (K = 1: a dynamic linear fusion, no max).
        j: J, number of group shifts fused (J = 1: Dynamic ReLU without bias).
        squeeze: width S of the coefficient branch's hidden FC.
        init: K rows of J initial coefficient values (default a^k_0 = 1, others 0).
        shift: "released" (next group and next channel) or "paper" (plain roll by j·C/G).
        add_relu: apply a ReLU to the output (Table 4.6 adds one for K = 1 baselines; not used by M0–M3).

    Shapes: (B, C, H, W) → (B, C, H, W).
    """

    def __init__(
        self,
        channels: int,
        *,
        groups: int,
        k: int = 2,
        j: int = 2,
        squeeze: int = 4,
        init: Sequence[Sequence[float]] | None = None,
        shift: ShiftRule = "released",
        add_relu: bool = False,
    ) -> None:
        super().__init__(type(self).__name__, channels, groups, k, j, init, shift, add_relu)
        if not isinstance(squeeze, int) or squeeze <= 0:
            raise ValueError(f"{type(self).__name__}: squeeze must be a positive int, got {squeeze!r}")
        self.squeeze = squeeze
        self.coefficients = CoefficientBranch(channels, k * j * channels, hidden=squeeze, bias=True, output="hsigmoid")

    def coefficient_values(self, x: Tensor) -> Tensor:
        """a^k_{i,j}(x) as (B, K, J, C, 1, 1): (h − 0.5)·4 + init."""
        # GAP → FC(C→S) → ReLU → FC(S→K·J·C) → h_sigmoid, through the branch's layers (its forward would also
        # check ranks, which symbolic tracing cannot evaluate)
        branch = self.coefficients
        assert branch.fc is not None
        h = h_sigmoid(branch.heads["out"](F.relu(branch.fc(x.mean(dim=(2, 3))))))
        a = (h - 0.5) * COEFF_SCALE + self.init
        return a.view(x.shape[0], self.k, self.j, self.channels, 1, 1)

    def reparameterize(self) -> nn.Module:
        """Eval-only :class:`FusedShiftMax` (h_sigmoid's affine map and the coefficient range folded into the FC)."""
        return FusedShiftMax(self, None)

    def forward(self, x: Tensor) -> Tensor:
        self._check_input(x)
        return self.fuse(x, self.coefficient_values(x))

    def madds(self, inputs: tuple[Tensor, ...], output: Tensor, convention: MAddsConvention) -> int:
        """FC MAdds of the coefficient branch (per sample); with ``convention.elementwise`` also the global pooling
        (C·H·W), the J·K fusions and the max per pixel (O(HWCJK), Section 4.3)."""
        x = inputs[0]
        fc1, fc2 = self.coefficients.fc, self.coefficients.heads["out"]
        assert isinstance(fc1, nn.Linear) and isinstance(fc2, nn.Linear)
        # the coefficients are computed once per sample: (1, n) outputs
        total = linear_madds(fc1, x.new_zeros(1, fc1.out_features)) + linear_madds(
            fc2, x.new_zeros(1, fc2.out_features)
        )
        if convention.elementwise:
            total += self.channels * x.shape[-2] * x.shape[-1] + self._elementwise_madds(x)
        return total


class StaticShiftMax(_ShiftMaxBase):
    """Shift-Max with learned static coefficients a^k_{i,j} (Table 4.2, row "static"); Eq. 4.4 without x-dependence.

    Shapes: (B, C, H, W) → (B, C, H, W). Parameters: ``weight`` (K, J, C), initialised to ``init``.
    """

    def __init__(
        self,
        channels: int,
        *,
        groups: int,
        k: int = 2,
        j: int = 2,
        init: Sequence[Sequence[float]] | None = None,
        shift: ShiftRule = "released",
        add_relu: bool = False,
    ) -> None:
        super().__init__(type(self).__name__, channels, groups, k, j, init, shift, add_relu)
        self.weight = nn.Parameter(self.init.view(k, j, channels).clone())

    def forward(self, x: Tensor) -> Tensor:
        self._check_input(x)
        return self.fuse(x, self.weight.view(1, self.k, self.j, self.channels, 1, 1))

    def madds(self, inputs: tuple[Tensor, ...], output: Tensor, convention: MAddsConvention) -> int:
        return self._elementwise_madds(inputs[0]) if convention.elementwise else 0


class DynamicReLU(DynamicShiftMax):
    """Dynamic ReLU as the J = 1 special case of Eq. 4.4: y_i = max_k a^k_i(x)·x_i (Table 4.4).

    Default init (1, 0): max(x, 0·x) = ReLU at the start of training.
    """

    def __init__(
        self, channels: int, *, k: int = 2, squeeze: int = 4, init: Sequence[Sequence[float]] | None = None
    ) -> None:
        init = ((1.0,), (0.0,))[:k] if init is None and k <= 2 else init
        super().__init__(channels, groups=1, k=k, j=1, squeeze=squeeze, init=init)


class SEReLU(DynamicShiftMax):
    """SE + ReLU as the J = 1, K = 1 case of Eq. 4.4 followed by a ReLU (Table 4.6, first row):
    y_i = ReLU(a_i(x)·x_i), a_i(x) ∈ [−1, 3] from the same squeeze-excitation branch."""

    def __init__(self, channels: int, *, squeeze: int = 4) -> None:
        super().__init__(channels, groups=1, k=1, j=1, squeeze=squeeze, add_relu=True)


class FusedShiftMax(nn.Module):
    """Inference form of :class:`DynamicShiftMax` followed by an optional channel permutation P.

    out[:, c] = max_k Σ_j a^k_{P(c),j}(x) · x[:, shift_j(P(c))]; (B, C, H, W) → (B, C, H, W).
    """

    offset: Tensor

    def __init__(self, dsm: DynamicShiftMax, perm: Tensor | None) -> None:
        super().__init__()
        c, k, j = dsm.channels, dsm.k, dsm.j
        p = torch.arange(c) if perm is None else perm
        fc1, fc2 = dsm.coefficients.fc, dsm.coefficients.heads["out"]
        assert isinstance(fc1, nn.Linear) and isinstance(fc2, nn.Linear)
        self.fc1 = copy.deepcopy(fc1)
        # rows of fc2 are (k, j, c): permute c by P, then fold h_sigmoid's +3 and the ×(4/6) scale
        rows = (torch.arange(k * j).view(-1, 1) * c + p.view(1, -1)).reshape(-1)
        self.fc2 = nn.Linear(fc2.in_features, fc2.out_features)
        assert fc2.bias is not None
        self.fc2.weight.data = fc2.weight.detach()[rows] * (4.0 / 6.0)
        self.fc2.bias.data = (fc2.bias.detach()[rows] + 3.0) * (4.0 / 6.0)
        offset = dsm.init.view(k, j, c)[:, :, p] - 2.0  # (K, J, C)
        self.register_buffer("offset", offset.reshape(1, k * j * c).clone())
        # one gather per shifted copy read (x[P], x[shift_j∘P]); x itself is read directly when P is the identity
        self.identity_first = perm is None
        gathers = [p] + [dsm.index[jj - 1][p] for jj in range(1, j)]
        if self.identity_first:
            gathers = gathers[1:]
        self.n_gathers = len(gathers)
        for i, idx in enumerate(gathers):
            self.register_buffer(f"gather{i}", idx.clone())
        self.channels, self.k, self.j = c, k, j
        self.add_relu = dsm.add_relu

    def _copies(self, x: Tensor) -> list[Tensor]:
        copies = [x] if self.identity_first else []
        for i in range(self.n_gathers):
            index: Tensor = getattr(self, f"gather{i}")
            copies.append(x.index_select(1, index))
        return copies

    def forward(self, x: Tensor) -> Tensor:
        b, c = x.shape[0], self.channels
        t = self.fc2(F.relu(self.fc1(x.mean((2, 3)))))
        # K·J coefficient maps (B, C, 1, 1), sliced on the small (B, K·J·C) tensor, never on the feature map
        coeff = (torch.clamp(t, 0.0, 4.0) + self.offset).view(b, self.k * self.j, c, 1, 1).unbind(1)
        xs = self._copies(x)
        out: Tensor | None = None
        for kk in range(self.k):
            z = coeff[kk * self.j] * xs[0]
            for jj in range(1, self.j):
                z = torch.addcmul(z, coeff[kk * self.j + jj], xs[jj])
            out = z if out is None else torch.maximum(out, z)
        assert out is not None
        return F.relu(out) if self.add_relu else out
