"""Adaptation layers: residual adapters T = B2(I + A·B1) with per-domain branches (Section 2.3.2), the CovNorm
transform of Eq. 2.8 with its absorption (Figure 2.4), the low-rank factorisation A ≈ C·W of the geometric baselines
(Section 2.3.3) and a LoRA conv for the peer comparison.

All layers act on (B, C, H, W) feature maps; 1×1 "matrices" are applied as 1×1 convolutions.
"""

from __future__ import annotations

import math
import re
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "AdapterBranch",
    "CovNormConv1x1",
    "DomainSwitch",
    "LoRAConv2d",
    "LowRankConv1x1",
    "MiniInit",
    "ResidualAdapter",
    "UnknownDomainError",
    "check_domain_name",
]

MiniInit = Literal["exact", "random", "identity"]
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_\-]*$")


class UnknownDomainError(KeyError):
    """A domain name that the model does not hold."""

    def __str__(self) -> str:  # KeyError quotes its message; keep it readable
        return str(self.args[0])


def check_domain_name(name: object) -> str:
    if not isinstance(name, str) or not _NAME.match(name):
        raise ValueError(f"domain name must be an identifier-like string (letters, digits, _ or -), got {name!r}")
    return name


class DomainSwitch(nn.Module):
    """Base of the modules that hold one branch per domain and route through the active one."""

    branches: nn.ModuleDict

    def __init__(self) -> None:
        super().__init__()
        self.domain: str | None = None

    @property
    def domains(self) -> list[str]:
        return list(self.branches.keys())

    def set_domain(self, name: str) -> None:
        if name not in self.branches:
            raise UnknownDomainError(f"unknown domain {name!r}; known domains: {sorted(self.branches.keys())}")
        self.domain = name

    def active(self) -> nn.Module:
        if self.domain is None:
            raise RuntimeError(f"{type(self).__name__}: no active domain; call set_domain(name) first")
        return self.branches[self.domain]


def _z_conv(weight: Tensor, x: Tensor, bias: Tensor | None = None) -> Tensor:
    """Apply an (O, I) matrix as a 1×1 convolution to x (B, I, H, W) → (B, O, H, W)."""
    return F.conv2d(x, weight[:, :, None, None], bias)


class LowRankConv1x1(nn.Module):
    """y = C·W·x + b, a rank-r 1×1 conv (FTA / SVD+FTA / PCA+FTA of Section 2.3.3, and an absorbed CovNorm site).

    W: (r, C_in) ("whitening"/input factor), C: (C_out, r) ("colouring"/output factor), b: (C_out,).
    Stored parameters: r·(C_in + C_out) + C_out.
    """

    absorbed: bool = False  # set by covnorm.absorb: this layer is a folded CovNorm site

    def __init__(self, in_channels: int, out_channels: int, rank: int, *, bias: bool = True) -> None:
        super().__init__()
        if rank <= 0 or rank > min(in_channels, out_channels):
            raise ValueError(f"LowRankConv1x1: rank must be in [1, {min(in_channels, out_channels)}], got {rank}")
        self.in_channels, self.out_channels, self.rank = in_channels, out_channels, rank
        self.W = nn.Parameter(torch.empty(rank, in_channels))
        self.C = nn.Parameter(torch.empty(out_channels, rank))
        self.bias = nn.Parameter(torch.zeros(out_channels)) if bias else None
        # FTA: Gaussian init of both factors (the thesis notes this works poorly for low rank; that is the point).
        nn.init.normal_(self.W, std=1.0 / math.sqrt(in_channels))
        nn.init.normal_(self.C, std=1.0 / math.sqrt(rank) * 0.1)

    @classmethod
    def from_factors(cls, C: Tensor, W: Tensor, bias: Tensor | None = None) -> LowRankConv1x1:
        layer = cls(W.shape[1], C.shape[0], W.shape[0], bias=bias is not None)
        with torch.no_grad():
            layer.W.copy_(W)
            layer.C.copy_(C)
            if bias is not None and layer.bias is not None:
                layer.bias.copy_(bias)
        return layer

    @classmethod
    def from_svd(cls, conv: nn.Conv2d, rank: int) -> LowRankConv1x1:
        """SVD+FTA: the best rank-r approximation A ≈ U S̃ Vᵀ = (U√S̃)(√S̃ Vᵀ) of a trained 1×1 conv."""
        A = conv.weight.detach()[:, :, 0, 0].to(torch.float64)
        U, S, Vh = torch.linalg.svd(A)
        root = S[:rank].sqrt()
        bias = conv.bias.detach() if conv.bias is not None else None
        return cls.from_factors((U[:, :rank] * root).float(), (root[:, None] * Vh[:rank]).float(), bias)

    def matrix(self) -> Tensor:
        return self.C @ self.W

    def forward(self, x: Tensor) -> Tensor:
        return _z_conv(self.C, _z_conv(self.W, x), self.bias)

    def extra_repr(self) -> str:
        return f"{self.in_channels}, {self.out_channels}, rank={self.rank}"


class CovNormConv1x1(nn.Module):
    """The CovNorm transform (Eq. 2.8): ỹ = C̃_y · M · W̃_x (x − μ_x) + μ_y.

    Whitening W̃_x = Ẽ_x^{-1/2} P̃_xᵀ (k_x, C_in), colouring C̃_y = P̃_y Ẽ_y^{1/2} (C_out, k_y), mini-adaptation M
    (k_y, k_x). The constant −C̃MW̃μ_x + μ_y is folded into the bias by :meth:`absorb`; during fine-tuning μ_x is a
    buffer and ``bias`` (initialised to μ_y) a parameter, so the constant follows M.

    In joint mode W̃, C̃ (and μ_x) are shared by the domains: pass the same Parameter objects to every domain's layer
    and leave them frozen; only M and the bias are per domain.
    """

    mean_x: Tensor
    shared: bool = False  # joint mode: W̃_x, C̃_y are the same Parameters in every domain

    def __init__(
        self,
        whitening: Tensor,
        colouring: Tensor,
        mean_x: Tensor,
        mean_y: Tensor,
        mini: Tensor,
    ) -> None:
        super().__init__()
        kx, cin = whitening.shape
        cout, ky = colouring.shape
        if mini.shape != (ky, kx):
            raise ValueError(f"CovNormConv1x1: M must be ({ky}, {kx}), got {tuple(mini.shape)}")
        self.whitening = whitening if isinstance(whitening, nn.Parameter) else nn.Parameter(whitening.float())
        self.colouring = colouring if isinstance(colouring, nn.Parameter) else nn.Parameter(colouring.float())
        self.mini = nn.Parameter(mini.float().clone())
        self.register_buffer("mean_x", mean_x.float().clone())
        self.bias = nn.Parameter(mean_y.float().clone())
        self.in_channels, self.out_channels, self.k_x, self.k_y = cin, cout, kx, ky

    def forward(self, x: Tensor) -> Tensor:
        w = _z_conv(self.whitening, x - self.mean_x[None, :, None, None])
        return _z_conv(self.colouring, _z_conv(self.mini, w), self.bias)

    def matrix(self) -> Tensor:
        """The (C_out, C_in) linear map C̃ M W̃."""
        return self.colouring @ self.mini @ self.whitening

    def absorb(self) -> LowRankConv1x1:
        """Fold M into the larger of W̃_x, C̃_y (Figure 2.4): rank min(k_x, k_y), 2·C·min(k_x, k_y) weights + bias."""
        with torch.no_grad():
            bias = self.bias - self.matrix() @ self.mean_x
            if self.k_x >= self.k_y:  # M·W̃_x is (k_y, C_in)
                return LowRankConv1x1.from_factors(self.colouring.clone(), self.mini @ self.whitening, bias)
            return LowRankConv1x1.from_factors(self.colouring @ self.mini, self.whitening.clone(), bias)

    def extra_repr(self) -> str:
        return f"{self.in_channels}, {self.out_channels}, k_x={self.k_x}, k_y={self.k_y}"


class AdapterBranch(nn.Module):
    """One domain's residual adapter T = B2(I + A·B1) (Rebuffi et al.; Section 2.4.1).

    ``a`` is any (B, C, H, W) → (B, C, H, W) map (a 1×1 conv for RA, :class:`CovNormConv1x1`, :class:`LowRankConv1x1`)
    or ``None`` for the BN-only baseline (T = B2). Statistics hooks read A's input (= B1 output) and output.
    """

    def __init__(self, channels: int, a: nn.Module | None) -> None:
        super().__init__()
        self.channels = channels
        self.b1 = nn.BatchNorm2d(channels) if a is not None else None
        self.a = a
        self.b2 = nn.BatchNorm2d(channels)

    def forward(self, x: Tensor) -> Tensor:
        if self.a is None or self.b1 is None:
            return self.b2(x)
        return self.b2(x + self.a(self.b1(x)))


def residual_a(channels: int, *, init: Literal["zero", "normal"] = "zero") -> nn.Conv2d:
    """The RA matrix A: a C×C 1×1 conv with bias (as released). ``init="zero"`` starts T at B2(x)."""
    conv = nn.Conv2d(channels, channels, 1, bias=True)
    assert conv.bias is not None
    if init == "zero":
        nn.init.zeros_(conv.weight)
        nn.init.zeros_(conv.bias)
    elif init == "normal":
        nn.init.normal_(conv.weight, std=0.01)
        nn.init.zeros_(conv.bias)
    else:
        raise ValueError(f"residual_a: init must be 'zero' or 'normal', got {init!r}")
    return conv


class ResidualAdapter(DomainSwitch):
    """The adapter inserted after a frozen conv: one :class:`AdapterBranch` per domain, routed by ``domain``.

    Args:
        channels: C, the frozen conv's output channels.
        domains: the domain names.
        kind: ``"residual"`` (T = B2(I + A·B1), A a C×C 1×1 conv with bias) or ``"bn"`` (T = B2, BN-only baseline).
    """

    def __init__(
        self,
        channels: int,
        domains: list[str] | tuple[str, ...],
        *,
        kind: Literal["residual", "bn"] = "residual",
        a_init: Literal["zero", "normal"] = "zero",
    ) -> None:
        super().__init__()
        if kind not in ("residual", "bn"):
            raise ValueError(f"ResidualAdapter: kind must be 'residual' or 'bn', got {kind!r}")
        self.channels, self.kind, self.a_init = channels, kind, a_init
        self.branches = nn.ModuleDict()
        for name in domains:
            self.add_domain(name)
        if domains:
            self.domain = next(iter(domains))

    def add_domain(self, name: str) -> AdapterBranch:
        check_domain_name(name)
        if name in self.branches:
            raise ValueError(f"ResidualAdapter: domain {name!r} already exists")
        a = residual_a(self.channels, init=self.a_init) if self.kind == "residual" else None
        self.branches[name] = AdapterBranch(self.channels, a)
        return self.branches[name]  # type: ignore[return-value]

    def branch(self, domain: str | None = None) -> AdapterBranch:
        if domain is None:
            return self.active()  # type: ignore[return-value]
        if domain not in self.branches:
            raise UnknownDomainError(f"unknown domain {domain!r}; known domains: {sorted(self.branches.keys())}")
        return self.branches[domain]  # type: ignore[return-value]

    def forward(self, x: Tensor) -> Tensor:
        return self.active()(x)

    def extra_repr(self) -> str:
        return f"channels={self.channels}, kind={self.kind}, active={self.domain!r}"


class _LoRABranch(nn.Module):
    def __init__(self, base: nn.Conv2d, rank: int) -> None:
        super().__init__()
        self.down = nn.Conv2d(
            base.in_channels,
            rank,
            base.kernel_size,  # type: ignore[arg-type]
            stride=base.stride,  # type: ignore[arg-type]
            padding=base.padding,  # type: ignore[arg-type]
            dilation=base.dilation,  # type: ignore[arg-type]
            bias=False,
        )
        self.up = nn.Conv2d(rank, base.out_channels, 1, bias=False)
        nn.init.kaiming_uniform_(self.down.weight, a=math.sqrt(5))
        nn.init.zeros_(self.up.weight)  # the update starts at zero, as in LoRA


class LoRAConv2d(DomainSwitch):
    """LoRA on a frozen conv (Hu et al.; peft's Conv2d form): y = base(x) + (α/r)·up(down(x)) with ``down`` a conv with
    the base kernel (C_in → r) and ``up`` a zero-initialised 1×1 (r → C_out). One (down, up) pair per domain.

    Stored per domain: r·(C_in·k_h·k_w + C_out).
    """

    def __init__(self, base: nn.Conv2d, domains: list[str] | tuple[str, ...], *, rank: int, alpha: float = 1.0) -> None:
        super().__init__()
        if base.groups != 1:
            raise ValueError("LoRAConv2d: grouped convolutions are not supported")
        if rank <= 0:
            raise ValueError(f"LoRAConv2d: rank must be positive, got {rank}")
        self.base = base
        for p in self.base.parameters():
            p.requires_grad_(False)
        self.rank, self.scale = rank, alpha / rank
        self.branches = nn.ModuleDict({check_domain_name(d): _LoRABranch(base, rank) for d in domains})
        if domains:
            self.domain = next(iter(domains))

    def forward(self, x: Tensor) -> Tensor:
        branch = self.active()
        return self.base(x) + self.scale * branch.up(branch.down(x))  # type: ignore[operator]
