"""Parameter and MAdds accounting for MicroNets under the conventions the thesis mixes (Section 4.5, Table 4.7).

* ``conv_fc``: convolutions and fully connected layers only (including the DSM coefficient FCs), 224×224, one image
  — :func:`dyncore.complexity.count_madds` with ``elementwise=False``.
* ``paper``: ``conv_fc`` plus what Section 4.3 states Dynamic Shift-Max costs: its global pooling O(HWC) and the
  application of the J·K fusions O(HWCJK). This is the convention closest to the claimed 4/6/12/21M.
* ``elementwise``: every element-wise op as well (BN, activations, shuffles are free, residual adds, pooling).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from dyncore.complexity import MAddsConvention, count_madds, count_parameters
from micronet.layers.shift_max import _ShiftMaxBase

__all__ = ["ComplexityRow", "complexity"]


@dataclass(frozen=True)
class ComplexityRow:
    params: int
    conv_fc: int
    paper: int
    elementwise: int

    def as_dict(self) -> dict[str, int]:
        return {"params": self.params, "conv_fc": self.conv_fc, "paper": self.paper, "elementwise": self.elementwise}


@torch.no_grad()
def complexity(model: nn.Module, *, image_size: int | tuple[int, int] = 224, in_chans: int = 3) -> ComplexityRow:
    """Parameters and MAdds (one image of ``image_size``) of ``model`` under the three conventions above."""
    h, w = (image_size, image_size) if isinstance(image_size, int) else image_size
    was_training = model.training
    model.eval()
    x = torch.zeros(1, in_chans, h, w)
    plain = count_madds(model, x, convention=MAddsConvention(elementwise=False))
    full = count_madds(model, x, convention=MAddsConvention(elementwise=True))
    shift_names = [name for name, m in model.named_modules() if isinstance(m, _ShiftMaxBase)]
    extra = sum(full.by_module.get(n, 0) - plain.by_module.get(n, 0) for n in shift_names)
    model.train(was_training)
    return ComplexityRow(count_parameters(model), plain.total, plain.total + extra, full.total)
