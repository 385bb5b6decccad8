"""The DCD classifier: a fully connected layer as a 1×1 DCD at 1×1 resolution (Sec. 3.5.3, "CLS").

As released: L = 32, S = 32, out = Λ ⊙ (W0·x + b) + P(BN1d(Φ·BN1d(Qx)) + BN1d(Qx)); dropout comes before it.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from dcd.layers import _trace
from dcd.layers.dcd import DynamicConvDecomposition
from dcd.rules import classifier_rule

__all__ = ["DCDClassifier"]


class DCDClassifier(DynamicConvDecomposition):
    """Dynamic fully connected classifier. Input (B, C) pooled features → logits (B, num_classes).

    Args:
        in_features: C.
        num_classes: number of outputs.
        latent, squeeze: L and S (released: 32 and 32).
        **kwargs: forwarded to :class:`DynamicConvDecomposition` (variant, stabilised, mode, …).
    """

    def __init__(
        self,
        in_features: int,
        num_classes: int,
        *,
        latent: int | None = None,
        squeeze: int | None = None,
        **kwargs: Any,
    ) -> None:
        rule = classifier_rule()
        super().__init__(
            in_features, num_classes, 1, bias=True, latent=rule.latent if latent is None else latent,
            squeeze=rule.squeeze if squeeze is None else squeeze, pool=1, **kwargs,
        )  # fmt: skip
        self.in_features, self.num_classes = in_features, num_classes

    @classmethod
    def from_linear(cls, linear: nn.Linear, **kwargs: Any) -> DCDClassifier:
        """A DCD classifier whose W0 and bias copy ``linear``'s."""
        if not isinstance(linear, nn.Linear):
            raise TypeError(f"{cls.__name__}.from_linear: expected an nn.Linear, got {type(linear).__name__}")
        layer = cls(linear.in_features, linear.out_features, **kwargs)
        with torch.no_grad():
            layer.weight.copy_(linear.weight[:, :, None, None])
            if linear.bias is not None and layer.bias is not None:
                layer.bias.copy_(linear.bias)
        return layer.to(linear.weight.device)

    def forward(self, x: Tensor) -> Tensor:
        _trace.check_input(x, 2, self.in_features, type(self).__name__)
        return super().forward(x[:, :, None, None]).flatten(1)

    def madds(self, inputs: tuple[Tensor, ...], output: Tensor, convention: Any) -> int:
        return super().madds(inputs, output.reshape(*output.shape[:2], 1, 1), convention)
