"""count_madds agrees with FlopCounterMode and with a plain forward-hook counter (eval mode)."""

from __future__ import annotations

import timm
import torch

from dcd.layers import DynamicConvDecomposition
from dyncore.complexity import MAddsConvention, count_madds, flop_counter_madds, hook_madds

PER_PIXEL = MAddsConvention(dynamic="per_pixel")


def test_count_madds_agrees_with_flop_counter_and_hooks() -> None:
    x = torch.randn(2, 3, 64, 64)
    static = timm.create_model("dcd_mobilenetv2_050_static", num_classes=10, small_input=True).eval()
    assert count_madds(static, x).total == flop_counter_madds(static, x) == hook_madds(static, x)
    model = timm.create_model("dcd_mobilenetv2_050", num_classes=10, small_input=True).eval()
    per_pixel = count_madds(model, x, convention=PER_PIXEL).total
    # the eval forward runs the released feature-wise computation, which is what the per-pixel convention counts
    assert per_pixel == flop_counter_madds(model, x)
    # a hook counter sees the branch Linears and the static convs, not a DCD layer's own functional convs/GEMMs:
    # exactly the per-pixel count minus each DCD layer's conv work (its madds less its branch)
    dcd_conv_work = 0
    outputs: dict[str, torch.Tensor] = {}
    layers = {n: m for n, m in model.named_modules() if isinstance(m, DynamicConvDecomposition)}
    hooks = [m.register_forward_hook(lambda mod, i, o, n=n: outputs.__setitem__(n, (i, o))) for n, m in layers.items()]
    with torch.no_grad():
        model(x)
    for h in hooks:
        h.remove()
    for n, m in layers.items():
        inputs, out = outputs[n]
        dcd_conv_work += m.madds(inputs, out, PER_PIXEL) - m.branch_madds()
    assert hook_madds(model, x) == per_pixel - dcd_conv_work
    assert 0 < hook_madds(model, x) < per_pixel  # (most of the work is inside the DCD layers)
