"""dyncore.nn.FoldedForward: folded eval forwards, rebuilt on every kind of change, switchable, counted correctly."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from dyncore.complexity import count_madds
from dyncore.nn import FoldedForward, folded_forward, folded_forward_enabled


class ConvBN(FoldedForward, nn.Sequential):
    def __init__(self) -> None:
        super().__init__(nn.Conv2d(3, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4))
        self.builds = 0

    def build_folded(self) -> nn.Module:
        self.builds += 1
        return fuse_conv_bn_eval(self[0], self[1])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.folded()(x) if self.use_folded() else super().forward(x)


def _layer() -> ConvBN:
    torch.manual_seed(0)
    layer = ConvBN()
    with torch.no_grad():
        layer[1].running_mean.uniform_(-1, 1)
        layer[1].running_var.uniform_(0.5, 2)
        layer[1].weight.uniform_(0.5, 1.5)
    return layer.eval()


@pytest.mark.quick
def test_folded_forward_equals_the_defining_forward_and_is_rebuilt_on_change() -> None:
    layer, x = _layer(), torch.randn(2, 3, 5, 5)
    reference = layer(x).detach()  # autograd on: the defining forward
    with torch.no_grad():
        torch.testing.assert_close(layer(x), reference, atol=1e-5, rtol=1e-5)
        layer(x)
        assert layer.builds == 1  # cached while nothing changes
        layer[1].running_var.mul_(4.0)  # in place (BN statistics, an optimizer step, load_state_dict)
        with folded_forward(False):
            assert not folded_forward_enabled()
            changed = layer(x)  # the defining forward
        torch.testing.assert_close(layer(x), changed, atol=1e-5, rtol=1e-5)
        assert layer.builds == 2
        layer[1] = nn.BatchNorm2d(4).eval()  # a replaced sub-module
        torch.testing.assert_close(layer(x), layer[1](layer[0](x)), atol=1e-5, rtol=1e-5)
        assert layer.builds == 3
        layer.double()  # moved: the folded module is rebuilt in float64
        assert layer(x.double()).dtype == torch.float64 and layer.builds == 4
    assert folded_forward_enabled()
    layer.float().train()
    layer(x)  # training: the defining forward (BN batch statistics)
    assert layer.builds == 4


def test_count_madds_counts_through_the_defining_forward() -> None:
    model = nn.Sequential(_layer(), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 5 * 5, 2))
    report = count_madds(model, torch.randn(1, 3, 5, 5))
    assert report.total == 4 * 3 * 9 * 25 + 100 * 2  # conv (hooked inside ConvBN) + linear
    assert model[0].builds == 0  # never folded while counting
