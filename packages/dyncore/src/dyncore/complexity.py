"""Complexity accounting: parameters and multiply-adds (MAdds) with an explicit counting convention.

One MAdd is one multiply followed by one add (``y += w·x``); a k×k conv producing one output element from C/g input
channels costs ``(C/g)·k·k`` MAdds, bias adds are not counted. Counts are for ONE sample: the model is run once on
the given (batched) inputs and every count is divided by the batch size, so a batch of 1 or 8 gives the same answer.

How counting works (:func:`count_madds`):

1. Modules that define ``madds(self, inputs, output, convention) -> int`` (the *extension protocol*) are counted by
   that method, which returns MAdds for ONE sample; their descendants are skipped. Dynamic layers use this to state
   their cost under the convention (the dynamic part per sample — kernel synthesised once per image — or per pixel —
   applied feature-wise at every position).
2. Leaf modules of known types are counted by forward hooks: ``Conv1d/2d/3d``, ``ConvTranspose1d/2d/3d`` and
   ``Linear`` always; normalisation, activation, pooling and upsampling layers only when ``convention.elementwise``.
3. Operations that run *outside* any counted module (a functional ``F.conv2d`` with per-sample weights, ``x @ w``, a
   residual ``out += identity``) are seen by a ``TorchFunctionMode`` and charged to the innermost running module:
   conv / linear / matmul always, element-wise ops only when ``convention.elementwise``. ``einsum`` is not counted.

Leaf formulas (totals over the batch, divided by the batch size at the end):

- Conv: ``out_elems · (C_in / groups) · prod(kernel)``.
- Transposed conv: ``in_elems · (C_out / groups) · prod(kernel)`` (each input element is scattered into the kernel
  window; same as fvcore).
- Linear: ``out_elems · in_features`` (extra leading dims such as tokens are included in ``out_elems``).
- Matmul ``(…, n, k) @ (…, k, m)``: ``out_elems · k``.
- Element-wise (only when ``convention.elementwise``): normalisation layers (after folding to ``a·x + b``), activations,
  adds/multiplies and upsampling cost one MAdd per output element; average/adaptive pooling one per input element;
  max pooling ``out_elems · prod(kernel)`` comparisons.

Published counts reproduced by the tests (elementwise=False, 224×224): torchvision resnet18 1.814G, mobilenet_v2
300.8M, mobilenet_v2(width_mult=0.5) 97.1M, timm mobilenetv3_small_050 24.2M.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode

__all__ = [
    "DYNAMIC_CONVENTIONS",
    "MAddsConvention",
    "MAddsReport",
    "conv2d_madds",
    "count_madds",
    "count_parameters",
    "flop_counter_madds",
    "hook_madds",
    "linear_madds",
]

DYNAMIC_CONVENTIONS: tuple[str, ...] = ("per_sample", "per_pixel")


@dataclass(frozen=True)
class MAddsConvention:
    """How MAdds are counted.

    Args:
        dynamic: ``"per_sample"`` — the input-dependent kernel of a dynamic layer is synthesised once per sample
            (its aggregation cost is counted once, then the conv with the aggregated kernel); ``"per_pixel"`` — the
            dynamic part is applied feature-wise at every output position. Interpreted by modules implementing the
            ``madds`` protocol; static layers cost the same under both.
        elementwise: count element-wise work (normalisation, activations, pooling, adds) as well as conv/linear.
    """

    dynamic: str = "per_sample"
    elementwise: bool = False

    def __post_init__(self) -> None:
        if self.dynamic not in DYNAMIC_CONVENTIONS:
            raise ValueError(
                f"MAddsConvention.dynamic must be one of {DYNAMIC_CONVENTIONS}, got {self.dynamic!r}",
            )
        if not isinstance(self.elementwise, bool):
            raise ValueError(
                f"MAddsConvention.elementwise must be one of (True, False), got {self.elementwise!r}",
            )

    def describe(self) -> str:
        """One line stating the convention, e.g. for report headers."""
        ew = "element-wise ops counted" if self.elementwise else "conv/linear only (element-wise ops not counted)"
        return f"dynamic part {self.dynamic.replace('_', ' ')}; {ew}"


@dataclass
class MAddsReport:
    """Result of :func:`count_madds`.

    Attributes:
        total: MAdds for ONE sample.
        by_module: dotted module name → MAdds for ONE sample (only modules that did work; ``""`` is the root).
        convention: the convention used.
        module_types: dotted module name → class name (for the table).
    """

    total: int
    by_module: dict[str, int]
    convention: MAddsConvention
    module_types: dict[str, str] = field(default_factory=dict)

    @property
    def millions(self) -> float:
        """Total in millions of MAdds (M)."""
        return self.total / 1e6

    @property
    def giga(self) -> float:
        """Total in billions of MAdds (G)."""
        return self.total / 1e9

    def __str__(self) -> str:
        rows = [(name or "(model)", self.module_types.get(name, ""), n) for name, n in self.by_module.items()]
        w_name = max([len("module"), *(len(r[0]) for r in rows)])
        w_type = max([len("type"), *(len(r[1]) for r in rows)])
        lines = [
            f"MAdds per sample ({self.convention.describe()})",
            f"{'module':<{w_name}}  {'type':<{w_type}}  {'MAdds':>14}  {'share':>6}",
            "-" * (w_name + w_type + 30),
        ]
        for name, typ, n in rows:
            share = 100.0 * n / self.total if self.total else 0.0
            lines.append(f"{name:<{w_name}}  {typ:<{w_type}}  {n:>14,}  {share:>5.1f}%")
        lines.append("-" * (w_name + w_type + 30))
        lines.append(f"{'total':<{w_name}}  {'':<{w_type}}  {self.total:>14,}  ({self.millions:.2f} M)")
        return "\n".join(lines)


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters of ``model`` (shared parameters counted once); ``trainable_only`` → requires_grad only."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


# ----------------------------------------------------------------------------------------------------------------------
# Formulas (totals over whatever batch the tensors hold)


def _conv_total(in_shape: torch.Size, weight_shape: torch.Size, out_shape: torch.Size, transposed: bool) -> int:
    # weight: conv (O, I/g, *k); transposed conv (I, O/g, *k). prod(weight) = O·I/g·k = I·O/g·k.
    if transposed:
        # in_elems · (O/g) · k  =  B · spatial_in · prod(weight)
        return in_shape[0] * math.prod(in_shape[2:]) * math.prod(weight_shape)
    # out_elems · (I/g) · k  =  B · spatial_out · prod(weight)
    return out_shape[0] * math.prod(out_shape[2:]) * math.prod(weight_shape)


def _per_sample(total: int, output: Tensor, unbatched_ndim: int) -> int:
    batch = output.shape[0] if output.dim() > unbatched_ndim else 1
    return total // batch if batch else 0


def conv2d_madds(conv: nn.Module, output: Tensor) -> int:
    """MAdds of ``conv`` (``nn.Conv1d/2d/3d``) producing ``output`` (B, O, H, W), for ONE sample.

    ``out_elems · (C_in / groups) · prod(kernel)``; bias adds are not counted. For use inside ``madds`` methods.
    """
    if not isinstance(conv, nn.modules.conv._ConvNd) or conv.transposed:
        raise TypeError(f"conv2d_madds: conv must be an nn.Conv1d/2d/3d, got {type(conv).__name__}")
    spatial = len(conv.kernel_size)
    if output.dim() not in (spatial + 1, spatial + 2):
        raise ValueError(
            f"conv2d_madds: output must have {spatial + 2} dims (B, O, *spatial), got shape {tuple(output.shape)}"
        )
    per_elem = (conv.in_channels // conv.groups) * math.prod(conv.kernel_size)
    return _per_sample(output.numel() * per_elem, output, spatial + 1)


def linear_madds(linear: nn.Linear, output: Tensor) -> int:
    """MAdds of ``linear`` producing ``output`` (B, ..., out_features), for ONE sample: ``out_elems · in_features``.

    Extra dims between the batch and the features (tokens, positions) are included. For use inside ``madds`` methods.
    """
    if not isinstance(linear, nn.Linear):
        raise TypeError(f"linear_madds: linear must be an nn.Linear, got {type(linear).__name__}")
    if output.dim() == 0 or output.shape[-1] != linear.out_features:
        raise ValueError(
            f"linear_madds: output's last dim must be out_features={linear.out_features}, got shape "
            f"{tuple(output.shape)}"
        )
    return _per_sample(output.numel() * linear.in_features, output, 1)


_NORM_TYPES: tuple[type[nn.Module], ...] = (
    nn.modules.batchnorm._BatchNorm,
    nn.GroupNorm,
    nn.LayerNorm,
    nn.modules.instancenorm._InstanceNorm,
    nn.LocalResponseNorm,
)
_ACT_TYPES: tuple[type[nn.Module], ...] = (
    nn.ReLU,
    nn.ReLU6,
    nn.LeakyReLU,
    nn.PReLU,
    nn.ELU,
    nn.SELU,
    nn.CELU,
    nn.GELU,
    nn.SiLU,
    nn.Mish,
    nn.Sigmoid,
    nn.Tanh,
    nn.Hardswish,
    nn.Hardsigmoid,
    nn.Hardtanh,
    nn.Softmax,
    nn.LogSoftmax,
    nn.Softplus,
    nn.Upsample,
)
_AVG_POOL_TYPES: tuple[type[nn.Module], ...] = (
    nn.modules.pooling._AdaptiveAvgPoolNd,
    nn.modules.pooling._AdaptiveMaxPoolNd,
)
_WINDOW_POOL_TYPES: tuple[type[nn.Module], ...] = (nn.modules.pooling._AvgPoolNd, nn.modules.pooling._MaxPoolNd)


def _first_tensor(obj: Any) -> Tensor | None:
    if isinstance(obj, Tensor):
        return obj
    if isinstance(obj, (list, tuple)):
        for item in obj:
            t = _first_tensor(item)
            if t is not None:
                return t
    if isinstance(obj, dict):
        for item in obj.values():
            t = _first_tensor(item)
            if t is not None:
                return t
    return None


def _leaf_total(module: nn.Module, inputs: tuple[Any, ...], output: Any, convention: MAddsConvention) -> int | None:
    """Batch-total MAdds of a known leaf module, or None when ``module`` is not a counted leaf type."""
    x = _first_tensor(inputs)
    y = _first_tensor(output)
    if x is None or y is None:
        return None
    if isinstance(module, nn.modules.conv._ConvNd):
        spatial = len(module.kernel_size)
        if x.dim() == spatial + 1:  # unbatched (C, *spatial)
            x, y = x.unsqueeze(0), y.unsqueeze(0)
        return _conv_total(x.shape, module.weight.shape, y.shape, module.transposed)
    if isinstance(module, nn.Linear):
        return y.numel() * module.in_features
    if not convention.elementwise:
        return None
    if isinstance(module, _NORM_TYPES + _ACT_TYPES):
        return y.numel()
    if isinstance(module, _AVG_POOL_TYPES):
        return x.numel()
    if isinstance(module, _WINDOW_POOL_TYPES):
        k: Any = module.kernel_size
        return y.numel() * (math.prod(k) if isinstance(k, tuple) else int(k) ** (y.dim() - 2))
    return None


def _is_leaf_type(module: nn.Module, convention: MAddsConvention) -> bool:
    if isinstance(module, (nn.modules.conv._ConvNd, nn.Linear)):
        return True
    return convention.elementwise and isinstance(
        module, _NORM_TYPES + _ACT_TYPES + _AVG_POOL_TYPES + _WINDOW_POOL_TYPES
    )


def _has_protocol(module: nn.Module) -> bool:
    return callable(getattr(type(module), "madds", None))


# Functional ops seen outside counted modules. Names are normalised: leading/trailing "_" stripped ("__iadd__" → "iadd",
# "add_" → "add").
_ELEMENTWISE_OUT = frozenset(
    [
        "add",
        "iadd",
        "radd",
        "sub",
        "isub",
        "rsub",
        "mul",
        "imul",
        "rmul",
        "div",
        "idiv",
        "truediv",
        "itruediv",
        "rtruediv",
        "addcmul",
        "neg",
        "relu",
        "relu6",
        "hardtanh",
        "hardswish",
        "hardsigmoid",
        "sigmoid",
        "silu",
        "gelu",
        "tanh",
        "leaky_relu",
        "elu",
        "selu",
        "celu",
        "mish",
        "softplus",
        "softmax",
        "log_softmax",
        "clamp",
        "clip",
        "batch_norm",
        "layer_norm",
        "group_norm",
        "instance_norm",
        "interpolate",
        "upsample_nearest2d",
        "upsample_bilinear2d",
    ]
)
_ELEMENTWISE_IN = frozenset(
    [
        "adaptive_avg_pool1d",
        "adaptive_avg_pool2d",
        "adaptive_avg_pool3d",
        "adaptive_max_pool2d",
        "mean",
        "sum",
        "avg_pool2d",
    ]
)
_MATMUL = frozenset(["matmul", "imatmul", "rmatmul", "mm", "bmm"])
_ADDMM = frozenset(["addmm", "baddbmm", "addbmm"])


def _func_name(func: Callable[..., Any]) -> str:
    return getattr(func, "__name__", "").strip("_")


def _functional_total(
    func: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any], out: Any, convention: MAddsConvention
) -> int:
    """Batch-total MAdds of one functional op run outside any counted module (0 if not counted)."""
    name = _func_name(func)
    y = _first_tensor(out)
    if y is None:
        return 0

    def arg(i: int, key: str) -> Any:
        return args[i] if len(args) > i else kwargs.get(key)

    if name in ("conv1d", "conv2d", "conv3d", "conv_transpose1d", "conv_transpose2d", "conv_transpose3d"):
        x, w = arg(0, "input"), arg(1, "weight")
        if not (isinstance(x, Tensor) and isinstance(w, Tensor)):
            return 0
        if x.dim() == w.dim() - 1:  # unbatched (C, *spatial)
            x, y = x.unsqueeze(0), y.unsqueeze(0)
        return _conv_total(x.shape, w.shape, y.shape, name.startswith("conv_transpose"))
    if name == "linear":
        w = arg(1, "weight")
        return y.numel() * w.shape[-1] if isinstance(w, Tensor) else 0
    if name in _MATMUL or name in _ADDMM:
        if name == "rmatmul":  # self.__rmatmul__(other) = other @ self: contract over self's rows
            a = arg(0, "self")
            return y.numel() * (a.shape[-2] if a.dim() >= 2 else a.shape[0]) if isinstance(a, Tensor) else 0
        a = arg(1, "mat1") if name in _ADDMM else arg(0, "input")
        return y.numel() * a.shape[-1] if isinstance(a, Tensor) and a.dim() >= 1 else 0
    if not convention.elementwise:
        return 0
    if name in _ELEMENTWISE_OUT:
        return y.numel()
    if name in _ELEMENTWISE_IN:
        x = _first_tensor(args)
        return x.numel() if x is not None else 0
    return 0


class _Counter(TorchFunctionMode):
    """Collects batch-total and per-sample counts; tracks which module is running."""

    def __init__(self, convention: MAddsConvention) -> None:
        super().__init__()
        self.convention = convention
        self.totals: dict[str, int] = {}  # batch totals (divided by the batch size at the end)
        self.per_sample: dict[str, int] = {}  # already per sample (protocol modules)
        self.stack: list[str] = [""]
        self.counted_depth = 0  # > 0 while inside a module that is counted as a whole

    def add_total(self, name: str, n: int) -> None:
        self.totals[name] = self.totals.get(name, 0) + int(n)

    def __torch_function__(
        self,
        func: Callable[..., Any],
        types: Any,
        args: tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
    ) -> Any:
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if self.counted_depth == 0:
            n = _functional_total(func, args, kwargs, out, self.convention)
            if n:
                self.add_total(self.stack[-1], n)
        return out


@contextmanager
def _hooks(model: nn.Module, counter: _Counter) -> Iterator[None]:
    convention = counter.convention
    handles: list[torch.utils.hooks.RemovableHandle] = []
    skip_prefixes: list[str] = []
    for name, module in model.named_modules():
        if any(name.startswith(p) for p in skip_prefixes):
            continue  # descendant of a protocol module: counted by its ancestor
        protocol = _has_protocol(module)
        if protocol:
            skip_prefixes.append(f"{name}." if name else "")
        counted = protocol or _is_leaf_type(module, convention)

        def pre(mod: nn.Module, inputs: tuple[Any, ...], *, _name: str = name, _counted: bool = counted) -> None:
            counter.stack.append(_name)
            if _counted:
                counter.counted_depth += 1

        def post(
            mod: nn.Module,
            inputs: tuple[Any, ...],
            output: Any,
            *,
            _name: str = name,
            _counted: bool = counted,
            _protocol: bool = protocol,
        ) -> None:
            counter.stack.pop()
            if not _counted:
                return
            counter.counted_depth -= 1
            if counter.counted_depth > 0:
                return  # nested inside another counted module (e.g. a leaf type used within a protocol module)
            if _protocol:
                n = int(mod.madds(inputs, output, convention))  # type: ignore[operator]
                if n < 0:
                    raise ValueError(f"{type(mod).__name__}.madds returned a negative count ({n}) for {_name!r}")
                counter.per_sample[_name] = counter.per_sample.get(_name, 0) + n
            else:
                n_total = _leaf_total(mod, inputs, output, convention)
                if n_total:
                    counter.add_total(_name, n_total)

        handles.append(module.register_forward_pre_hook(pre))
        handles.append(module.register_forward_hook(post))
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def count_madds(
    model: nn.Module,
    *inputs: Any,
    convention: MAddsConvention | None = None,
    batch_size: int | None = None,
) -> MAddsReport:
    """Multiply-adds of one forward pass of ``model(*inputs)``, for ONE sample.

    Args:
        model: any ``nn.Module``; run once in eval mode under ``torch.no_grad()`` (its train/eval mode is restored).
        inputs: example inputs, batched (B, ...). Counts are divided by B.
        convention: the counting convention (default ``MAddsConvention()``: dynamic part per sample, element-wise
            ops not counted — the convention of the published MobileNet/ResNet counts).
        batch_size: the batch size to divide by; default the leading dim of the first tensor in ``inputs``.

    Returns:
        :class:`MAddsReport` with ``.total`` and ``.by_module``.
    """
    if convention is None:
        convention = MAddsConvention()
    if not isinstance(convention, MAddsConvention):
        raise TypeError(f"count_madds: convention must be a MAddsConvention, got {type(convention).__name__}")
    if not isinstance(model, nn.Module):
        raise TypeError(f"count_madds: model must be an nn.Module, got {type(model).__name__}")
    if batch_size is None:
        first = _first_tensor(inputs)
        if first is None or first.dim() == 0:
            raise ValueError("count_madds: pass at least one batched tensor input (B, ...) or batch_size=")
        batch_size = int(first.shape[0])
    if batch_size <= 0:
        raise ValueError(f"count_madds: batch_size must be positive, got {batch_size}")

    counter = _Counter(convention)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), _hooks(model, counter), counter:
            model(*inputs)
    finally:
        model.train(was_training)

    types = dict((name, type(m).__name__) for name, m in model.named_modules())
    by_module: dict[str, int] = {}
    for name, _ in model.named_modules():  # model order
        n = counter.totals.get(name, 0)
        n = round(n / batch_size) + counter.per_sample.get(name, 0)
        if n:
            by_module[name] = n
    return MAddsReport(total=sum(by_module.values()), by_module=by_module, convention=convention, module_types=types)


# ----------------------------------------------------------------------------------------------------------------------
# Independent reference counts (cross-checks of count_madds)


def _batch_of(x: Tensor) -> int:
    if not isinstance(x, Tensor) or x.dim() == 0:
        raise ValueError("reference MAdds counters need one batched tensor input (B, ...)")
    return int(x.shape[0])


@torch.no_grad()
def flop_counter_madds(model: nn.Module, x: Tensor) -> int:
    """MAdds per sample of ``model(x)`` in eval mode as ``torch.utils.flop_counter.FlopCounterMode`` counts them:
    its FLOPs (2 per multiply-add of every matmul-like aten op: convolution, mm, addmm, bmm, ...) halved."""
    from torch.utils.flop_counter import FlopCounterMode

    was_training = model.training
    model.eval()
    try:
        with FlopCounterMode(display=False) as counter:
            model(x)
    finally:
        model.train(was_training)
    return round(counter.get_total_flops() / 2 / _batch_of(x))


@torch.no_grad()
def hook_madds(model: nn.Module, x: Tensor) -> int:
    """MAdds per sample of ``model(x)`` in eval mode counted the plainest way: a forward hook on every ``nn.Conv2d``
    (output elements × C_in/groups × k_h × k_w) and ``nn.Linear`` (output elements × in_features). Work done by
    functional calls outside such modules is not seen."""
    total = [0]

    def conv_hook(m: nn.Module, _: Any, out: Tensor) -> None:
        assert isinstance(m, nn.Conv2d)
        total[0] += out.numel() * (m.in_channels // m.groups) * m.kernel_size[0] * m.kernel_size[1]

    def linear_hook(m: nn.Module, _: Any, out: Tensor) -> None:
        assert isinstance(m, nn.Linear)
        total[0] += out.numel() * m.in_features

    handles = [
        m.register_forward_hook(conv_hook if isinstance(m, nn.Conv2d) else linear_hook)
        for m in model.modules()
        if isinstance(m, (nn.Conv2d, nn.Linear))
    ]
    was_training = model.training
    model.eval()
    try:
        model(x)
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    return round(total[0] / _batch_of(x))
