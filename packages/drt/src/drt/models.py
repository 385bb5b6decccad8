"""Backbones with dynamic residuals and their static twins (thesis Section 6.4.1).

* Digit-Five: the community M3SDA "LeNet" (three 5×5 convs + two FCs → 2048-d feature) with a dynamic residual on
  each conv (``digit_cnn(dynamic=DynamicResidualConfig())``); ``dynamic=None`` gives the static twin with identical
  parameter names for the shared part. ``width`` scales every channel/FC width (the CPU demo uses a reduced width).
* DomainNet: torchvision ResNet-50/101 whose every bottleneck 3×3 conv becomes a :class:`DynamicResidualConv2d`
  routed from the *block* input (:func:`convert_resnet`, via ``dyncore.surgery``); the parameter names of the static
  network are kept, so ImageNet weights a user already has load into the static part (``strict=False``: only the
  new ``coefficients``/``bases`` are missing).
* :class:`DomainAdaptationNet`: backbone → F1, F2 classifier heads (MCD), with F1/F2/ensemble predictions;
  with ``num_sources=N`` each head is a :class:`SourceClassifiers` bank (M³SDA-β: a classifier pair per source).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import cast

import torch
from torch import Tensor, nn
from torchvision.models import resnet50, resnet101
from torchvision.models.resnet import Bottleneck, ResNet

from drt.layers import DynamicResidualConfig, DynamicResidualConv2d
from dyncore.surgery import SurgeryReport, by_type, replace_modules

__all__ = [
    "RESNET_STRIDE",
    "ClassifierHead",
    "DigitCNNConfig",
    "DigitFiveCNN",
    "DomainAdaptationNet",
    "DynamicResidualBottleneck",
    "SourceClassifiers",
    "convert_resnet",
    "digit_cnn",
    "drt_resnet50",
    "drt_resnet101",
    "resnet_backbone",
]


# ----------------------------------------------------------------------------------------------------------------------
# Digit-Five backbone


@dataclass(frozen=True)
class DigitCNNConfig:
    """Widths of the M3SDA Digit-Five CNN (paper values at ``width=1``).

    conv5×5 3→c1 pad 2 → BN → ReLU → maxpool 3/2 pad 1 → conv5×5 c1→c2 pad 2 → BN → ReLU → maxpool 3/2 pad 1 →
    conv5×5 c2→c3 pad 2 → BN → ReLU → flatten (c3·8·8) → FC f1 → BN → ReLU → dropout → FC f2 → BN → ReLU.
    """

    conv_channels: tuple[int, int, int] = (64, 64, 128)
    fc_features: tuple[int, int] = (3072, 2048)
    dropout: float = 0.5
    image_size: int = 32

    def scaled(self, width: float) -> DigitCNNConfig:
        if width <= 0:
            raise ValueError(f"DigitCNNConfig.scaled: width must be positive, got {width}")
        return DigitCNNConfig(
            conv_channels=tuple(max(4, round(c * width)) for c in self.conv_channels),  # type: ignore[arg-type]
            fc_features=tuple(max(8, round(f * width)) for f in self.fc_features),  # type: ignore[arg-type]
            dropout=self.dropout,
            image_size=self.image_size,
        )


class DigitFiveCNN(nn.Module):
    """The M3SDA Digit-Five feature extractor, (B, 3, 32, 32) → (B, ``out_features``), static or with DRT convs."""

    def __init__(self, config: DigitCNNConfig | None = None, *, dynamic: DynamicResidualConfig | None = None) -> None:
        super().__init__()
        cfg = config or DigitCNNConfig()
        if cfg.image_size % 4:
            raise ValueError(f"DigitFiveCNN: image_size must be divisible by 4, got {cfg.image_size}")
        c1, c2, c3 = cfg.conv_channels
        f1, f2 = cfg.fc_features
        self.config, self.dynamic = cfg, dynamic

        def conv(cin: int, cout: int) -> nn.Conv2d:
            if dynamic is None:
                return nn.Conv2d(cin, cout, 5, padding=2)
            return DynamicResidualConv2d(cin, cout, 5, padding=2, config=dynamic)

        self.conv1, self.bn1 = conv(3, c1), nn.BatchNorm2d(c1)
        self.conv2, self.bn2 = conv(c1, c2), nn.BatchNorm2d(c2)
        self.conv3, self.bn3 = conv(c2, c3), nn.BatchNorm2d(c3)
        self.pool = nn.MaxPool2d(3, stride=2, padding=1)
        self.relu = nn.ReLU(inplace=True)
        side = cfg.image_size // 4
        self.fc1, self.bn_fc1 = nn.Linear(c3 * side * side, f1), nn.BatchNorm1d(f1)
        self.dropout = nn.Dropout(cfg.dropout)
        self.fc2, self.bn_fc2 = nn.Linear(f1, f2), nn.BatchNorm1d(f2)
        self.out_features = f2

    def check_image_size(self, size: tuple[int, int]) -> None:
        """Raise ValueError unless ``size`` (H, W) is the configured ``image_size`` square: fc1 reads
        C3·(image_size/4)² features, so the net takes exactly one input size."""
        s = self.config.image_size
        if tuple(size) != (s, s):
            raise ValueError(
                f"DigitFiveCNN: images must be {s}×{s} (two stride-2 poolings, then fc1 reads {s // 4}×{s // 4} "
                f"maps), got {size[0]}×{size[1]}"
            )

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() != 4 or x.shape[1] != 3:
            raise ValueError(f"DigitFiveCNN: expected images (B, 3, H, W), got {tuple(x.shape)}")
        self.check_image_size((x.shape[2], x.shape[3]))
        x = self.pool(self.relu(self.bn1(self.conv1(x))))
        x = self.pool(self.relu(self.bn2(self.conv2(x))))
        x = self.relu(self.bn3(self.conv3(x))).flatten(1)
        x = self.dropout(self.relu(self.bn_fc1(self.fc1(x))))
        return self.relu(self.bn_fc2(self.fc2(x)))


def digit_cnn(*, width: float = 1.0, dynamic: DynamicResidualConfig | None = None) -> DigitFiveCNN:
    """The Digit-Five CNN at ``width`` × the M3SDA widths; ``dynamic`` adds a dynamic residual to every conv."""
    return DigitFiveCNN(DigitCNNConfig().scaled(width), dynamic=dynamic)


# ----------------------------------------------------------------------------------------------------------------------
# ResNet (DomainNet)

#: total stride of a torchvision ResNet (stem ×4, stages ×8): the smallest image side it can take.
RESNET_STRIDE = 32


class DynamicResidualBottleneck(nn.Module):
    """A torchvision ``Bottleneck`` whose 3×3 conv carries the dynamic residual, routed from the BLOCK input.

    The children keep torchvision's names (conv1, bn1, conv2, bn2, conv3, bn3, relu, downsample), so the static
    block's state_dict keys are unchanged; ``conv2`` gains ``coefficients.*`` and ``bases``.
    """

    expansion = 4

    def __init__(self, block: Bottleneck, config: DynamicResidualConfig | None = None) -> None:
        super().__init__()
        if not isinstance(block, Bottleneck):
            raise TypeError(f"DynamicResidualBottleneck: expected a torchvision Bottleneck, got {type(block).__name__}")
        self.conv1, self.bn1 = block.conv1, block.bn1
        self.conv2 = DynamicResidualConv2d.from_conv(
            block.conv2, config=config, context_channels=block.conv1.in_channels
        )
        self.bn2, self.conv3, self.bn3 = block.bn2, block.conv3, block.bn3
        self.relu, self.downsample, self.stride = block.relu, block.downsample, block.stride

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out, x)))  # the routing reads the block input x
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


def convert_resnet(model: ResNet, config: DynamicResidualConfig | None = None) -> SurgeryReport:
    """Add a dynamic residual to every bottleneck 3×3 conv of a torchvision ResNet, in place (weights kept)."""
    if not isinstance(model, ResNet):
        raise TypeError(f"convert_resnet: expected a torchvision ResNet, got {type(model).__name__}")
    return replace_modules(model, by_type(Bottleneck), lambda name, block: DynamicResidualBottleneck(block, config))


def _resnet(depth: int, *, num_classes: int, dynamic: DynamicResidualConfig | None, weights: object) -> ResNet:
    builders = {50: resnet50, 101: resnet101}
    if depth not in builders:
        raise ValueError(f"resnet depth must be one of {sorted(builders)}, got {depth}")
    model = builders[depth](weights=weights, num_classes=num_classes)
    if dynamic is not None:
        convert_resnet(model, dynamic)
    return model


def drt_resnet50(
    *, num_classes: int = 1000, dynamic: DynamicResidualConfig | None = None, weights: object = None
) -> ResNet:
    """ResNet-50 with DRT on every bottleneck 3×3 (``dynamic`` default: routing, K = 4, 1×1 zero-init bases)."""
    return _resnet(50, num_classes=num_classes, dynamic=dynamic or DynamicResidualConfig(), weights=weights)


def drt_resnet101(
    *, num_classes: int = 1000, dynamic: DynamicResidualConfig | None = None, weights: object = None
) -> ResNet:
    """ResNet-101 with DRT on every bottleneck 3×3 (the thesis' DomainNet backbone: 33 dynamic blocks)."""
    return _resnet(101, num_classes=num_classes, dynamic=dynamic or DynamicResidualConfig(), weights=weights)


def resnet_backbone(
    depth: int = 101, *, dynamic: DynamicResidualConfig | None = None, weights: object = None
) -> ResNet:
    """A ResNet feature extractor (fc = Identity, 2048-d output); ``dynamic=None`` is the static twin."""
    model = _resnet(depth, num_classes=1000, dynamic=dynamic, weights=weights)
    model.fc = nn.Identity()  # type: ignore[assignment]
    model.out_features = 2048  # type: ignore[assignment]
    return model


# ----------------------------------------------------------------------------------------------------------------------
# Heads and the adaptation network


class ClassifierHead(nn.Sequential):
    """A classifier on backbone features. ``hidden=()`` → one Linear (Digit-Five); the released DomainNet head is
    ``hidden=(1000, 1000)``: Dropout 0.5 → FC → BN → ReLU → Dropout 0.5 → FC → BN → ReLU → FC classes, initialised
    N(0, 0.01) with BN weight N(1, 0.01)."""

    def __init__(self, in_features: int, num_classes: int, *, hidden: Sequence[int] = (), dropout: float = 0.5) -> None:
        if num_classes < 2:
            raise ValueError(f"ClassifierHead: num_classes must be >= 2, got {num_classes}")
        layers: list[nn.Module] = []
        width = in_features
        for h in hidden:
            layers += [nn.Dropout(dropout), nn.Linear(width, h), nn.BatchNorm1d(h), nn.ReLU(inplace=True)]
            width = h
        layers.append(nn.Linear(width, num_classes))
        super().__init__(*layers)
        self.num_classes = num_classes
        if hidden:
            for m in self.modules():
                if isinstance(m, nn.Linear):
                    nn.init.normal_(m.weight, 0.0, 0.01)
                    nn.init.zeros_(m.bias)
                elif isinstance(m, nn.BatchNorm1d):
                    nn.init.normal_(m.weight, 1.0, 0.01)
                    nn.init.zeros_(m.bias)


class SourceClassifiers(nn.Module):
    """One classifier per source domain, combined into one prediction (M³SDA, Peng et al. 2019).

    ``per_source(f)``: (B, D) → N raw logits (B, C), classifier C_i trained on source i only. ``forward(f)``:
    (B, D) → (B, C) log-probabilities of the weighted mixture log Σ_i w_i·softmax(C_i(f)) — the target prediction.
    The weights w (buffer ``source_weights``, (N,), non-negative, summing to 1, saved with the model) default to
    uniform; :meth:`set_source_weights` replaces them (e.g. by per-source held-out accuracies). Because softmax of
    the output gives back the mixture probabilities, it drops in wherever a logit head is expected.
    """

    source_weights: Tensor

    def __init__(
        self,
        in_features: int,
        num_classes: int,
        num_sources: int,
        *,
        hidden: Sequence[int] = (),
        dropout: float = 0.5,
    ) -> None:
        super().__init__()
        if num_sources < 1:
            raise ValueError(f"SourceClassifiers: num_sources must be >= 1, got {num_sources}")
        self.classifiers = nn.ModuleList(
            ClassifierHead(in_features, num_classes, hidden=hidden, dropout=dropout) for _ in range(num_sources)
        )
        self.register_buffer("source_weights", torch.full((num_sources,), 1.0 / num_sources))
        self.num_classes = num_classes
        self.num_sources = num_sources

    def set_source_weights(self, weights: Sequence[float] | Tensor) -> None:
        """Set w (N non-negative values, not all zero); they are normalised to sum to 1."""
        w = torch.as_tensor(weights, dtype=torch.float64).flatten()
        if w.numel() != self.num_sources:
            raise ValueError(
                f"set_source_weights: expected {self.num_sources} weights (one per source), got {w.numel()}"
            )
        if not bool(torch.isfinite(w).all()) or bool((w < 0).any()) or float(w.sum()) <= 0:
            raise ValueError(f"set_source_weights: weights must be finite, >= 0 and not all 0, got {w.tolist()}")
        self.source_weights.copy_((w / w.sum()).to(self.source_weights))

    def per_source(self, f: Tensor) -> list[Tensor]:
        """[C_i(f)] for every source i: (B, D) → N × (B, C) raw logits."""
        return [c(f) for c in self.classifiers]

    def combine(self, logits: Sequence[Tensor]) -> Tensor:
        """log Σ_i w_i·softmax(logits_i): N × (B, C) → (B, C), computed as a logsumexp for stability."""
        log_p = torch.stack([lg.log_softmax(dim=1) for lg in logits])  # (N, B, C)
        log_w = self.source_weights.to(log_p.dtype).log()[:, None, None]
        return torch.logsumexp(log_p + log_w, dim=0)

    def forward(self, f: Tensor) -> Tensor:
        return self.combine(self.per_source(f))


class DomainAdaptationNet(nn.Module):
    """Feature extractor G + classifier heads F1..Fn (n = 2 for MCD).

    ``forward(x)`` returns the ensemble logits (B, C): per sample, the head with the larger max logit.
    ``predict(x)`` returns ``{"F1": .., "F2": .., "ensemble": ..}``.

    M³SDA-β (``num_sources=N``): each head F_j is a :class:`SourceClassifiers` bank of N per-source classifiers, so
    source i owns the pair (C_i, C'_i) = (F1.classifiers[i], F2.classifiers[i]) (:meth:`source_pairs`). F1 is then
    the weighted combination of the first classifier of every pair, log Σ_i w_i·softmax(C_i), F2 that of the
    second ones, and the ensemble is the same rule as for every other method (per sample, the more confident of
    F1 and F2).
    """

    def __init__(
        self,
        backbone: nn.Module,
        num_classes: int,
        *,
        num_heads: int = 2,
        feature_dim: int | None = None,
        head_hidden: Sequence[int] = (),
        dropout: float = 0.5,
        num_sources: int | None = None,
    ) -> None:
        super().__init__()
        if num_heads < 1:
            raise ValueError(f"DomainAdaptationNet: num_heads must be >= 1, got {num_heads}")
        if num_sources is not None and num_sources < 1:
            raise ValueError(f"DomainAdaptationNet: num_sources must be >= 1 (or None), got {num_sources}")
        dim = feature_dim if feature_dim is not None else getattr(backbone, "out_features", None)
        if not isinstance(dim, int):
            raise ValueError("DomainAdaptationNet: pass feature_dim (the backbone has no int .out_features)")
        self.backbone = backbone

        def head() -> nn.Module:
            if num_sources is None:
                return ClassifierHead(dim, num_classes, hidden=head_hidden, dropout=dropout)
            return SourceClassifiers(dim, num_classes, num_sources, hidden=head_hidden, dropout=dropout)

        self.heads = nn.ModuleList(head() for _ in range(num_heads))
        self.num_classes = num_classes
        self.feature_dim = dim
        self.num_sources = num_sources

    def check_image_size(self, size: tuple[int, int]) -> None:
        """Raise ValueError when the backbone cannot take (H, W) images: the digit CNN takes its one size; a
        ResNet needs at least its total stride (:data:`RESNET_STRIDE` = 32) per side — a smaller image leaves no
        spatial position after the last stage."""
        check = getattr(self.backbone, "check_image_size", None)
        if callable(check):
            check(size)
        elif isinstance(self.backbone, ResNet) and min(size) < RESNET_STRIDE:
            raise ValueError(
                f"ResNet backbone: images must be at least {RESNET_STRIDE}×{RESNET_STRIDE} (its total stride), got "
                f"{size[0]}×{size[1]}"
            )

    def source_pairs(self) -> list[tuple[nn.Module, ...]]:
        """M³SDA-β: [(F1.classifiers[i], F2.classifiers[i], …)] for every source i."""
        if self.num_sources is None:
            raise ValueError("DomainAdaptationNet.source_pairs: the model has no per-source heads (num_sources=None)")
        banks = [cast(SourceClassifiers, h) for h in self.heads]
        return list(zip(*(bank.classifiers for bank in banks)))

    def set_source_weights(self, weights: Sequence[float] | Tensor) -> None:
        """M³SDA-β: the per-source combination weights w of every head (see :class:`SourceClassifiers`)."""
        if self.num_sources is None:
            raise ValueError("DomainAdaptationNet.set_source_weights: the model has no per-source heads")
        for h in self.heads:
            cast(SourceClassifiers, h).set_source_weights(weights)

    def features(self, x: Tensor) -> Tensor:
        """G(x): (B, 3, H, W) → (B, D)."""
        return self.backbone(x)

    def classify(self, f: Tensor) -> list[Tensor]:
        """[F_j(f)] for every head j: (B, D) → list of (B, C)."""
        return [head(f) for head in self.heads]

    @staticmethod
    def ensemble(logits: Sequence[Tensor]) -> Tensor:
        """Per sample, the logits of the head with the larger max logit: list of (B, C) → (B, C)."""
        stacked = torch.stack(list(logits))  # (n, B, C)
        best = stacked.max(dim=2).values.argmax(dim=0)  # (B,)
        return stacked[best, torch.arange(stacked.shape[1], device=stacked.device)]

    def predict(self, x: Tensor) -> dict[str, Tensor]:
        logits = self.classify(self.features(x))
        out = {f"F{j + 1}": lg for j, lg in enumerate(logits)}
        out["ensemble"] = self.ensemble(logits)
        return out

    def forward(self, x: Tensor) -> Tensor:
        return self.ensemble(self.classify(self.features(x)))
