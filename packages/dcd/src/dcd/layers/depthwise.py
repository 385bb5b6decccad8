"""Depthwise k×k DCD (Eq. 3.8): W(x) = Λ(x)·W0 + P·Φ(x)·Rᵀ, W0 and W(x) C×k².

R (k²×L_k) compresses the k² kernel elements to L_k = ⌊k²/2⌋ latent kernel elements, Φ(x) (L_k×L_k) fuses them
per sample and P (C×L_k) gives each channel its weights over the fused latent kernels. Φ fuses kernel elements, not
channels (a depthwise conv is channel separable). Not in the released code: implemented from the equation.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dcd.layers.dcd import dynamic_per_sample
from dcd.rules import check_latent, depthwise_latent, squeeze_width
from dyncore.nn import CoefficientBranch, check_channels, check_mode, check_rank, conv2d_per_sample

__all__ = ["DepthwiseDCD"]


class DepthwiseDCD(nn.Module):
    """Depthwise DCD (Eq. 3.8). x (B, C, H, W) → (B, C, H', W').

    Args:
        channels: C (input = output channels, groups = C).
        kernel_size: k (> 1).
        stride, padding (default k//2), dilation: of the depthwise conv.
        latent: L_k (default ⌊k²/2⌋; must be < k²).
        squeeze: hidden width S of the branch (default max(C, L_k²) // reduction, ≥ 4).
        use_lambda: include Λ(x) (channel-wise attention on W0).
        mode: "featurewise" (L_k latent depthwise convs, fused per sample) or "synthesis" (one kernel per sample).
    """

    def __init__(
        self,
        channels: int,
        kernel_size: int = 3,
        *,
        stride: int = 1,
        padding: int | None = None,
        dilation: int = 1,
        latent: int | None = None,
        squeeze: int | None = None,
        reduction: int = 16,
        use_lambda: bool = True,
        mode: str = "featurewise",
    ) -> None:
        super().__init__()
        who = type(self).__name__
        if not isinstance(channels, int) or channels <= 0:
            raise ValueError(f"{who}: channels must be a positive integer, got {channels!r}")
        if kernel_size <= 1:
            raise ValueError(f"{who}: kernel_size must be > 1 (a 1×1 depthwise conv has no kernel elements to fuse)")
        lk = depthwise_latent(kernel_size) if latent is None else check_latent(latent, who)
        if lk >= kernel_size * kernel_size:
            raise ValueError(f"{who}: latent L_k={lk} must be < k²={kernel_size**2}")
        self.channels, self.kernel_size, self.latent = channels, kernel_size, lk
        self.stride, self.dilation = stride, dilation
        self.padding = kernel_size // 2 * dilation if padding is None else padding
        self.mode = check_mode(mode)
        self.use_lambda = use_lambda
        self.weight = nn.Parameter(torch.empty(channels, 1, kernel_size, kernel_size))  # W0
        self.r = nn.Parameter(torch.empty(lk, kernel_size * kernel_size))  # Rᵀ (L_k, k²)
        self.p = nn.Parameter(torch.empty(channels, lk))  # P (C, L_k)
        heads = {"phi": lk * lk, **({"scale": channels} if use_lambda else {})}
        outputs = {"phi": "raw", **({"scale": "hsig2"} if use_lambda else {})}
        self.squeeze = squeeze_width(channels, lk, reduction) if squeeze is None else squeeze
        self.branch = CoefficientBranch(
            channels, heads, hidden=self.squeeze, hidden_activation="gate", output=outputs, bias=False
        )
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        nn.init.kaiming_uniform_(self.r, a=math.sqrt(5))
        nn.init.kaiming_uniform_(self.p, a=math.sqrt(5))

    def conv_weights(self) -> list[Tensor]:
        return [self.weight]

    def kernel(self, lam: Tensor | None, phi: Tensor) -> Tensor:
        """Per-sample depthwise kernels Λ·W0 + P Φ Rᵀ, (B, C, 1, k, k)."""
        k = self.kernel_size
        dyn = (self.p @ (phi @ self.r)).reshape(phi.shape[0], self.channels, 1, k, k)
        w0 = self.weight.unsqueeze(0)
        return dyn + (w0 if lam is None else lam[:, :, None, None, None] * w0)

    def forward(self, x: Tensor) -> Tensor:
        check_rank(x, (4,), type(self).__name__)
        check_channels(x, self.channels, type(self).__name__)
        coeffs = self.branch(x)
        assert isinstance(coeffs, dict)
        lam = coeffs.get("scale")
        phi = coeffs["phi"].reshape(x.shape[0], self.latent, self.latent)
        if self.mode == "synthesis":
            return conv2d_per_sample(
                x, self.kernel(lam, phi), stride=self.stride, padding=self.padding, dilation=self.dilation,
                groups=self.channels,
            )  # fmt: skip
        c, k = self.channels, self.kernel_size
        static = F.conv2d(x, self.weight, None, self.stride, self.padding, self.dilation, c)
        if lam is not None:
            static = static * lam[:, :, None, None]
        # Each channel convolved with the L_k latent kernels: (B, C·L_k, H', W').
        latent_w = self.r.reshape(1, self.latent, k, k).expand(c, -1, -1, -1).reshape(c * self.latent, 1, k, k)
        v = F.conv2d(x, latent_w, None, self.stride, self.padding, self.dilation, c)
        v = v.reshape(x.shape[0], c, self.latent, *v.shape[2:])
        mixed = torch.einsum("bmn,bcnhw->bcmhw", phi, v)
        return static + torch.einsum("cm,bcmhw->bchw", self.p, mixed)

    def madds(self, inputs: tuple[Tensor, ...], output: Tensor, convention: Any) -> int:
        """per_sample: W0 per pixel + P Φ Rᵀ once; per_pixel: W0, L_k latent convs, Φ and P at every pixel."""
        pixels = output.shape[-1] * output.shape[-2]
        k2, lk, c = self.kernel_size**2, self.latent, self.channels
        branch = sum(m.in_features * m.out_features for m in self.branch.modules() if isinstance(m, nn.Linear))
        static = c * k2 * pixels
        if dynamic_per_sample(convention):
            return static + branch + lk * lk * k2 + c * lk * k2 + c * k2
        return static + branch + (c * lk * k2 + c * lk * lk + c * lk) * pixels
