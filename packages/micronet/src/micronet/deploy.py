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

from micronet.layers import ChannelShuffle, DynamicShiftMax, GroupPointwiseConv2d
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


def fold_bn(layer: nn.Conv2d | nn.Linear, bn: nn.BatchNorm2d | nn.BatchNorm1d) -> nn.Conv2d | nn.Linear:
    """A copy of ``layer`` with the eval-mode ``bn`` that follows it folded in (bias added)."""
    if bn.running_var is None or bn.running_mean is None:
        raise ValueError("fold_bn: the BatchNorm has no running statistics (track_running_stats=False)")
    scale = bn.weight.detach() / torch.sqrt(bn.running_var + float(bn.eps))
    shift = bn.bias.detach() - bn.running_mean * scale
    bias = shift if layer.bias is None else layer.bias.detach() * scale + shift
    if isinstance(layer, GroupPointwiseConv2d):
        out: nn.Conv2d | nn.Linear = GroupPointwiseConv2d(
            layer.in_channels, layer.out_channels, groups=layer.groups, bias=True
        )
        out.weight.data = layer.weight.detach() * scale.view(-1, 1, 1, 1)
    elif isinstance(layer, nn.Conv2d):
        out = nn.Conv2d(
            layer.in_channels,
            layer.out_channels,
            layer.kernel_size,  # type: ignore[arg-type]
            layer.stride,  # type: ignore[arg-type]
            layer.padding,  # type: ignore[arg-type]
            layer.dilation,  # type: ignore[arg-type]
            layer.groups,
            bias=True,
        )
        out.weight.data = layer.weight.detach() * scale.view(-1, 1, 1, 1)
    else:
        out = nn.Linear(layer.in_features, layer.out_features, bias=True)
        out.weight.data = layer.weight.detach() * scale.view(-1, 1)
    assert out.bias is not None
    out.bias.data = bias.clone()
    return out


class ComposedFactorizedConv(nn.Module):
    """Inference form of a (k_h×1) conv with bias b1 followed by a (1×k_w) depthwise conv with bias b2.

    conv2(conv1(x) + b1) + b2 = K ∗ x + B with K[o] = W1[o // c2] ⊗ W2[o] (c2 = C_out / C_mid, the depthwise
    multiplier), strides (s_h, s_w) and paddings (p_h, p_w) taken from the two convs, and the groups of conv1. The bias
    B = conv2(b1) + b2 is constant over rows but not over the p_w border columns (conv2 zero-pads its input, and b1
    is not zero there), so it is a (1, C_out, 1, W') map, built once per input width. Exact (tests).

    Shapes: (B, C_in, H, W) → (B, C_out, H', W').
    """

    def __init__(self, first: nn.Conv2d, second: nn.Conv2d) -> None:
        super().__init__()
        if not composable(first, second):
            raise ValueError("ComposedFactorizedConv: expects a (k×1) conv followed by a (1×k) depthwise conv")
        c_mid, c_out = second.in_channels, second.out_channels
        kh, kw = first.kernel_size[0], second.kernel_size[1]
        mid_of_out = torch.arange(c_out) // (c_out // c_mid)
        w1 = first.weight.detach()[:, :, :, 0]  # (C_mid, C_in/g, kh)
        w2 = second.weight.detach()[:, 0, 0, :]  # (C_out, kw)
        self.register_buffer("weight", (w1[mid_of_out][:, :, :, None] * w2[:, None, None, :]).contiguous())
        b1 = first.bias.detach() if first.bias is not None else torch.zeros(c_mid)
        b2 = second.bias.detach() if second.bias is not None else torch.zeros(c_out)
        self.register_buffer("b1", b1.clone())
        self.register_buffer("b2", b2.clone())
        self.register_buffer("w2", second.weight.detach().clone())
        self.stride = (first.stride[0], second.stride[1])
        self.padding = (first.padding[0], second.padding[1])  # type: ignore[index]
        self.groups = first.groups
        self.kernel_size = (kh, kw)
        self._bias_maps: dict[tuple[int, torch.dtype, torch.device], Tensor] = {}

    def bias_map(self, width: int) -> Tensor:
        """B = conv2(b1) + b2 for an input of ``width`` columns: (1, C_out, 1, W')."""
        key = (width, self.b1.dtype, self.b1.device)
        if key not in self._bias_maps:
            b1 = self.b1.view(1, -1, 1, 1).expand(1, -1, 1, width)
            self._bias_maps[key] = F.conv2d(
                b1, self.w2, self.b2, (1, self.stride[1]), (0, self.padding[1]), 1, b1.shape[1]
            )
        return self._bias_maps[key]

    def forward(self, x: Tensor) -> Tensor:
        y = F.conv2d(x, self.weight, None, self.stride, self.padding, 1, self.groups)
        return y + self.bias_map(x.shape[-1])


def composable(first: nn.Module, second: nn.Module) -> bool:
    """Whether ``first`` (k×1 conv) and ``second`` (1×k depthwise conv) can be composed into one k×k conv."""
    if type(first) is not nn.Conv2d or type(second) is not nn.Conv2d:
        return False
    return (
        first.kernel_size[1] == 1
        and second.kernel_size[0] == 1
        and first.stride[1] == 1
        and second.stride[0] == 1
        and first.padding[1] == 0  # type: ignore[index]
        and second.padding[0] == 0  # type: ignore[index]
        and first.dilation == (1, 1)
        and second.dilation == (1, 1)
        and isinstance(first.padding, tuple)
        and second.groups == second.in_channels == first.out_channels
        and second.out_channels % second.in_channels == 0
        and first.padding_mode == second.padding_mode == "zeros"
    )


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
