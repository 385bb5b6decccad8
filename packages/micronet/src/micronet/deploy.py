"""Inference form of a MicroNet (thesis Section 4.5.5: "dynamic Shift-Max is not optimized … can be sped up").

:func:`to_inference` returns an eval-only copy that computes the same function with fewer memory passes:

1. **BN folded** into the preceding conv / linear (W' = W·γ/σ, b' = β − μ·γ/σ).
2. **Permutations composed**: every run of channel shuffles (shuf(g) → perm2) becomes ONE precomputed index.
3. **Dynamic Shift-Max fused with the permutation that follows it**: the output permutation P is pushed into the
   coefficient FC (its output rows are permuted once, offline) and into the gather indices, so the block reads x
   through two gathers (x[P] and x[shift∘P]) and never materialises the unpermuted output; the coefficient map
   (h_sigmoid(t) − 0.5)·4 + init is folded into the FC as clamp(t', 0, 4) + (init − 2).
4. K = 2 fusions are computed as ``max(addcmul(a1·x, b1, x'), addcmul(a2·x, b2, x'))`` — four passes plus the two
   gathers, independent of J·K loops.
5. **Micro-Factorized depthwise composed**: the k×1 conv (+BN) and the 1×k depthwise conv (+BN) become ONE k×k
   grouped conv with the rank-1 kernels W1 ⊗ W2 and a per-column bias map (:class:`ComposedFactorizedConv`): one
   pass and no intermediate map instead of two small convs, ≈2× faster on CPU (5× for the stride-2 stem-like
   rows with channel multipliers).

:func:`export_onnx` writes ONNX and checks it with onnxruntime (max abs difference returned).
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from micronet.layers import (
    ChannelShuffle,
    ComposedFactorizedConv,
    DynamicShiftMax,
    FusedShiftMax,
    composable,
    fold_bn,
)
from micronet.model import MicroBlock, MicroNet, MicroNetHead

__all__ = [
    "ComposedFactorizedConv",
    "FusedShiftMax",
    "InferenceMicroNet",
    "Permute",
    "export_onnx",
    "fold_bn",
    "onnx_max_abs_diff",
    "optimize_torchscript",
    "to_inference",
]


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
    out: list[nn.Module] = []
    for m in mods:
        if type(m) is nn.Sequential or (isinstance(m, nn.Sequential) and not isinstance(m, MicroNetHead)):
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


def _convert_sequence(mods: list[nn.Module], compose_depthwise: bool = True) -> nn.Sequential:
    flat = _flatten(mods)
    out: list[nn.Module] = []
    channels = 0
    i = 0
    while i < len(flat):
        m = flat[i]
        if isinstance(m, nn.Conv2d):
            channels = m.out_channels
            if i + 1 < len(flat) and isinstance(flat[i + 1], nn.BatchNorm2d):
                conv = fold_bn(m, flat[i + 1])  # type: ignore[arg-type]
                i += 2
            else:
                conv = copy.deepcopy(m)
                i += 1
            nxt = flat[i] if i < len(flat) else None
            if compose_depthwise and isinstance(conv, nn.Conv2d) and nxt is not None and composable(conv, nxt):
                assert isinstance(nxt, nn.Conv2d)
                second = nxt
                if i + 1 < len(flat) and isinstance(flat[i + 1], nn.BatchNorm2d):
                    second = fold_bn(nxt, flat[i + 1])  # type: ignore[arg-type,assignment]
                    i += 1
                i += 1
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
            if not isinstance(m, nn.Identity):
                out.append(copy.deepcopy(m))
            i += 1
    return nn.Sequential(*out)


class InferenceBlock(nn.Module):
    def __init__(self, body: nn.Sequential, residual: bool) -> None:
        super().__init__()
        self.body = body
        self.residual = residual

    def forward(self, x: Tensor) -> Tensor:
        y = self.body(x)
        return x + y if self.residual else y


class InferenceHead(nn.Module):
    def __init__(self, head: MicroNetHead) -> None:
        super().__init__()
        self.fc1 = fold_bn(head.fc1[0], head.fc1[1])  # type: ignore[arg-type]
        self.fc2 = fold_bn(head.fc2[0], head.fc2[1])  # type: ignore[arg-type]  # (Linear, BatchNorm1d) pairs

    def forward(self, x: Tensor) -> Tensor:
        x = F.hardswish(F.relu6(x).mean((2, 3)))
        return F.hardswish(self.fc2(F.hardswish(self.fc1(x))))


class InferenceMicroNet(nn.Module):
    """Eval-only MicroNet: folded BN, composed permutations, fused Dynamic Shift-Max. (B, 3, H, W) → (B, classes)."""

    def __init__(self, model: MicroNet, *, compose_depthwise: bool = True) -> None:
        super().__init__()
        self.stem = _convert_sequence(list(model.stem.children()), compose_depthwise)
        blocks = []
        for b in model.blocks:
            if not isinstance(b, MicroBlock):
                raise TypeError(f"to_inference: expected MicroBlocks in model.blocks, got {type(b).__name__}")
            blocks.append(InferenceBlock(_convert_sequence(list(b.body.children()), compose_depthwise), b.residual))
        self.blocks = nn.Sequential(*blocks)
        self.head = InferenceHead(model.head)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.blocks(self.stem(x)))


@torch.no_grad()
def to_inference(model: MicroNet, *, compose_depthwise: bool = True) -> InferenceMicroNet:
    """Eval-mode inference copy of ``model`` (outputs equal to ``model.eval()(x)`` up to float rounding).

    ``compose_depthwise`` turns every Micro-Factorized depthwise pair into one k×k conv
    (:class:`ComposedFactorizedConv`): faster in eager PyTorch; TorchScript's MKLDNN path and ONNX Runtime run the
    two 1-D convs faster (measured in ``micronet bench``), so pass False for those."""
    if not isinstance(model, MicroNet):
        raise TypeError(f"to_inference: expected a MicroNet, got {type(model).__name__}")
    was = model.training
    model.eval()
    out = InferenceMicroNet(model, compose_depthwise=compose_depthwise).eval()
    model.train(was)
    return out


@torch.no_grad()
def optimize_torchscript(model: nn.Module, example: Tensor) -> torch.jit.ScriptModule:
    """Trace ``model`` (eval) on ``example``, freeze it and apply ``torch.jit.optimize_for_inference`` (MKLDNN conv
    layouts, conv+add/relu fusion on CPU). Works for :func:`to_inference` outputs and for timm baselines alike."""
    model.eval()
    return torch.jit.optimize_for_inference(torch.jit.trace(model, example))


def export_onnx(model: nn.Module, path: str | Path, *, image_size: int = 224, opset: int = 17) -> Path:
    """Export ``model`` (eval) to ONNX with a dynamic batch axis (TorchScript-based exporter)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    model.eval()
    x = torch.randn(1, 3, image_size, image_size)
    torch.onnx.export(
        model,
        (x,),
        str(path),
        input_names=["image"],
        output_names=["logits"],
        opset_version=opset,
        dynamic_axes={"image": {0: "batch"}, "logits": {0: "batch"}},
        dynamo=False,
    )
    return path


def onnx_max_abs_diff(model: nn.Module, path: str | Path, x: Tensor, **session_options: Any) -> float:
    """Run the ONNX file with onnxruntime on ``x`` and return max |ORT − PyTorch|."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = session_options.get("threads", 1)
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    (y_ort,) = sess.run(None, {"image": x.numpy()})
    with torch.no_grad():
        y = model.eval()(x)
    return float((torch.from_numpy(y_ort) - y).abs().max())
