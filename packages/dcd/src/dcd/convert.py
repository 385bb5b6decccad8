"""``dcd.convert``: turn an existing model's convs (and optionally its classifier) into DCD layers (peft-style).

    model = torchvision.models.resnet18()
    report = dcd.convert(model, where=by_name(r"^layer\\d\\.\\d\\.conv\\d$"), rule="resnet")
    print(report)   # name | before | after | params

W0 (and the bias) are copied from the replaced layer, so with Φ ≈ 0 and Λ ≈ 1 at initialisation the converted model
starts close to the original. Replacement goes through :func:`dyncore.surgery.replace_modules`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn

from dcd.layers import DCDClassifier, DynamicConvDecomposition
from dcd.rules import LatentRule, mobilenetv2_rule, paper_latent, resnet_basic_rule, resnet_bottleneck_rule
from dyncore.surgery import SurgeryReport, by_type, replace_modules

__all__ = ["RULES", "convert", "default_target"]


def _paper_rule(conv: nn.Conv2d) -> LatentRule:
    latent = paper_latent(conv.in_channels)
    return LatentRule(latent, max(max(conv.in_channels, latent * latent) // 16, 4), pool=1)


def _resnet_rule(conv: nn.Conv2d) -> LatentRule:
    return resnet_basic_rule(conv.in_channels) if conv.kernel_size[0] > 1 else resnet_bottleneck_rule(conv.in_channels)


def _mobilenetv2_rule(conv: nn.Conv2d) -> LatentRule:
    return mobilenetv2_rule(conv.in_channels, conv.out_channels)


RULES: dict[str, Callable[[nn.Conv2d], LatentRule]] = {
    "paper": _paper_rule,
    "resnet": _resnet_rule,
    "mobilenetv2": _mobilenetv2_rule,
}


def default_target(name: str, module: nn.Module) -> bool:
    """Default ``where``: every ungrouped, square, odd-kernel Conv2d except those reading the RGB image."""
    return (
        isinstance(module, nn.Conv2d)
        and module.groups == 1
        and module.in_channels > 3
        and module.kernel_size[0] == module.kernel_size[1]
        and module.kernel_size[0] % 2 == 1
    )


def convert(
    model: nn.Module,
    *,
    where: Callable[[str, nn.Module], bool] | None = None,
    rule: str | Callable[[nn.Conv2d], LatentRule] = "paper",
    classifier: Callable[[str, nn.Module], bool] | None = None,
    **layer_kwargs: Any,
) -> SurgeryReport:
    """Replace the convs selected by ``where`` with :class:`DynamicConvDecomposition` layers, in place.

    Args:
        model: any nn.Module (e.g. a torchvision ResNet or MobileNetV2).
        where: predicate ``(name, module) -> bool`` (dyncore.surgery predicates combine with & | ~); default
            :func:`default_target`. Every match must be an ungrouped nn.Conv2d.
        rule: L/S/pool per conv: "paper" (⌊C/2^⌊log2 √C⌋⌋, r = 16), "resnet", "mobilenetv2", or a callable.
        classifier: optional predicate selecting nn.Linear layers to turn into :class:`DCDClassifier`.
        **layer_kwargs: forwarded to the layers (variant, latent_mult, blocks, stabilised, mode).

    Returns:
        The :class:`dyncore.surgery.SurgeryReport` (classifier changes appended).

    Raises:
        dyncore.surgery.SurgeryError: ``where`` (or ``classifier``) matched nothing.
        ValueError: unknown rule, or a matched conv cannot be decomposed (grouped, even or non-square kernel).
    """
    if isinstance(rule, str):
        if rule not in RULES:
            raise ValueError(f"convert: unknown rule {rule!r}; choose one of {sorted(RULES)} or pass a callable")
        rule_fn = RULES[rule]
    else:
        rule_fn = rule
    predicate = where or default_target

    def factory(name: str, module: nn.Module) -> nn.Module:
        if not isinstance(module, nn.Conv2d):
            raise ValueError(f"convert: {name!r} is a {type(module).__name__}, only nn.Conv2d can become DCD")
        r = rule_fn(module)
        try:
            return DynamicConvDecomposition.from_conv(
                module, latent=r.latent, squeeze=r.squeeze, pool=r.pool, **layer_kwargs
            )
        except ValueError as e:
            raise ValueError(f"convert: cannot convert {name!r}: {e}") from e

    report = replace_modules(model, predicate, factory)
    if classifier is not None:
        lin_kw = {k: v for k, v in layer_kwargs.items() if k in ("variant", "stabilised", "mode", "latent_mult")}
        extra = replace_modules(
            model, by_type(nn.Linear) & classifier, lambda n, m: DCDClassifier.from_linear(m, **lin_kw)
        )
        report.changes.extend(extra.changes)
    return report
