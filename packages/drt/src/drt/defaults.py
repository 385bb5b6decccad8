"""Training defaults per backbone, as data: what ``drt train`` uses for every flag the user did not pass.

Two backbones, two regimes:

* ``digit_cnn`` — the M3SDA Digit-Five CNN trained from scratch (``--data digits5``). The released MCD weights
  (η = 50, GRL 4.0, tuned for an ImageNet-pretrained ResNet-101) collapse it to chance within a few hundred steps
  (issue 19: 9–11 % target accuracy with ten classes); the values here are those the demo found stable (η = 1,
  GRL 1.0, lr 0.01 with 32 + 32 images per step, 0.01 for M³SDA-β's moment matching) and λ = 0.1 for DANN (λ = 1
  halved the source held-out accuracy of the 0.25-width CNN within 300 steps: 37 % target vs 60 % at 0.1, mnistm).
* ``resnet`` — the thesis' DomainNet setting (spec/drt.md): ResNet-101, SGD lr 1e-3 with ×10 on the new layers and
  the heads, momentum 0.9, wd 5e-4, batch 64 + 64, the released MCD values (GRL 4.0, η 50, γ 0.01, label
  smoothing 0.01). The thesis gives no λ for DANN or M³SDA-β; 1.0 / 0.01 are kept from before.

:func:`resolve` fills the unset (``None``) fields from the backbone's table; the CLI records the resolved values and
where they came from in ``config.json``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

__all__ = ["BACKBONE_DEFAULTS", "DEFAULTED_FIELDS", "BackboneDefaults", "backbone_for_data", "help_text", "resolve"]


@dataclass(frozen=True)
class BackboneDefaults:
    """Default hyper-parameters of one backbone.

    Attributes:
        lr: SGD learning rate of the backbone's pretrained/static part.
        batch_size: source and target images per step (each).
        weight_decay: SGD weight decay.
        new_lr_mult: lr multiplier of the dynamic-residual parameters, the heads and the discriminators.
        eta: η, MCD's weight of the classifier discrepancy L_dis (one-pass ``mcd``).
        grl_coeff: MCD's gradient-reversal coefficient.
        gamma: γ, MCD's weight of the class-balance term L_div.
        label_smoothing: of MCD's source cross-entropy.
        trade_off: λ of Eq. 6.6 per method that reads it (``dann``; ``m3sda`` weighs the moment matching).
        source: where the values come from (shown in ``--help`` and recorded in config.json).
    """

    lr: float
    batch_size: int
    weight_decay: float
    new_lr_mult: float
    eta: float
    grl_coeff: float
    gamma: float
    label_smoothing: float
    trade_off: Mapping[str, float] = field(default_factory=dict)
    source: str = ""

    def trade_off_for(self, method: str) -> float:
        """λ for ``method`` (1.0 for methods that do not read it)."""
        return float(self.trade_off.get(method, 1.0))


BACKBONE_DEFAULTS: dict[str, BackboneDefaults] = {
    "digit_cnn": BackboneDefaults(
        lr=0.01,
        batch_size=32,
        weight_decay=5e-4,
        new_lr_mult=1.0,
        eta=1.0,
        grl_coeff=1.0,
        gamma=0.01,
        label_smoothing=0.01,
        trade_off={"dann": 0.1, "m3sda": 0.01},
        source="digit CNN from scratch: the drt demo's stable settings (the released η 50 / GRL 4 collapse it)",
    ),
    "resnet": BackboneDefaults(
        lr=1e-3,
        batch_size=64,
        weight_decay=5e-4,
        new_lr_mult=10.0,
        eta=50.0,
        grl_coeff=4.0,
        gamma=0.01,
        label_smoothing=0.01,
        trade_off={"dann": 1.0, "m3sda": 0.01},
        source="ResNet on DomainNet: the thesis / released values (spec/drt.md)",
    ),
}

#: the CLI/argparse names (``dest``) whose ``None`` means "the backbone's default"; ``trade_off`` is per method.
DEFAULTED_FIELDS = ("lr", "batch_size", "weight_decay", "new_lr_mult", "eta", "grl_coeff", "gamma", "label_smoothing")


def backbone_for_data(data: str) -> str:
    """The backbone a dataset trains: ``digits5`` → ``digit_cnn``, ``domainnet`` → ``resnet``."""
    table = {"digits5": "digit_cnn", "domainnet": "resnet"}
    if data not in table:
        raise ValueError(f"--data must be one of {sorted(table)}, got {data!r}")
    return table[data]


def resolve(backbone: str, method: str, given: Mapping[str, Any]) -> dict[str, Any]:
    """The value of every field of :data:`DEFAULTED_FIELDS` and ``trade_off``: ``given[name]`` where it is not
    ``None``, else the backbone's default (``trade_off`` for ``method``)."""
    if backbone not in BACKBONE_DEFAULTS:
        raise ValueError(f"unknown backbone {backbone!r}; choose one of {sorted(BACKBONE_DEFAULTS)}")
    table = BACKBONE_DEFAULTS[backbone]
    out: dict[str, Any] = {}
    for name in DEFAULTED_FIELDS:
        value = given.get(name)
        out[name] = getattr(table, name) if value is None else value
    value = given.get("trade_off")
    out["trade_off"] = table.trade_off_for(method) if value is None else value
    return out


def help_text(name: str) -> str:
    """``default: <digit_cnn value> (digits5, digit CNN) / <resnet value> (domainnet, ResNet)`` for ``--help``."""
    parts = []
    for backbone, data in (("digit_cnn", "digits5"), ("resnet", "domainnet")):
        table = asdict(BACKBONE_DEFAULTS[backbone])
        if name == "trade_off":
            shown = ", ".join(f"{m} {v:g}" for m, v in table["trade_off"].items())
        else:
            shown = f"{table[name]:g}"
        parts.append(f"{shown} with --data {data}")
    return "default per backbone: " + "; ".join(parts)
