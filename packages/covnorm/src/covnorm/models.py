"""Backbones and the multi-domain model.

- :func:`vgg16_fcn`: VGG16 with fc6/fc7 as convolutions (fc6 a 7×7 conv 512→4096, fc7 a 1×1 4096→4096), the
  backbone of Section 2.4 with its 15 adapter sites (:data:`VGG16_SITES`).
- :func:`resnet26`: the Visual Decathlon ResNet-26 (3→32 stem, 3 stages × 4 basic blocks at 64/128/256); built without
  its own BN so that the injected series adapters conv3×3 → [BN → 1×1 → + identity] → BN supply the per-task BN.
- :func:`small_vgg`: a VGG-like net for 32×32 inputs used by the demo.
- :class:`MultiDomainModel`: a frozen shared backbone with per-domain adapters and heads, ``set_domain(name)``.
- :func:`inject`: put a :class:`~covnorm.layers.ResidualAdapter` after every selected frozen conv (dyncore.surgery).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, Literal

from torch import Tensor, nn

from covnorm.layers import DomainSwitch, ResidualAdapter, UnknownDomainError, check_domain_name

__all__ = [
    "VGG16_SITES",
    "MultiDomainModel",
    "adapter_sites",
    "frozen_parameter_count",
    "inject",
    "resnet26",
    "resnet26_sites",
    "small_vgg",
    "vgg16_fcn",
    "vgg16_sites",
]

VGG16_SITES: tuple[str, ...] = (
    "conv1_1",
    "conv1_2",
    "conv2_1",
    "conv2_2",
    "conv3_1",
    "conv3_2",
    "conv3_3",
    "conv4_1",
    "conv4_2",
    "conv4_3",
    "conv5_1",
    "conv5_2",
    "conv5_3",
    "fc6",
    "fc7",
)

_VGG16_CFG: tuple[tuple[int, ...], ...] = ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512), (512, 512, 512))


class _Features(nn.Module):
    """A named sequence of layers ending in a flatten: output (B, F).

    ``stride`` (the product of the poolings) and ``window`` (fc6's kernel) fix the input size: fc6 must see exactly
    one ``window × window`` map, so H // stride and W // stride must equal ``window`` (224–255 px for VGG16, 32–39
    for :func:`small_vgg`). Other sizes are refused up front, naming the size the network takes, instead of failing
    later inside a conv ("kernel size can't be greater than actual input size") or a Linear (shape mismatch).
    """

    def __init__(self, layers: Sequence[tuple[str, nn.Module]], out_features: int, *, stride: int, window: int):
        super().__init__()
        for name, layer in layers:
            self.add_module(name, layer)
        self.out_features, self.stride, self.window = out_features, stride, window

    def forward(self, x: Tensor) -> Tensor:
        size = self.stride * self.window
        if x.dim() != 4:
            raise ValueError(f"input of shape {tuple(x.shape)}: expected (B, C, {size}, {size}) images")
        h, w = x.shape[-2:]
        if h // self.stride != self.window or w // self.stride != self.window:
            raise ValueError(
                f"input of shape {tuple(x.shape)}: this network takes (B, C, {size}, {size}) images "
                f"({self.stride}× downsampling before fc6's {self.window}×{self.window} window; "
                f"{h}×{w} leaves {h // self.stride}×{w // self.stride})"
            )
        for layer in self.children():
            x = layer(x)
        return x.flatten(1)


def _vgg_layers(cfg: Sequence[Sequence[int]], in_channels: int = 3) -> list[tuple[str, nn.Module]]:
    layers: list[tuple[str, nn.Module]] = []
    c = in_channels
    for stage, widths in enumerate(cfg, start=1):
        for i, w in enumerate(widths, start=1):
            layers.append((f"conv{stage}_{i}", nn.Conv2d(c, w, 3, padding=1)))
            layers.append((f"relu{stage}_{i}", nn.ReLU(inplace=False)))
            c = w
        layers.append((f"pool{stage}", nn.MaxPool2d(2)))
    return layers


class VGG16FCN(nn.Module):
    """VGG16 (Simonyan & Zisserman, config D) with the fully-connected layers as convolutions.

    Input (B, 3, 224, 224); ``features`` returns the fc7 activations (B, 4096); ``classifier`` is fc8.
    """

    def __init__(self, num_classes: int = 1000, *, dropout: float = 0.5) -> None:
        super().__init__()
        layers = _vgg_layers(_VGG16_CFG)
        layers += [
            ("fc6", nn.Conv2d(512, 4096, 7)),
            ("relu6", nn.ReLU(inplace=False)),
            ("drop6", nn.Dropout(dropout)),
            ("fc7", nn.Conv2d(4096, 4096, 1)),
            ("relu7", nn.ReLU(inplace=False)),
            ("drop7", nn.Dropout(dropout)),
        ]
        self.features = _Features(layers, 4096, stride=2 ** len(_VGG16_CFG), window=7)
        self.classifier = nn.Linear(4096, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.features(x))


def vgg16_fcn(*, num_classes: int = 1000, dropout: float = 0.5) -> VGG16FCN:
    """VGG16 as used by the thesis (Section 2.4.1): 138,357,544 parameters with 1000 classes."""
    return VGG16FCN(num_classes, dropout=dropout)


def vgg16_sites(name: str, module: nn.Module) -> bool:
    """Predicate selecting the 15 adapter sites of VGG16 (conv1_1 … conv5_3, fc6, fc7), not the classifier."""
    return isinstance(module, nn.Conv2d) and name.rsplit(".", 1)[-1] in VGG16_SITES


def small_vgg(
    *, widths: Sequence[Sequence[int]] = ((16,), (32,), (64, 64)), hidden: int = 128, num_classes: int = 10
) -> VGG16FCN:
    """A VGG-like net for (B, 3, 32, 32) inputs: conv stages with max-pooling, then fc6 (a conv over the remaining
    spatial map) and fc7 (1×1), like :func:`vgg16_fcn`. Used by the demo."""
    model = VGG16FCN.__new__(VGG16FCN)
    nn.Module.__init__(model)
    layers = _vgg_layers(widths)
    spatial = 32 // 2 ** len(widths)
    if spatial < 1:
        raise ValueError(
            f"small_vgg: {len(widths)} stages pool a 32×32 input {2 ** len(widths)}× (to less than one pixel); "
            "use at most 5 stages"
        )
    layers += [
        ("fc6", nn.Conv2d(widths[-1][-1], hidden, spatial)),
        ("relu6", nn.ReLU(inplace=False)),
        ("fc7", nn.Conv2d(hidden, hidden, 1)),
        ("relu7", nn.ReLU(inplace=False)),
    ]
    model.features = _Features(layers, hidden, stride=2 ** len(widths), window=spatial)
    model.classifier = nn.Linear(hidden, num_classes)
    return model


class BasicBlock(nn.Module):
    """ResNet basic block conv3×3 → norm → ReLU → conv3×3 → norm (+ shortcut) → ReLU."""

    def __init__(self, cin: int, cout: int, stride: int, norm: Callable[[int], nn.Module]) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = norm(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = norm(cout)
        self.relu = nn.ReLU(inplace=False)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), norm(cout))

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


class ResNet26(nn.Module):
    """ResNet-26 of the Visual Decathlon protocol (Rebuffi et al.): 3→32 stem, stages of 4 basic blocks at 64, 128,
    256 channels (strides 1, 2, 2), global average pooling. Input (B, 3, 64, 64) (72×72 resized, 64 crop)."""

    def __init__(self, num_classes: int = 10, *, norm: Literal["bn", "none"] = "bn") -> None:
        super().__init__()
        norm_layer: Callable[[int], nn.Module] = nn.BatchNorm2d if norm == "bn" else (lambda c: nn.Identity())
        self.conv1 = nn.Conv2d(3, 32, 3, 1, 1, bias=False)
        self.bn1 = norm_layer(32)
        self.relu = nn.ReLU(inplace=False)
        blocks: list[nn.Module] = []
        cin = 32
        for i, width in enumerate((64, 128, 256)):
            stage = [BasicBlock(cin, width, 1 if i == 0 else 2, norm_layer)]
            for _ in range(3):
                stage.append(BasicBlock(width, width, 1, norm_layer))
            blocks.append(nn.Sequential(*stage))
            cin = width
        self.layer1, self.layer2, self.layer3 = blocks
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.out_features = 256
        self.fc = nn.Linear(256, num_classes)

    def features(self, x: Tensor) -> Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.pool(x).flatten(1)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.features(x))


def resnet26(*, num_classes: int = 10, norm: Literal["bn", "none"] = "bn") -> ResNet26:
    """ResNet-26 (Decathlon). ``norm="none"`` drops the BN layers: inject series adapters after every 3×3 conv
    (:func:`resnet26_sites`) and their B2 becomes the per-task BN."""
    return ResNet26(num_classes, norm=norm)


def resnet26_sites(name: str, module: nn.Module) -> bool:
    """Predicate: the 3×3 convs of ResNet-26 (stem and blocks), where the series adapters go."""
    return isinstance(module, nn.Conv2d) and module.kernel_size == (3, 3)


def _surgery() -> Any:
    try:
        from dyncore import surgery
    except ImportError as exc:  # dyncore.surgery is written by the tools engineer
        raise ImportError("covnorm.inject needs dyncore.surgery (insert_after / find_modules)") from exc
    return surgery


def inject(
    model: nn.Module,
    *,
    where: Callable[[str, nn.Module], bool],
    domains: Sequence[str],
    kind: Literal["residual", "bn"] = "residual",
    a_init: Literal["zero", "normal"] = "zero",
    freeze: bool = True,
) -> nn.Module:
    """Insert a residual adapter T = B2(I + A·B1) (one branch per domain) after every conv selected by ``where``.

    Args:
        model: the backbone, modified in place (returned for chaining).
        where: predicate ``(name, module) -> bool`` (``dyncore.surgery.by_type/by_name`` or a plain callable);
            every selected module must be an ``nn.Conv2d``.
        domains: domain names (identifier-like strings).
        kind: ``"residual"`` (RA; A a C×C 1×1 conv with bias) or ``"bn"`` (BN-only baseline).
        freeze: set ``requires_grad=False`` on the backbone's own parameters (the frozen layers F).

    Returns: ``model``; its adapters are listed by :func:`adapter_sites`.
    """
    surgery = _surgery()
    domains = [check_domain_name(d) for d in domains]
    if not domains:
        raise ValueError("inject: domains must name at least one domain")
    if len(set(domains)) != len(domains):
        raise ValueError(f"inject: duplicate domain names in {domains}")
    selected = surgery.find_modules(model, where)
    if not selected:
        raise ValueError("inject: the predicate `where` selected no module")
    bad = [n for n, m in selected if not isinstance(m, nn.Conv2d)]
    if bad:
        raise TypeError(f"inject: adapters go after nn.Conv2d layers; `where` also selected {bad[:5]}")
    adapted = {
        f"{n}.original" for n, m in model.named_modules() if isinstance(getattr(m, "inserted", None), DomainSwitch)
    }
    twice = [n for n, _ in selected if n in adapted]
    if twice:
        raise ValueError(f"inject: {twice[:5]} already have adapters (inject once; add domains with add_domain)")
    if freeze:
        for p in model.parameters():
            p.requires_grad_(False)
    surgery.insert_after(
        model,
        lambda name, module: isinstance(module, nn.Conv2d) and where(name, module),
        lambda name, module: ResidualAdapter(module.out_channels, domains, kind=kind, a_init=a_init),
    )
    return model


def adapter_sites(model: nn.Module) -> dict[str, ResidualAdapter]:
    """Name → adapter of every :class:`ResidualAdapter` in ``model``, in forward-definition order. The name is the
    adapted conv's name (e.g. ``features.conv1_1``)."""
    sites: dict[str, ResidualAdapter] = {}
    for name, module in model.named_modules():
        if isinstance(module, ResidualAdapter):
            key = name
            for suffix in (".inserted", ".1"):
                if key.endswith(suffix):
                    key = key[: -len(suffix)]
                    break
            sites[key] = module
    return sites


class MultiDomainModel(nn.Module):
    """A frozen shared backbone with per-domain adapters and heads (Figure 2.1).

    ``forward(x)`` = heads[domain](features(x)); ``set_domain(name)`` switches every adapter branch, BN and
    the head by name — the backbone is shared, never copied.

    Args:
        backbone: a model with adapters injected (:func:`inject`). Features are ``backbone.features(x)`` when it has
            a ``features`` attribute, else ``backbone(x)`` (e.g. a torchvision ResNet with ``fc = nn.Identity()``);
            (B, C, H, W) outputs are flattened.
        heads: domain → number of classes (a Linear(F, n) head is built) or a ready head module.
    """

    def __init__(self, backbone: nn.Module, heads: Mapping[str, int | nn.Module], *, feature_dim: int | None = None):
        super().__init__()
        self.backbone = backbone
        if feature_dim is None:
            feat = getattr(backbone, "features", None)
            feature_dim = int(getattr(feat, "out_features", 0) or getattr(backbone, "out_features", 0))
            if not feature_dim:
                raise ValueError("MultiDomainModel: cannot infer the feature dimension; pass feature_dim")
        self.feature_dim = feature_dim
        self.heads = nn.ModuleDict()
        for name, head in heads.items():
            self.heads[check_domain_name(name)] = nn.Linear(feature_dim, head) if isinstance(head, int) else head
        self.domain: str | None = None
        if self.heads:
            self.set_domain(next(iter(self.heads.keys())))

    @property
    def domains(self) -> list[str]:
        return list(self.heads.keys())

    def switches(self) -> Iterator[DomainSwitch]:
        for m in self.backbone.modules():
            if isinstance(m, DomainSwitch):
                yield m

    def set_domain(self, name: str) -> MultiDomainModel:
        """Route through ``name``'s adapters and head. Unknown name → :class:`UnknownDomainError` listing the known
        domains (and nothing is changed)."""
        known = set(self.heads.keys())
        for sw in self.switches():
            known &= set(sw.branches.keys())
        if name not in known:
            raise UnknownDomainError(f"unknown domain {name!r}; known domains: {sorted(known)}")
        for sw in self.switches():
            sw.set_domain(name)
        self.domain = name
        return self

    def add_domain(self, name: str, head: int | nn.Module) -> None:
        """Add a new domain: fresh adapter branches at every site and a head."""
        check_domain_name(name)
        if name in self.heads:
            raise ValueError(f"MultiDomainModel: domain {name!r} already exists")
        for sw in self.switches():
            if isinstance(sw, ResidualAdapter):
                sw.add_domain(name)
        self.heads[name] = nn.Linear(self.feature_dim, head) if isinstance(head, int) else head

    def forward(self, x: Tensor) -> Tensor:
        if self.domain is None:
            raise RuntimeError("MultiDomainModel: no domain set")
        features: Callable[[Tensor], Tensor] = getattr(self.backbone, "features", self.backbone)
        out = features(x)
        return self.heads[self.domain](out.flatten(1) if out.dim() > 2 else out)

    def domain_parameters(self, domain: str | None = None) -> list[nn.Parameter]:
        """The task-specific parameters of ``domain`` (default: the active one): its adapter branches (minus anything
        shared with other domains) and its head."""
        domain = domain or self.domain
        if domain is None or domain not in self.heads:
            raise UnknownDomainError(f"unknown domain {domain!r}; known domains: {sorted(self.heads.keys())}")
        owners: dict[int, int] = {}
        for sw in self.switches():
            for branch in sw.branches.values():
                for p in branch.parameters():
                    owners[id(p)] = owners.get(id(p), 0) + 1
        params: dict[int, nn.Parameter] = {}
        for sw in self.switches():
            if domain in sw.branches:
                for p in sw.branches[domain].parameters():
                    if owners[id(p)] == 1:  # parameters shared across domains (joint W̃, C̃) are not task-specific
                        params[id(p)] = p
        for p in self.heads[domain].parameters():
            params[id(p)] = p
        return list(params.values())

    def train(self, mode: bool = True) -> MultiDomainModel:
        """Train mode for the adapters and heads; the frozen backbone's own normalisation layers stay in eval."""
        super().train(mode)
        if mode:
            for m in self.backbone.modules():
                frozen = not any(p.requires_grad for p in m.parameters())
                if isinstance(m, nn.modules.batchnorm._BatchNorm) and frozen and not _inside_switch(self.backbone, m):
                    m.eval()
        return self


def _inside_switch(root: nn.Module, target: nn.Module) -> bool:
    return any(isinstance(m, DomainSwitch) and any(sub is target for sub in m.modules()) for m in root.modules())


def frozen_parameter_count(model: nn.Module) -> int:
    """Parameters of the shared backbone: everything outside the per-domain branches and heads."""
    per_domain: set[int] = set()
    for m in model.modules():
        if isinstance(m, DomainSwitch):
            for p in m.branches.parameters():
                per_domain.add(id(p))
    if isinstance(model, MultiDomainModel):
        for p in model.heads.parameters():
            per_domain.add(id(p))
    seen: set[int] = set()
    total = 0
    for p in model.parameters():
        if id(p) not in per_domain and id(p) not in seen:
            seen.add(id(p))
            total += p.numel()
    return total
