"""MicroNet architectures as data: one typed row per block (thesis Table 4.1; spec layer tables of the released
models). The block code in :mod:`micronet.model` reads these rows; nothing model-specific lives in code.

Row fields (names of the spec; BN after every conv is implied):

* ``A`` (Micro-Block-A, lite combination): dw k×1 (Cin→Cin·c1) → dw 1×k (→hidden=Cin·c1·c2) → act2 → shuf(g2)
  → [perm2(hidden/2) if act2 shifts] → pw hidden→Cout (g3 groups) → act3 → shuf(g4) → [perm2(Cout/2) if act3 shifts].
* ``C`` (Micro-Block-C; the first C-row with the last A-row is the paper's Micro-Block-B): pw Cin→hidden (g1) →
  act1 → shuf(g2) → dw k×1 → dw 1×k → act2 → [perm2(hidden/4) if act1 and act2 shift, perm2(hidden/2) if one does]
  → pw hidden→Cout (g3) → act3 → shuf(g4) → [perm2(Cout/2) if act3 shifts].
* ``last``: pw Cin→Cout (g1) → act1.

Activation groups come from the position: A act2 → G = g2; C act1 → G = g2; C act2 → G = hidden/g2 (groups of g2
channels); act3 → G = g4; last act1 → G = g1. The positions act1/act2/act3 are Table 4.5's A1/A2/A3 (sequential in
a block; Micro-Block-A has only the depthwise and output positions, here act2/act3).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Literal, NamedTuple

__all__ = [
    "ACTIVATION_KINDS",
    "CONFIGS",
    "PATH_WIDTHS",
    "TABLE_4_2",
    "ActSpec",
    "BlockRow",
    "HeadSpec",
    "MicroNetConfig",
    "PathWidths",
    "StemSpec",
    "Table42Row",
    "get_config",
    "mobilenet_to_micronet_path",
    "sharp_variant",
    "with_activations",
    "with_relu",
    "with_widths",
]

ActKind = Literal["none", "relu", "relu6", "dsm", "static", "dyrelu", "se_relu"]
ACTIVATION_KINDS: tuple[str, ...] = ("none", "relu", "relu6", "dsm", "static", "dyrelu", "se_relu")
Init = tuple[tuple[float, ...], ...]


@dataclass(frozen=True)
class ActSpec:
    """An activation at one position: ``dsm`` (Dynamic Shift-Max), ``static`` (Shift-Max with static coefficients),
    ``dyrelu`` (J = 1), ``se_relu`` (J = K = 1 + ReLU), ``relu``/``relu6`` or ``none``. K, J, squeeze width S and
    the initial coefficients apply to the Shift-Max family."""

    kind: ActKind = "relu6"
    k: int = 2
    j: int = 2
    squeeze: int = 4
    init: Init | None = None

    def __post_init__(self) -> None:
        if self.kind not in ACTIVATION_KINDS:
            raise ValueError(f"ActSpec: unknown kind {self.kind!r}; choose one of {ACTIVATION_KINDS}")

    @property
    def shifts(self) -> bool:
        """True when the activation mixes channels across groups (followed by a perm2 in the released blocks)."""
        return self.kind in ("dsm", "static") and self.j >= 2


NONE = ActSpec("none")
RELU6 = ActSpec("relu6")


def dsm(k: int, squeeze: int, init: Init | None = None) -> ActSpec:
    """Dynamic Shift-Max with J = 2 (every released DSM)."""
    return ActSpec("dsm", k=k, j=2, squeeze=squeeze, init=init)


@dataclass(frozen=True)
class StemSpec:
    """conv 3×1 stride (2,1) Cin→s1 + BN; conv 1×3 stride (1,2) groups s1 → s1·s2 + BN; shuf(s1); ReLU6."""

    s1: int
    s2: int
    in_channels: int = 3
    kernel: int = 3
    stride: int = 2

    @property
    def out_channels(self) -> int:
        return self.s1 * self.s2


@dataclass(frozen=True)
class BlockRow:
    """One block of the layer table (see module docstring for the operator sequence of each kind)."""

    kind: Literal["A", "C", "last"]
    cin: int
    cout: int
    kernel: int = 1
    stride: int = 1
    hidden: int = 0  # A: Cin·c1·c2; C: width after the expanding pw; last: unused
    dw_multipliers: tuple[int, int] = (1, 1)  # A-rows: (c1, c2) of the expanding factorised depthwise conv
    g1: int = 1
    g2: int = 1
    g3: int = 1
    g4: int = 1
    act1: ActSpec = NONE
    act2: ActSpec = NONE
    act3: ActSpec = NONE
    factorized_dw: bool = True  # False: one k×k depthwise conv (MobileNet; Table 4.2 first row), C-rows only

    @property
    def residual(self) -> bool:
        """Identity shortcut only when stride 1 and Cin = Cout (no projection shortcuts)."""
        return self.kind != "last" and self.stride == 1 and self.cin == self.cout


@dataclass(frozen=True)
class HeadSpec:
    """ReLU6 → GAP → h_swish → Linear(C_last→out) → BN1d → h_swish → Dropout(p) → Linear(out→classes) → BN1d →
    h_swish."""

    out_channels: int
    dropout: float


@dataclass(frozen=True)
class MicroNetConfig:
    name: str
    stem: StemSpec
    blocks: tuple[BlockRow, ...]
    head: HeadSpec
    released_name: str = ""
    notes: str = ""
    extra: dict[str, object] = field(default_factory=dict, compare=False)

    @property
    def total_stride(self) -> int:
        s = self.stem.stride
        for b in self.blocks:
            s *= b.stride
        return s

    @property
    def last_channels(self) -> int:
        return self.blocks[-1].cout


def _a(cin: int, cout: int, k: int, s: int, act2: ActSpec, g2: int, g3: int, act3: ActSpec, g4: int) -> BlockRow:
    return BlockRow("A", cin, cout, k, s, cin * 4, (2, 2), 1, g2, g3, g4, NONE, act2, act3)


def _c(
    cin: int,
    cout: int,
    k: int,
    s: int,
    hid: int,
    g1: int,
    act1: ActSpec,
    g2: int,
    act2: ActSpec,
    g3: int,
    act3: ActSpec,
    g4: int,
) -> BlockRow:
    return BlockRow("C", cin, cout, k, s, hid, (1, 1), g1, g2, g3, g4, act1, act2, act3)


def _last(cin: int, cout: int, g1: int, act: ActSpec) -> BlockRow:
    return BlockRow("last", cin, cout, 1, 1, 0, (1, 1), g1, g1, 1, 1, act)


# fmt: off
M0 = MicroNetConfig(
    "micronet_m0", StemSpec(2, 2),
    (
        #  cin cout k  s  act2            g2  g3 act3        g4
        _a(4,   8,  3, 2, RELU6,          4,  2, dsm(1, 4),  2),
        _a(8,   12, 3, 2, dsm(2, 4),      8,  4, dsm(1, 4),  4),
        _a(12,  16, 5, 2, dsm(2, 8),      12, 4, dsm(1, 4),  4),
        #  cin cout k  s  hid  g1 act1        g2 act2        g3 act3        g4
        _c(16,  32, 5, 1, 64,  4, dsm(2, 8),  4, dsm(2, 8),  4, dsm(1, 8),  4),
        _c(32,  64, 5, 2, 128, 8, dsm(2, 16), 8, dsm(2, 16), 8, dsm(1, 16), 8),
        _c(64,  96, 3, 1, 256, 8, dsm(2, 16), 8, dsm(2, 16), 8, dsm(1, 12), 8),
        _last(96, 384, 12, dsm(1, 24)),
    ),
    HeadSpec(640, 0.05), released_name="msnx_dy6_exp4_4M_221",
)

M1 = MicroNetConfig(
    "micronet_m1", StemSpec(3, 2),
    (
        _a(6,   8,  3, 2, RELU6,          6,  2, dsm(1, 4),  2),
        _a(8,   16, 3, 2, dsm(2, 4),      8,  4, dsm(1, 4),  4),
        _a(16,  16, 5, 2, dsm(2, 8),      16, 4, dsm(1, 4),  4),
        _c(16,  32, 5, 1, 96,  4, dsm(2, 12), 4, dsm(2, 12), 4, dsm(1, 8),  4),
        _c(32,  64, 5, 2, 192, 8, dsm(2, 24), 8, dsm(2, 24), 8, dsm(1, 16), 8),
        _c(64,  96, 3, 1, 384, 8, dsm(2, 24), 8, dsm(2, 24), 8, dsm(1, 12), 8),
        _last(96, 576, 12, dsm(1, 36)),
    ),
    HeadSpec(960, 0.05), released_name="msnx_dy6_exp6_6M_221",
)

M2 = MicroNetConfig(
    "micronet_m2", StemSpec(4, 2),
    (
        _a(8,   12, 3, 2, RELU6,          8,  4, dsm(1, 4),  4),
        _a(12,  16, 3, 2, dsm(2, 8),      12, 4, dsm(1, 4),  4),
        _a(16,  24, 3, 1, dsm(2, 8),      16, 4, dsm(1, 8),  4),
        _c(24,  32, 5, 2, 144, 6, dsm(2, 20), 6, dsm(2, 20), 4, dsm(1, 8),  4),
        _c(32,  32, 5, 1, 192, 8, dsm(2, 12), 8, dsm(2, 12), 4, dsm(1, 4),  4),
        _c(32,  64, 5, 1, 192, 8, dsm(2, 12), 8, dsm(2, 12), 8, dsm(1, 8),  8),
        _c(64,  96, 5, 2, 384, 8, dsm(2, 24), 8, dsm(2, 24), 8, dsm(1, 12), 8),
        _c(96, 128, 3, 1, 576, 12, dsm(2, 36), 12, dsm(2, 36), 8, dsm(1, 16), 8),
        _last(128, 768, 16, dsm(1, 48)),
    ),
    HeadSpec(1024, 0.1), released_name="msnx_dy9_exp6_12M_221",
)

_M3_INIT: Init = ((1.0, 0.0), (0.5, 0.5))  # a = (1, 0.5), b = (0, 0.5)


def _d3(squeeze: int) -> ActSpec:
    return dsm(2, squeeze, _M3_INIT)


M3 = MicroNetConfig(
    "micronet_m3", StemSpec(4, 3),
    (
        _a(12,  16, 3, 2, _d3(8),         12, 4, NONE, 4),
        _a(16,  24, 3, 2, _d3(8),         16, 4, NONE, 4),
        _a(24,  24, 3, 1, _d3(12),        24, 4, NONE, 4),
        _c(24,  32, 5, 2, 144, 6,  RELU6, 6,  _d3(20), 4,  NONE, 4),
        _c(32,  32, 5, 1, 192, 8,  RELU6, 8,  _d3(12), 4,  NONE, 4),
        _c(32,  64, 5, 1, 192, 8,  RELU6, 8,  _d3(12), 8,  NONE, 8),
        _c(64,  80, 5, 1, 384, 8,  RELU6, 8,  _d3(24), 8,  NONE, 8),
        _c(80,  80, 5, 1, 480, 10, RELU6, 10, _d3(32), 8,  NONE, 8),
        _c(80, 120, 5, 2, 480, 10, RELU6, 10, _d3(32), 10, NONE, 10),
        _c(120, 120, 5, 1, 720, 12, RELU6, 12, _d3(44), 10, NONE, 10),
        _c(120, 144, 3, 1, 720, 12, RELU6, 12, _d3(44), 12, NONE, 12),
        _last(144, 864, 12, NONE),
    ),
    HeadSpec(1024, 0.1), released_name="msnx_dy12_exp6_20M_020",
)
# fmt: on


def _scaled_squeeze(act: ActSpec, scale: float) -> ActSpec:
    if act.kind not in ("dsm", "dyrelu", "se_relu"):
        return act
    return replace(act, squeeze=max(4, round(act.squeeze * scale / 4) * 4))


def _scaled_hidden(row: BlockRow, scale: float) -> BlockRow:
    if row.kind != "C" or scale == 1.0:
        return row
    unit = math.lcm(row.g1, row.g2, row.g3) * 4  # keeps every group conv, shuffle and perm2(hidden/4) valid
    return replace(row, hidden=max(unit, round(row.hidden * scale / unit) * unit))


def sharp_variant(
    base: MicroNetConfig, *, name: str, head_channels: int, squeeze_scale: float, hidden_scale: float = 1.0
) -> MicroNetConfig:
    """The '#' variants of Table 4.7 ("similar structure to M3, only shrinking the model size by reducing network
    width and parameters in dynamic Shift-Max"), never released. Defined here by (1) narrowing the classifier's
    hidden width OUT_CH (the head holds 73–87 % of the parameters), (2) scaling every DSM squeeze width S by
    ``squeeze_scale`` (rounded to a multiple of 4, at least 4) and (3) scaling the expanded width of the C-rows by
    ``hidden_scale`` (rounded to keep every group count valid). Depth, groups, kernels and K/J are unchanged."""
    blocks = tuple(
        replace(
            _scaled_hidden(b, hidden_scale),
            act1=_scaled_squeeze(b.act1, squeeze_scale),
            act2=_scaled_squeeze(b.act2, squeeze_scale),
            act3=_scaled_squeeze(b.act3, squeeze_scale),
        )
        for b in base.blocks
    )
    return MicroNetConfig(
        name,
        base.stem,
        blocks,
        HeadSpec(head_channels, base.head.dropout),
        notes=f"{base.name}: OUT_CH={head_channels}, DSM squeeze ×{squeeze_scale}, C-row hidden ×{hidden_scale}",
    )


M1_SHARP = sharp_variant(M1, name="micronet_m1_sharp", head_channels=672, squeeze_scale=0.5, hidden_scale=2 / 3)
M2_SHARP = sharp_variant(M2, name="micronet_m2_sharp", head_channels=640, squeeze_scale=0.5, hidden_scale=0.9)
M3_SHARP = sharp_variant(M3, name="micronet_m3_sharp", head_channels=616, squeeze_scale=0.5, hidden_scale=0.9)


def _swap(act: ActSpec, kind: str | None) -> ActSpec:
    """Replace the activation kind at a position, keeping squeeze width (and K/J where meaningful)."""
    if kind is None:
        return act
    squeeze = act.squeeze
    if kind == "dsm":
        return ActSpec("dsm", k=act.k if act.kind == "dsm" else 2, j=2, squeeze=squeeze, init=act.init)
    if kind == "static":
        return ActSpec("static", k=act.k if act.kind in ("dsm", "static") else 2, j=2, squeeze=squeeze)
    if kind == "dyrelu":
        return ActSpec("dyrelu", k=2, j=1, squeeze=squeeze)
    if kind == "se_relu":
        return ActSpec("se_relu", k=1, j=1, squeeze=squeeze)
    if kind in ("relu", "relu6", "none"):
        return ActSpec(kind)  # type: ignore[arg-type]
    raise ValueError(f"with_activations: unknown activation kind {kind!r}; choose one of {ACTIVATION_KINDS}")


def with_activations(
    config: MicroNetConfig,
    *,
    a1: str | None = None,
    a2: str | None = None,
    a3: str | None = None,
    name: str | None = None,
    only_shift_positions: bool = True,
) -> MicroNetConfig:
    """Select the activation at positions A1/A2/A3 (Table 4.5) of every block; ``None`` keeps the current one.

    With ``only_shift_positions`` (default) only positions that currently hold a Shift-Max-family activation are
    changed, so e.g. ``with_activations(M2, a1="relu6", a2="relu6", a3="none")`` is the ReLU row of Table 4.5 and
    ``a1=a2=a3="static"`` the static Shift-Max row of Table 4.2."""

    def pick(act: ActSpec, kind: str | None) -> ActSpec:
        if only_shift_positions and act.kind in ("none", "relu", "relu6"):
            return act
        return _swap(act, kind)

    blocks = []
    for b in config.blocks:
        if b.kind == "last":
            blocks.append(replace(b, act1=pick(b.act1, a3)))  # the last row's DSM sits after a pointwise conv
        else:
            blocks.append(replace(b, act1=pick(b.act1, a1), act2=pick(b.act2, a2), act3=pick(b.act3, a3)))
    return replace(config, name=name or f"{config.name}_{a1}_{a2}_{a3}", blocks=tuple(blocks), released_name="")


def with_relu(config: MicroNetConfig) -> MicroNetConfig:
    """The ReLU baseline of Tables 4.4/4.5: every Shift-Max after a depthwise or expanding conv → ReLU6, every
    Shift-Max after a compressing pointwise conv → nothing (a linear bottleneck, as in MobileNet)."""
    return with_activations(config, a1="relu6", a2="relu6", a3="none", name=f"{config.name}_relu")


def _regular(row: BlockRow) -> BlockRow:
    """An A-row (lite combination) as a C-row (regular combination: factorised pw expand → factorised dw → pw)."""
    if row.kind != "A":
        return row
    g = math.gcd(row.cin, row.g3)
    return replace(row, kind="C", dw_multipliers=(1, 1), g1=g, g2=g, act1=RELU6)


@dataclass(frozen=True)
class PathWidths:
    """The widths of one model of the Table 4.2 path, on M2's block layout (stem, kernels, strides, groups, head and
    activations stay): ``couts`` and ``hidden`` list every block but the last pointwise row, ``last`` is C_last.
    An A-row's ``hidden`` must be Cin·c1·c2 (its expanding depthwise conv fixes it)."""

    couts: tuple[int, ...]
    hidden: tuple[int, ...]
    last: int


def with_widths(config: MicroNetConfig, widths: PathWidths, *, name: str | None = None) -> MicroNetConfig:
    """``config`` with every block's output and expanded width (and C_last) taken from ``widths``; each block's Cin
    follows from the previous block's Cout."""
    body = config.blocks[:-1]
    if config.blocks[-1].kind != "last":
        raise ValueError(f"with_widths: config {config.name} does not end with a 'last' pointwise row")
    if len(widths.couts) != len(body) or len(widths.hidden) != len(body):
        raise ValueError(
            f"with_widths: config {config.name} has {len(body)} blocks before the last row, widths give "
            f"{len(widths.couts)} couts and {len(widths.hidden)} hidden widths"
        )
    if min((*widths.couts, *widths.hidden, widths.last)) <= 0:
        raise ValueError(f"with_widths: every width must be positive, got {widths}")
    rows, cin = [], config.stem.out_channels
    for i, (row, cout, hidden) in enumerate(zip(body, widths.couts, widths.hidden, strict=True)):
        if row.kind == "A" and hidden != cin * row.dw_multipliers[0] * row.dw_multipliers[1]:
            raise ValueError(
                f"with_widths: block {i + 1} is an A-row with Cin={cin} and multipliers {row.dw_multipliers}, so its "
                f"hidden width is {cin * row.dw_multipliers[0] * row.dw_multipliers[1]}, not {hidden}"
            )
        rows.append(replace(row, cin=cin, cout=cout, hidden=hidden))
        cin = cout
    rows.append(replace(config.blocks[-1], cin=cin, cout=widths.last))
    return replace(config, name=name or config.name, blocks=tuple(rows), released_name="")


class Table42Row(NamedTuple):
    """A row of thesis Table 4.2 as printed: parameters, MAdds (224×224) and ImageNet top-1 (%)."""

    params: float
    madds: float
    top1: float


TABLE_4_2: dict[str, Table42Row] = {
    "mobile": Table42Row(1.3e6, 10.6e6, 44.9),
    "+dw": Table42Row(1.7e6, 10.6e6, 46.4),
    "+pw": Table42Row(1.7e6, 10.6e6, 50.0),
    "+lite": Table42Row(1.8e6, 10.5e6, 51.7),
    "+static_shift_max": Table42Row(1.9e6, 11.8e6, 54.4),
    "+dynamic_shift_max": Table42Row(2.4e6, 12.4e6, 58.5),
}

# Widths that bring the four Shift-Max-free rows of Table 4.2 to the table's MAdds (conv+FC convention: convs and FCs
# only, one 224×224 image, dyncore.complexity.count_madds with elementwise=False; the same as every other convention
# that counts no element-wise work, since these rows have no Shift-Max). Derived from M2's widths by one factor per
# row, then written out here as data:
# * dense pointwise rows (mobile, +dw): the MobileNet width multiplier α on every block output, expanded width and
#   C_last, each round(α·w/4)·4 (at least 4): α = 0.39 (mobile), 0.41 (+dw). Dense 1×1 convs cost ≈4× the group
#   convs, so these rows are much narrower than M2.
# * group pointwise rows (+pw, +lite): M2's block outputs and C_last, the expanded width of every C-row × β, rounded
#   to a multiple of lcm(g1, g2, g3): β = 0.86 (+pw), 1.14 (+lite). A-rows of +lite keep Cin·4.
# fmt: off
PATH_WIDTHS: dict[str, PathWidths] = {
    # row:              Cout of blocks 1–8                   expanded width (hidden) of blocks 1–8   C_last
    "mobile": PathWidths((4, 8, 8, 12, 12, 24, 36, 48),       (12, 20, 24, 56, 76, 76, 148, 224),        300),
    "+dw":    PathWidths((4, 8, 8, 12, 12, 28, 40, 52),       (12, 20, 28, 60, 80, 80, 156, 236),        316),
    "+pw":    PathWidths((12, 16, 24, 32, 32, 64, 96, 128),   (28, 40, 56, 120, 168, 168, 328, 504),     768),
    "+lite":  PathWidths((12, 16, 24, 32, 32, 64, 96, 128),   (32, 48, 64, 168, 216, 216, 440, 648),     768),
}
# fmt: on


def mobilenet_to_micronet_path(
    base: MicroNetConfig | None = None, *, widths: Mapping[str, PathWidths] | None = None
) -> dict[str, MicroNetConfig]:
    """The path of Table 4.2 as configs derived from M2 (rows from MobileNet to MicroNet).

    ``mobile`` (k×k depthwise, full pointwise, ReLU6; MobileNetV2's inverted bottleneck without SE) → ``+dw``
    (factorised depthwise) → ``+pw`` (group-adaptive pointwise with shuffles) → ``+lite`` (lite combination in the
    A-rows, ReLU) → ``+static_shift_max`` → ``+dynamic_shift_max`` (= M2).

    The thesis re-tuned widths so that rows 1–4 cost 10.6/10.6/10.6/10.5M MAdds; ``widths`` (default
    :data:`PATH_WIDTHS` for M2, none for another ``base``) sets them per row (:func:`with_widths`); a row without an
    entry keeps M2's widths. The two Shift-Max rows keep M2's widths: ``+dynamic_shift_max`` is the released M2.
    """
    m2 = M2 if base is None else base
    row_widths: Mapping[str, PathWidths] = (PATH_WIDTHS if base is None else {}) if widths is None else widths
    lite = with_relu(m2)
    regular = tuple(_regular(r) for r in lite.blocks)
    dense = tuple(replace(r, g1=1, g2=1, g3=1, g4=1) if r.kind == "C" else replace(r, g1=1, g2=1) for r in regular)
    mobile = tuple(replace(r, factorized_dw=False) if r.kind == "C" else r for r in dense)
    path = {
        "mobile": replace(m2, name="path_mobile", blocks=mobile, released_name=""),
        "+dw": replace(m2, name="path_dw", blocks=dense, released_name=""),
        "+pw": replace(m2, name="path_dw_pw", blocks=regular, released_name=""),
        "+lite": replace(lite, name="path_dw_pw_lite"),
        "+static_shift_max": with_activations(m2, a1="static", a2="static", a3="static", name="path_static_shift_max"),
        "+dynamic_shift_max": m2,
    }
    unknown = sorted(set(row_widths) - set(path))
    if unknown:
        raise ValueError(f"mobilenet_to_micronet_path: widths for unknown rows {unknown}; rows are {list(path)}")
    return {key: with_widths(cfg, row_widths[key]) if key in row_widths else cfg for key, cfg in path.items()}


CONFIGS: dict[str, MicroNetConfig] = {c.name: c for c in (M0, M1, M2, M3, M1_SHARP, M2_SHARP, M3_SHARP)}


def get_config(name: str) -> MicroNetConfig:
    """Look up a config by name (``micronet_m0`` … ``micronet_m3``, ``micronet_m{1,2,3}_sharp``)."""
    if name not in CONFIGS:
        raise ValueError(f"unknown MicroNet config {name!r}; choose one of {sorted(CONFIGS)}")
    return CONFIGS[name]
