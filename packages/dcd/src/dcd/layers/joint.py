"""k×k DCD with joint fusion of channels and kernel elements (Eq. 3.9).

W(x) = W0 ×₂ Λ(x) + Φ(x) ×₁ Q ×₂ P ×₃ R, i.e. for output channel o, input channel i and kernel element s
W[o, i, s] = Λ_o W0[o, i, s] + Σ_{a,b,m} Q[i, a] P[o, b] R[s, m] Φ[a, b, m],
with Q (C_in×L), P (C_out×L), R (k²×L_k) static and Φ(x) an L×L×L_k tensor per sample. Defaults L_k = ⌊k²/2⌋,
L = ⌊(C/L_k) / 2^⌊log2 √(C/L_k)⌋⌋. Not in the released code: implemented from the equation. (The recommended k×k
form, channel fusion alone, is :class:`DynamicConvDecomposition` with kernel_size=k.)
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dcd.layers.dcd import dynamic_per_sample
from dcd.rules import check_latent, joint_fusion_latent
from dyncore.nn import CoefficientBranch, check_channels, check_mode, check_rank, conv2d_per_sample

__all__ = ["JointFusionDCD"]


class JointFusionDCD(nn.Module):
    """k×k DCD with joint channel / kernel-element fusion (Eq. 3.9). x (B, C_in, H, W) → (B, C_out, H', W').

    Args:
        in_channels, out_channels, kernel_size (odd, > 1), stride, padding (default k//2), dilation.
        latent: L (default from :func:`dcd.rules.joint_fusion_latent` on C_in); kernel_latent: L_k (< k²).
        squeeze: branch hidden width S (default max(C_in, L²·L_k) // reduction, ≥ 4).
        use_lambda: include Λ(x).
        mode: "featurewise" (Qᵀ 1×1 → L_k latent k×k depthwise convs → Φ fusion → P 1×1) or "synthesis".
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        *,
        stride: int = 1,
        padding: int | None = None,
        dilation: int = 1,
        latent: int | None = None,
        kernel_latent: int | None = None,
        squeeze: int | None = None,
        reduction: int = 16,
        use_lambda: bool = True,
        mode: str = "featurewise",
    ) -> None:
        super().__init__()
        who = type(self).__name__
        for name, v in (("in_channels", in_channels), ("out_channels", out_channels)):
            if not isinstance(v, int) or v <= 0:
                raise ValueError(f"{who}: {name} must be a positive integer, got {v!r}")
        if kernel_size <= 1 or kernel_size % 2 == 0:
            raise ValueError(f"{who}: kernel_size must be odd and > 1, got {kernel_size}")
        default_l, default_lk = joint_fusion_latent(in_channels, kernel_size)
        lat = check_latent(default_l if latent is None else latent, who)
        lk = check_latent(default_lk if kernel_latent is None else kernel_latent, f"{who}(kernel_latent)")
        if lk >= kernel_size**2:
            raise ValueError(f"{who}: kernel_latent L_k={lk} must be < k²={kernel_size**2}")
        self.in_channels, self.out_channels, self.kernel_size = in_channels, out_channels, kernel_size
        self.stride, self.dilation = stride, dilation
        self.padding = kernel_size // 2 * dilation if padding is None else padding
        self.latent, self.kernel_latent = lat, lk
        self.mode = check_mode(mode)
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels, kernel_size, kernel_size))
        self.q = nn.Parameter(torch.empty(lat, in_channels))  # Qᵀ (L, C_in)
        self.p = nn.Parameter(torch.empty(out_channels, lat))  # P (C_out, L)
        self.r = nn.Parameter(torch.empty(lk, kernel_size * kernel_size))  # Rᵀ (L_k, k²)
        n_phi = lat * lat * lk
        heads = {"phi": n_phi, **({"scale": out_channels} if use_lambda else {})}
        outputs = {"phi": "raw", **({"scale": "hsig2"} if use_lambda else {})}
        # Φ has L²·L_k entries, so S is sized from max(C_in, L²·L_k).
        self.squeeze = max(max(in_channels, n_phi) // reduction, 4) if squeeze is None else squeeze
        self.branch = CoefficientBranch(
            in_channels, heads, hidden=self.squeeze, hidden_activation="gate", output=outputs, bias=False
        )
        for w in (self.weight, self.q, self.p, self.r):
            nn.init.kaiming_uniform_(w, a=math.sqrt(5))

    def conv_weights(self) -> list[Tensor]:
        return [self.weight]

    def _coeffs(self, x: Tensor) -> tuple[Tensor | None, Tensor]:
        out = self.branch(x)
        assert isinstance(out, dict)
        phi = out["phi"].reshape(x.shape[0], self.latent, self.latent, self.kernel_latent)  # (B, a: in, b: out, m)
        return out.get("scale"), phi

    def kernel(self, lam: Tensor | None, phi: Tensor) -> Tensor:
        """Per-sample kernels (B, C_out, C_in, k, k) of Eq. 3.9."""
        k = self.kernel_size
        t = torch.einsum("nabm,ms->nabs", phi, self.r)
        dyn = torch.einsum("ob,nabs,ai->nois", self.p, t, self.q).reshape(phi.shape[0], self.out_channels, -1, k, k)
        w0 = self.weight.unsqueeze(0)
        return dyn + (w0 if lam is None else lam[:, :, None, None, None] * w0)

    def forward(self, x: Tensor) -> Tensor:
        check_rank(x, (4,), type(self).__name__)
        check_channels(x, self.in_channels, type(self).__name__)
        lam, phi = self._coeffs(x)
        if self.mode == "synthesis":
            return conv2d_per_sample(
                x, self.kernel(lam, phi), stride=self.stride, padding=self.padding, dilation=self.dilation
            )
        k, lat, lk = self.kernel_size, self.latent, self.kernel_latent
        static = F.conv2d(x, self.weight, None, self.stride, self.padding, self.dilation)
        if lam is not None:
            static = static * lam[:, :, None, None]
        z = F.conv2d(x, self.q[:, :, None, None])  # (B, L, H, W)
        latent_w = self.r.reshape(1, lk, k, k).expand(lat, -1, -1, -1).reshape(lat * lk, 1, k, k)
        v = F.conv2d(z, latent_w, None, self.stride, self.padding, self.dilation, lat)
        v = v.reshape(x.shape[0], lat, lk, *v.shape[2:])
        u = torch.einsum("nabm,namhw->nbhw", phi, v)
        return static + F.conv2d(u, self.p[:, :, None, None])

    def madds(self, inputs: tuple[Tensor, ...], output: Tensor, convention: Any) -> int:
        """per_sample: W0 per pixel + building the kernel once; per_pixel: W0 + the latent path at every pixel."""
        hw_in = inputs[0].shape[-1] * inputs[0].shape[-2]
        pixels = output.shape[-1] * output.shape[-2]
        o, i, k2, lat, lk = self.out_channels, self.in_channels, self.kernel_size**2, self.latent, self.kernel_latent
        branch = sum(m.in_features * m.out_features for m in self.branch.modules() if isinstance(m, nn.Linear))
        static = o * i * k2 * pixels
        if dynamic_per_sample(convention):
            synth = lat * lat * lk * k2 + o * lat * lat * k2 + o * lat * i * k2 + o * i * k2
            return static + branch + synth
        return static + branch + lat * i * hw_in + (lat * lk * k2 + lat * lat * lk + o * lat) * pixels
