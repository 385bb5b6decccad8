"""The dynamic residual of DRT (thesis Section 6.3.3, Eqs. 6.2–6.5).

A static convolution W0 gets an input-dependent residual, W(x) = W0 + ΔW(x) (Eq. 6.2), with ΔW one of

* ``"attention"``   — channel attention, ΔW = Λ(x)·W0 with Λ diagonal (C_out), sigmoid-normalised (Eq. 6.3):
  Λ = 2·σ(z) − 1 ∈ (−1, 1), so W = 2·σ(z)·W0 scales each output channel of W0 by a factor in (0, 2) and the
  zero-initialised head (z = 0) gives Λ = 0 exactly;
* ``"routing"``     — subspace routing, ΔW = Σ_{k=1..K} π_k(x)·Φ_k, π = softmax over K bases (Eq. 6.4);
* ``"combination"`` — ΔW = Λ(x)·W0 + Σ_k π_k(x)·Φ_k (Eq. 6.5).

At initialisation (``zero_init``, the default) ΔW = 0 exactly for every kind — Φ_k = 0 and the attention head's
weights are 0, so Λ = 0 and the scale 1 + Λ = 1 — and a converted network computes its static twin (up to the float
rounding of the per-sample kernel path).

The released form (and our default) uses K = 4 bases Φ_k that are 1×1 kernels (p → p, same stride, no bias) on the
3×3 conv of every ResNet bottleneck — a 3×3 kernel that only touches its centre tap — with the coefficients computed
from the *block* input: GAP → Linear(C_in → C_in/16, no bias) → ReLU → Linear(→ K, no bias) → softmax.

Coefficients come from :class:`dyncore.nn.CoefficientBranch`; the kernel is applied by
:func:`dyncore.nn.expert_mixture_conv2d`, either by per-sample *kernel synthesis* (the K residual matrices are folded
into the kernel once per image — the only form in which the thesis' "< 0.1 % extra FLOPs" holds) or *feature-wise*
(K extra 1×1 convolutions over the feature map). Both give equal outputs and gradients.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, replace
from typing import Literal, get_args

import torch
from torch import Tensor, nn

from dyncore.complexity import MAddsConvention, conv2d_madds
from dyncore.nn import (
    APPLY_MODES,
    ApplyMode,
    CoefficientBranch,
    expert_mixture_conv2d,
    expert_mixture_madds,
    fastest_mode,
    pointwise_per_sample,
)

__all__ = [
    "APPLY_CHOICES",
    "RESIDUAL_KINDS",
    "DynamicResidualConfig",
    "DynamicResidualConv2d",
    "dynamic_residual_layers",
    "residual_madds_breakdown",
    "set_apply_mode",
    "tune_apply_mode",
]

ResidualKind = Literal["attention", "routing", "combination"]
RESIDUAL_KINDS: tuple[str, ...] = get_args(ResidualKind)
ApplyChoice = Literal["auto", "synthesis", "featurewise", "gemm"]
APPLY_CHOICES: tuple[str, ...] = get_args(ApplyChoice)


@dataclass(frozen=True)
class DynamicResidualConfig:
    """How the dynamic residual ΔW(x) of Eq. 6.2 is built and applied.

    Attributes:
        kind: ``"routing"`` (Eq. 6.4, default), ``"attention"`` (Eq. 6.3) or ``"combination"`` (Eq. 6.5).
        num_bases: K, the number of residual bases Φ_k (thesis default 4; ablation K ∈ {2, 4, 6, 8}).
        basis_kernel_size: spatial size of each Φ_k; 1 is the released form (centre tap of a k×k W0).
        reduction: hidden width of the coefficient branch is C_context // reduction (16 in the released code) ...
        min_hidden: ... but never below this (a 3-channel image input would otherwise give 0).
        zero_init: Φ_k and the attention head's weights start at zero, so ΔW = 0 (Λ = 0, scale 1 exactly) and a
            converted model computes its static twin at initialisation (``False``: Kaiming-uniform Φ_k and PyTorch's
            Linear init for the attention head, for tests that need a non-trivial residual).
        apply: ``"synthesis"``, ``"featurewise"``, ``"gemm"`` (W0 as the plain conv, ΔW(x) synthesised per sample
            and applied as one batched GEMM; 1×1 bases on an ungrouped conv) or ``"auto"`` (``"gemm"`` where it
            applies — the fastest on CPU at batch 1 and 32 — else synthesis for batches ≤ ``synthesis_max_batch``
            and feature-wise above; :func:`tune_apply_mode` replaces the rule by a measurement).
        synthesis_max_batch: the batch threshold of ``"auto"``.
    """

    kind: ResidualKind = "routing"
    num_bases: int = 4
    basis_kernel_size: int = 1
    reduction: int = 16
    min_hidden: int = 4
    zero_init: bool = True
    apply: ApplyChoice = "auto"
    synthesis_max_batch: int = 8

    def __post_init__(self) -> None:
        if self.kind not in RESIDUAL_KINDS:
            raise ValueError(f"DynamicResidualConfig.kind must be one of {RESIDUAL_KINDS}, got {self.kind!r}")
        if not isinstance(self.num_bases, int) or self.num_bases < 1:
            raise ValueError(f"DynamicResidualConfig.num_bases (K) must be an integer >= 1, got {self.num_bases!r}")
        if self.basis_kernel_size < 1 or self.basis_kernel_size % 2 == 0:
            raise ValueError(
                f"DynamicResidualConfig.basis_kernel_size must be a positive odd integer, got {self.basis_kernel_size}"
            )
        if self.reduction < 1 or self.min_hidden < 1:
            raise ValueError(
                f"DynamicResidualConfig: reduction and min_hidden must be >= 1, got {self.reduction}, {self.min_hidden}"
            )
        if self.apply not in APPLY_CHOICES:
            raise ValueError(f"DynamicResidualConfig.apply must be one of {APPLY_CHOICES}, got {self.apply!r}")

    @property
    def uses_routing(self) -> bool:
        return self.kind in ("routing", "combination")

    @property
    def uses_attention(self) -> bool:
        return self.kind in ("attention", "combination")


class DynamicResidualConv2d(nn.Conv2d):
    """A conv with a dynamic residual, W(x) = W0 + ΔW(x) (Eqs. 6.2–6.5).

    It *is* an ``nn.Conv2d`` holding W0 as ``weight``/``bias``, so a static checkpoint loads into it unchanged; the
    new parameters are ``bases`` (Φ, shape (K, C_out, C_in/groups, kb, kb)) and ``coefficients`` (the branch).

    Args:
        in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias: as ``nn.Conv2d``
            (``padding_mode`` must be "zeros").
        config: :class:`DynamicResidualConfig` (default: subspace routing, K = 4, 1×1 bases, zero-initialised).
        context_channels: channels of the tensor the coefficients are computed from (default ``in_channels``:
            the conv's own input). The ResNet bottleneck passes its *block* input as ``context``.

    Shapes: ``forward(x, context=None)`` with x (B, C_in, H, W), context (B, C_ctx, H', W') or pooled (B, C_ctx);
    returns (B, C_out, H_out, W_out).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, int],
        stride: int | tuple[int, int] = 1,
        padding: int | tuple[int, int] = 0,
        dilation: int | tuple[int, int] = 1,
        groups: int = 1,
        bias: bool = True,
        *,
        config: DynamicResidualConfig | None = None,
        context_channels: int | None = None,
    ) -> None:
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias)
        if isinstance(padding, str):
            raise ValueError(f"DynamicResidualConv2d: padding must be numeric, got {padding!r}")
        self.config = config = config or DynamicResidualConfig()
        kb = config.basis_kernel_size
        if kb > min(self.kernel_size):
            raise ValueError(
                f"DynamicResidualConv2d: basis_kernel_size={kb} exceeds the static kernel {self.kernel_size}"
            )
        self.context_channels = context_channels or in_channels
        hidden = max(self.context_channels // config.reduction, config.min_hidden)
        heads: dict[str, int] = {}
        maps: dict[str, str] = {}
        if config.uses_routing:
            heads["routing"], maps["routing"] = config.num_bases, "softmax"
        if config.uses_attention:
            # raw z; Λ = 2σ(z) − 1 in dynamic_coefficients (a sigmoid shifted so that z = 0 ⇒ Λ = 0 exactly)
            heads["attention"], maps["attention"] = out_channels, "raw"
        # Released routing branch: GAP → Linear(C → C/16, no bias) → ReLU → Linear(→ K, no bias) → softmax.
        self.coefficients = CoefficientBranch(
            self.context_channels, heads, hidden=hidden, hidden_activation="relu", output=maps, bias=False
        )
        self.bases: nn.Parameter | None = None
        if config.uses_routing:
            self.bases = nn.Parameter(torch.empty(config.num_bases, out_channels, in_channels // groups, kb, kb))
        self.reset_residual()

    @classmethod
    def from_conv(
        cls, conv: nn.Conv2d, *, config: DynamicResidualConfig | None = None, context_channels: int | None = None
    ) -> DynamicResidualConv2d:
        """Wrap an existing conv: W0 (and bias) are copied; the residual is new (zero by default)."""
        if not isinstance(conv, nn.Conv2d):
            raise TypeError(f"DynamicResidualConv2d.from_conv: expected an nn.Conv2d, got {type(conv).__name__}")
        if conv.padding_mode != "zeros" or isinstance(conv.padding, str):
            raise ValueError(
                "DynamicResidualConv2d.from_conv: only numeric zero padding is supported, got "
                f"padding={conv.padding!r}, padding_mode={conv.padding_mode!r}"
            )
        layer = cls(
            conv.in_channels,
            conv.out_channels,
            conv.kernel_size,  # type: ignore[arg-type]
            conv.stride,  # type: ignore[arg-type]
            conv.padding,  # type: ignore[arg-type]
            conv.dilation,  # type: ignore[arg-type]
            conv.groups,
            conv.bias is not None,
            config=config,
            context_channels=context_channels,
        )
        layer = layer.to(device=conv.weight.device, dtype=conv.weight.dtype)
        with torch.no_grad():
            layer.weight.copy_(conv.weight)
            if conv.bias is not None and layer.bias is not None:
                layer.bias.copy_(conv.bias)
        layer.weight.requires_grad_(conv.weight.requires_grad)
        return layer

    def reset_residual(self) -> None:
        """``zero_init``: Φ_k = 0 and the attention head's weights = 0 (ΔW = 0: the static conv exactly); otherwise
        Φ_k Kaiming-uniform like a conv. The hidden FC and the routing head keep PyTorch's Linear init (the routing
        softmax is harmless: it multiplies Φ_k = 0)."""
        attention = self.coefficients.heads["attention"] if self.config.uses_attention else None
        if self.config.zero_init:
            if self.bases is not None:
                nn.init.zeros_(self.bases)
            if attention is not None:
                nn.init.zeros_(attention.weight)
        elif self.bases is not None:
            for k in range(self.bases.shape[0]):
                nn.init.kaiming_uniform_(self.bases[k], a=5**0.5)

    # ------------------------------------------------------------------------------------------------------------------
    def apply_mode(self, batch: int) -> ApplyMode | Literal["gemm"]:
        """The application form used for a batch of ``batch`` samples: the configured one, or under ``"auto"`` the
        GEMM form where it applies (1×1 bases on an ungrouped conv; the fastest on CPU at batch 1 and 32, see the
        README), else synthesis for batches ≤ ``synthesis_max_batch`` and feature-wise above."""
        apply = self.config.apply
        if apply == "gemm" and not self.gemm_applies:
            raise ValueError(
                "DynamicResidualConv2d: apply='gemm' needs 1×1 bases on an ungrouped conv whose padding does not "
                f"exceed its centre offset, got bases {tuple(self.bases.shape) if self.bases is not None else None}, "
                f"groups={self.groups}, padding={self.padding}"
            )
        if apply != "auto":
            return apply  # type: ignore[return-value]
        if self.gemm_applies:
            return "gemm"
        return "synthesis" if batch <= self.config.synthesis_max_batch else "featurewise"

    @property
    def _int_padding(self) -> tuple[int, int]:
        pad = self.padding
        assert not isinstance(pad, str)  # numeric padding is checked at construction
        return int(pad[0]), int(pad[1])

    @property
    def gemm_applies(self) -> bool:
        """Whether the GEMM form can run: 1×1 bases, groups = 1, and the centre tap reads inside the input."""
        return (
            self.bases is not None
            and self.bases.shape[-1] == 1
            and self.groups == 1
            and all(d * (k // 2) >= p for d, k, p in zip(self.dilation, self.kernel_size, self._int_padding))
        )

    def _forward_gemm(self, x: Tensor, pi: Tensor, scale: Tensor | None) -> Tensor:
        """W0 ∗ x as the plain conv, and ΔW(x) = Σ_k π_k Φ_k synthesised per sample (K·C_out·C_in) and applied to
        the pixels W0's centre tap reads as one batched GEMM (:func:`dyncore.nn.pointwise_per_sample`): no
        per-sample k×k kernel is written, at C_out·C_in per output pixel extra (1/k² of W0's conv)."""
        assert self.bases is not None
        y = self._conv_forward(x, self.weight, None)
        if scale is not None:
            y = y * scale[:, :, None, None]
        n = x.shape[0]
        delta = (pi @ self.bases.flatten(1)).view(n, self.out_channels, self.in_channels)
        oh, ow = (d * (k // 2) - p for d, k, p in zip(self.dilation, self.kernel_size, self._int_padding))
        if self.stride[0] != self.stride[1]:
            raise ValueError(f"DynamicResidualConv2d: the GEMM form needs a square stride, got {self.stride}")
        r = pointwise_per_sample(x[:, :, oh:, ow:], delta, stride=self.stride[0])
        y = y + r[:, :, : y.shape[2], : y.shape[3]]
        return y if self.bias is None else y + self.bias[None, :, None, None]

    def dynamic_coefficients(self, context: Tensor) -> dict[str, Tensor]:
        """π (B, K) under "routing" (softmax) and Λ = 2σ(z) − 1 (B, C_out) under "attention" from the context
        tensor (Λ ∈ (−1, 1); exactly 0 where z = 0, e.g. at the zero initialisation)."""
        out = self.coefficients(context)
        assert isinstance(out, dict)
        if "attention" in out:
            out["attention"] = 2.0 * torch.sigmoid(out["attention"]) - 1.0
        return out

    def forward(  # type: ignore[override]
        self, x: Tensor, context: Tensor | None = None, *, mode: ApplyMode | Literal["gemm"] | None = None
    ) -> Tensor:
        """y = (W0 + ΔW(context)) ∗ x + b; ``mode`` overrides the configured application form."""
        if x.dim() != 4:
            raise ValueError(f"DynamicResidualConv2d: expected x of shape (B, C, H, W), got {tuple(x.shape)}")
        ctx = x if context is None else context
        if ctx.shape[0] != x.shape[0]:
            raise ValueError(
                f"DynamicResidualConv2d: context batch {ctx.shape[0]} does not match input batch {x.shape[0]}"
            )
        coeffs = self.dynamic_coefficients(ctx)
        mode = mode or self.apply_mode(x.shape[0])  # type: ignore[assignment]
        scale = None
        if "attention" in coeffs:
            scale = 1.0 + coeffs["attention"]  # W0 + Λ·W0 (Eq. 6.3)
        if self.bases is None:
            experts = self.weight.new_zeros(1, self.out_channels, self.in_channels // self.groups, 1, 1)
            pi = x.new_zeros(x.shape[0], 1)
            if mode == "featurewise":  # no residual bases: only scale the static conv's output
                y = self._conv_forward(x, self.weight, None) * scale[:, :, None, None]  # type: ignore[index]
                return y if self.bias is None else y + self.bias[None, :, None, None]
        else:
            experts, pi = self.bases, coeffs["routing"]
            if mode == "gemm":
                return self._forward_gemm(x, pi, scale)
        return expert_mixture_conv2d(
            x,
            experts,
            pi,
            static_weight=self.weight,
            static_scale=scale,
            bias=self.bias,
            stride=self.stride,  # type: ignore[arg-type]
            padding=self.padding,  # type: ignore[arg-type]
            dilation=self.dilation,  # type: ignore[arg-type]
            groups=self.groups,
            mode=mode,
        )

    # ------------------------------------------------------------------------------------------------------------------
    def madds(self, inputs: tuple[Tensor, ...], output: Tensor, convention: MAddsConvention) -> int:
        """MAdds for ONE sample (dyncore.complexity protocol): the sum of :meth:`madds_breakdown`."""
        return sum(self.madds_breakdown(inputs, output, convention).values())

    def madds_breakdown(
        self, inputs: tuple[Tensor, ...], output: Tensor, convention: MAddsConvention
    ) -> dict[str, int]:
        """MAdds for ONE sample, by part:

        * ``static_conv`` — W0 ∗ x, paid once whichever form;
        * ``coefficient_fcs`` — the coefficient branch's two FCs (C_ctx·hidden + hidden·heads);
        * ``kernel_synthesis`` (``per_sample``) — Σ_k π_k Φ_k once per image, K·C_out·C_in/g·kb² (the synthesised
          residual is folded into W0, so it adds no per-pixel work), or ``featurewise_residual`` (``per_pixel``) — K
          convolutions over the output grid plus their weighted sum;
        * only with ``convention.elementwise``: ``pooling`` (the global average pooling of the context) and
          ``attention_scaling`` (Λ scaling W0, or the output under ``per_pixel``)."""
        x = inputs[0]
        ctx = inputs[1] if len(inputs) > 1 and isinstance(inputs[1], Tensor) else x
        branch = self.coefficients
        fcs = branch.fc.in_features * branch.fc.out_features if branch.fc is not None else 0
        fcs += sum(h.in_features * h.out_features for h in branch.heads.values())
        parts = {"static_conv": conv2d_madds(self, output), "coefficient_fcs": fcs}
        oh, ow = output.shape[-2:]
        in_per_group = self.in_channels // self.groups
        if self.bases is not None:
            k, _, _, kb, _ = self.bases.shape
            if convention.dynamic == "per_sample":
                parts["kernel_synthesis"] = k * self.out_channels * in_per_group * kb * kb
            else:
                parts["featurewise_residual"] = expert_mixture_madds(
                    experts=k,
                    out_channels=self.out_channels,
                    in_per_group=in_per_group,
                    kernel=kb,
                    out_hw=(oh, ow),
                    mode="featurewise",
                )
        if convention.elementwise:
            parts["pooling"] = ctx[0].numel() if ctx.dim() == 4 else 0
            if self.config.uses_attention:
                kernel = in_per_group * self.kernel_size[0] * self.kernel_size[1]
                parts["attention_scaling"] = self.out_channels * (
                    kernel if convention.dynamic == "per_sample" else oh * ow
                )
        return {name: int(n) for name, n in parts.items()}

    def extra_repr(self) -> str:
        c = self.config
        return (
            f"{super().extra_repr()}, residual={c.kind}, K={c.num_bases if c.uses_routing else 0}, "
            f"basis={c.basis_kernel_size}x{c.basis_kernel_size}, apply={c.apply}, context={self.context_channels}"
        )


def dynamic_residual_layers(model: nn.Module) -> Iterator[tuple[str, DynamicResidualConv2d]]:
    """All :class:`DynamicResidualConv2d` of ``model`` with their dotted names, in forward-definition order."""
    for name, module in model.named_modules():
        if isinstance(module, DynamicResidualConv2d):
            yield name, module


@torch.no_grad()
def residual_madds_breakdown(
    model: nn.Module, *inputs: Tensor, convention: MAddsConvention | None = None
) -> dict[str, int]:
    """MAdds of every :class:`DynamicResidualConv2d` of ``model`` for ONE sample, summed by part
    (:meth:`DynamicResidualConv2d.madds_breakdown`), from one forward pass of ``inputs`` with hooks. Everything but
    ``static_conv`` is the dynamic residual's extra cost over the static twin."""
    convention = convention or MAddsConvention()
    totals: dict[str, int] = {}

    def hook(layer: nn.Module, args: tuple[Tensor, ...], output: Tensor) -> None:
        assert isinstance(layer, DynamicResidualConv2d)
        for name, n in layer.madds_breakdown(args, output, convention).items():
            totals[name] = totals.get(name, 0) + n

    handles = [layer.register_forward_hook(hook) for _, layer in dynamic_residual_layers(model)]
    if not handles:
        raise ValueError(f"residual_madds_breakdown: {type(model).__name__} has no DynamicResidualConv2d")
    was_training = model.training
    try:
        model.eval()
        model(*inputs)
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    return totals


def set_apply_mode(model: nn.Module, apply: ApplyChoice) -> int:
    """Set the application form of every dynamic residual of ``model``; returns how many layers changed."""
    if apply not in APPLY_CHOICES:
        raise ValueError(f"set_apply_mode: apply must be one of {APPLY_CHOICES}, got {apply!r}")
    n = 0
    for _, layer in dynamic_residual_layers(model):
        layer.config = replace(layer.config, apply=apply)
        n += 1
    return n


def tune_apply_mode(model: nn.Module, *example: Tensor, repeats: int = 3) -> ApplyMode:
    """Measure the whole model under every form on ``example`` (dyncore.nn.fastest_mode) and fix the fastest
    (``"gemm"`` is a candidate when every dynamic residual of the model supports it)."""

    def run(mode: ApplyMode) -> object:
        set_apply_mode(model, mode)
        return model(*example)

    modes = tuple(APPLY_MODES)
    layers = [layer for _, layer in dynamic_residual_layers(model)]
    if layers and all(layer.gemm_applies for layer in layers):
        modes = (*modes, "gemm")
    was_training = model.training
    model.eval()
    try:
        best = fastest_mode(run, modes, repeats=repeats)  # type: ignore[arg-type]
    finally:
        model.train(was_training)
    set_apply_mode(model, best)
    return best
