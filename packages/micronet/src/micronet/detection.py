"""MicroNet beyond classification (thesis Sections 4.6–4.7).

* :class:`MicroNetFPNBackbone` — a MicroNet feature pyramid (strides 8/16/32) + torchvision's
  ``FeaturePyramidNetwork``; exposes ``out_channels`` like ``torchvision.models.detection.backbone_utils.
  BackboneWithFPN`` so it drops into :func:`faster_rcnn` (Faster R-CNN + FPN) and :func:`retinanet`.
* :class:`MicroNetPose` — the keypoint model: blocks that would reach stride 32 run at stride 16 (×2 resolution), a
  head of three Micro-Blocks (one at stride 8, two at stride 4) with bilinear upsampling, and a 1×1 conv to 17
  heatmaps; input 256×192 → heatmaps 64×48. Every dynamic activation of the head is spatial-aware
  (:class:`SpatialAwareShiftMax`): "the spatial attention mechanism of [90] is used" (Section 4.7; [90] = DY-ReLU).
* :class:`SpatialAttention` / :class:`SpatialAwareShiftMax` — the spatial branch of DY-ReLU-C (Chen et al. 2020,
  "Dynamic ReLU", the spatial- and channel-wise variant, which that paper finds best in keypoint heads) applied to
  the Eq. 4.4 family (Dynamic Shift-Max, Dynamic ReLU).
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import replace

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models.detection import FasterRCNN, RetinaNet
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.ops import FeaturePyramidNetwork, MultiScaleRoIAlign
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool, LastLevelP6P7

from dyncore.surgery import by_type, replace_modules
from micronet.config import BlockRow, MicroNetConfig, dsm, get_config
from micronet.layers import DynamicShiftMax, StaticShiftMax
from micronet.model import MicroBlock, Stem, init_weights

__all__ = [
    "MicroNetFPNBackbone",
    "MicroNetPose",
    "SpatialAttention",
    "SpatialAwareShiftMax",
    "faster_rcnn",
    "gaussian_heatmaps",
    "pose_config",
    "retinanet",
    "spatial_aware",
]


def _resolve(config: MicroNetConfig | str) -> MicroNetConfig:
    return get_config(config) if isinstance(config, str) else config


class MicroNetFPNBackbone(nn.Module):
    """MicroNet stem + blocks returning the last feature of the stride-8, -16 and -32 stages, fused by an FPN.

    Args:
        config: MicroNet config (or name).
        out_channels: FPN width (``out_channels`` attribute, read by torchvision's detectors).
        extra: "maxpool" (Faster R-CNN: adds a stride-64 'pool' level) or "p6p7" (RetinaNet: P6, P7).

    Shapes: (B, 3, H, W) → OrderedDict '0' (B, out, H/8, W/8), '1' (H/16), '2' (H/32), + extra levels.
    """

    def __init__(
        self, config: MicroNetConfig | str = "micronet_m0", *, out_channels: int = 64, extra: str = "maxpool"
    ) -> None:
        super().__init__()
        cfg = _resolve(config)
        self.stem = Stem(cfg.stem)
        self.blocks = nn.Sequential(*[MicroBlock(r) for r in cfg.blocks])
        stride = cfg.stem.stride
        last: dict[int, int] = {}
        channels: dict[int, int] = {}
        for i, row in enumerate(cfg.blocks):
            stride *= row.stride
            last[stride], channels[stride] = i, row.cout
        missing = [s for s in (8, 16, 32) if s not in last]
        if missing:
            raise ValueError(f"MicroNetFPNBackbone: config {cfg.name} has no stage at stride(s) {missing}")
        self.taps = {last[s]: str(k) for k, s in enumerate((8, 16, 32))}
        in_list = [channels[s] for s in (8, 16, 32)]
        if extra == "maxpool":
            block: nn.Module = LastLevelMaxPool()
        elif extra == "p6p7":
            block = LastLevelP6P7(out_channels, out_channels)
        else:
            raise ValueError(f"MicroNetFPNBackbone: extra must be 'maxpool' or 'p6p7', got {extra!r}")
        self.fpn = FeaturePyramidNetwork(in_list, out_channels, extra_blocks=block)  # type: ignore[arg-type]
        self.out_channels = out_channels
        self.total_stride = cfg.total_stride
        init_weights(self)  # the MicroNet part: micronet's default init

    def forward(self, x: Tensor) -> OrderedDict[str, Tensor]:
        if x.shape[-2] < self.total_stride or x.shape[-1] < self.total_stride:
            raise ValueError(
                f"MicroNetFPNBackbone: input {tuple(x.shape[-2:])} is smaller than the total stride {self.total_stride}"
            )
        feats: OrderedDict[str, Tensor] = OrderedDict()
        x = self.stem(x)
        for i, block in enumerate(self.blocks):
            x = block(x)
            if i in self.taps:
                feats[self.taps[i]] = x
        return self.fpn(feats)


def faster_rcnn(
    config: MicroNetConfig | str = "micronet_m3", *, num_classes: int = 91, out_channels: int = 64, **kwargs: object
) -> FasterRCNN:
    """Faster R-CNN + FPN with a MicroNet backbone (Section 4.6). ``kwargs`` go to torchvision's FasterRCNN
    (e.g. ``min_size``/``max_size``)."""
    backbone = MicroNetFPNBackbone(config, out_channels=out_channels, extra="maxpool")
    anchors = AnchorGenerator(((32,), (64,), (128,), (256,)), ((0.5, 1.0, 2.0),) * 4)
    roi = MultiScaleRoIAlign(["0", "1", "2"], output_size=7, sampling_ratio=2)
    return FasterRCNN(backbone, num_classes=num_classes, rpn_anchor_generator=anchors, box_roi_pool=roi, **kwargs)  # type: ignore[arg-type]


def retinanet(
    config: MicroNetConfig | str = "micronet_m3", *, num_classes: int = 91, out_channels: int = 64, **kwargs: object
) -> RetinaNet:
    """RetinaNet with a MicroNet FPN backbone (P3–P7, Section 4.6)."""
    backbone = MicroNetFPNBackbone(config, out_channels=out_channels, extra="p6p7")
    sizes = tuple((s, int(s * 2 ** (1 / 3)), int(s * 2 ** (2 / 3))) for s in (32, 64, 128, 256, 512))
    anchors = AnchorGenerator(sizes, ((0.5, 1.0, 2.0),) * 5)
    return RetinaNet(backbone, num_classes=num_classes, anchor_generator=anchors, **kwargs)  # type: ignore[arg-type]


def pose_config(config: MicroNetConfig | str) -> MicroNetConfig:
    """``config`` with every block that would reach stride 32 kept at stride 16 (×2 resolution, Section 4.7)."""
    cfg = _resolve(config)
    stride, rows = cfg.stem.stride, []
    for row in cfg.blocks:
        if stride * row.stride > 16:
            row = replace(row, stride=1)
        stride *= row.stride
        rows.append(row)
    return replace(cfg, name=f"{cfg.name}_pose", blocks=tuple(rows), released_name="")


def _head_row(cin: int, cout: int, hidden: int, groups: int) -> BlockRow:
    """A Micro-Block-C row of the keypoint head (DSM at A1/A2/A3, like M2's C-rows)."""
    squeeze = max(4, hidden // 8 // 4 * 4)
    return BlockRow(
        "C",
        cin,
        cout,
        5,
        1,
        hidden,
        (1, 1),
        groups,
        groups,
        groups,
        groups,
        dsm(2, squeeze),
        dsm(2, squeeze),
        dsm(1, max(4, cout // 8 // 4 * 4)),
    )


class SpatialAttention(nn.Module):
    """Spatial attention of DY-ReLU-C (Chen et al. 2020, Dynamic ReLU, spatial- and channel-wise variant).

    z = W ∗ x                                    (a 1×1 conv C → 1, no bias: a softmax ignores a constant shift)
    π_{h,w}(x) = min(1, (H·W/τ) · exp(z_{h,w}) / Σ_{h',w'} exp(z_{h',w'}))

    The softmax runs over the H×W positions of each sample; scaling by H·W/τ makes a uniform map equal 1/τ at every
    position, and the clip at 1 lets at most H·W/τ positions reach full strength (the unclipped values sum to
    H·W/τ). Values lie in [0, 1]; clipped positions pass no gradient to z. The conv weight starts at zero (uniform
    π = min(1, 1/τ)); :meth:`reset_parameters` restores that after a model-wide re-initialisation.

    Args:
        channels: C of the input.
        tau: τ > 0 (default 3: a uniform map gives 1/3 and a position saturates once it holds ≥ 3/(H·W) of the
            softmax mass).

    Shapes: (B, C, H, W) → π (B, 1, H, W).
    """

    def __init__(self, channels: int, *, tau: float = 3.0) -> None:
        super().__init__()
        if not isinstance(channels, int) or channels <= 0:
            raise ValueError(f"SpatialAttention: channels must be a positive int, got {channels!r}")
        if not tau > 0:
            raise ValueError(f"SpatialAttention: tau must be positive, got {tau!r}")
        self.channels, self.tau = channels, float(tau)
        self.conv = nn.Conv2d(channels, 1, 1, bias=False)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.zeros_(self.conv.weight)

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() != 4 or x.shape[1] != self.channels:
            raise ValueError(f"SpatialAttention: expected input (B, {self.channels}, H, W), got shape {tuple(x.shape)}")
        b, _, h, w = x.shape
        mass = torch.softmax(self.conv(x).flatten(1), dim=1)  # (B, H·W), sums to 1 per sample
        return (mass * (h * w / self.tau)).clamp(max=1.0).view(b, 1, h, w)

    def extra_repr(self) -> str:
        return f"channels={self.channels}, tau={self.tau:g}"


class SpatialAwareShiftMax(nn.Module):
    """A Shift-Max-family activation (Eq. 4.4) made spatial-aware the DY-ReLU-C way: every channel-wise coefficient
    is multiplied by the spatial attention of :class:`SpatialAttention` computed from the same input,

        a^k_{i,j}(x)  →  π_{h,w}(x) · a^k_{i,j}(x),
        y_{i,h,w} = max_k Σ_j π_{h,w}(x) a^k_{i,j}(x) x^j_{i,h,w} = π_{h,w}(x) · max_k Σ_j a^k_{i,j}(x) x^j_{i,h,w},

    the second form because π ≥ 0 factors out of the sum, the max (and the optional ReLU of SE+ReLU). It is
    computed that way: one (B, 1, H, W) map times the wrapped activation's output, no per-pixel coefficients.
    With J = 1 (:class:`~micronet.layers.DynamicReLU`) this is DY-ReLU-C without intercepts.

    Args:
        activation: a :class:`~micronet.layers.DynamicShiftMax` (or its J = 1 subclasses) or
            :class:`~micronet.layers.StaticShiftMax`.
        tau: τ of :class:`SpatialAttention`.

    Shapes: (B, C, H, W) → (B, C, H, W).
    """

    def __init__(self, activation: nn.Module, *, tau: float = 3.0) -> None:
        super().__init__()
        if not isinstance(activation, (DynamicShiftMax, StaticShiftMax)):
            raise TypeError(
                "SpatialAwareShiftMax: activation must be a DynamicShiftMax/StaticShiftMax (coefficients that scale "
                f"linearly), got {type(activation).__name__}"
            )
        self.activation = activation
        self.attention = SpatialAttention(activation.channels, tau=tau)

    def forward(self, x: Tensor) -> Tensor:
        return self.attention(x) * self.activation(x)


def spatial_aware(module: nn.Module, *, tau: float = 3.0) -> nn.Module:
    """Wrap every Shift-Max-family activation inside ``module`` in :class:`SpatialAwareShiftMax` (in place, via
    :func:`dyncore.surgery.replace_modules`); returns ``module``. Raises ``SurgeryError`` if there is none."""
    if any(isinstance(m, SpatialAwareShiftMax) for m in module.modules()):
        raise ValueError(f"spatial_aware: {type(module).__name__} already holds SpatialAwareShiftMax activations")
    replace_modules(
        module,
        by_type(DynamicShiftMax, StaticShiftMax),
        lambda name, act: SpatialAwareShiftMax(act, tau=tau),
    )
    return module


class MicroNetPose(nn.Module):
    """Keypoint model (Section 4.7): MicroNet at output stride 16 → upsample ×2 → Micro-Block (stride 8) →
    upsample ×2 → 2 Micro-Blocks (stride 4) → 1×1 conv → ``num_keypoints`` heatmaps.

    The head's Micro-Blocks carry Dynamic Shift-Max at A1/A2/A3; with ``spatial_attention`` (default) each of them is
    a :class:`SpatialAwareShiftMax` (coefficients × π_{h,w}(x), DY-ReLU-C), "the spatial attention mechanism of
    [90]" that the thesis uses in this model. The backbone's activations stay channel-wise only (the DY-ReLU paper
    finds channel-wise variants suited to the backbone, the spatial variant to the head), so the backbone is the
    classification MicroNet's blocks at a different stride.

    Args:
        config: MicroNet config (or name) of the backbone.
        num_keypoints: heatmaps produced.
        head_channels / head_hidden / groups: width, expanded width and group count of the head blocks.
        spatial_attention: make the head's dynamic activations spatial-aware.
        tau: τ of :class:`SpatialAttention`.

    Shapes: (B, 3, H, W), H and W ≥ 16 → (B, num_keypoints, H/4, W/4); (B, 3, 256, 192) → (B, 17, 64, 48).
    """

    def __init__(
        self,
        config: MicroNetConfig | str = "micronet_m3",
        *,
        num_keypoints: int = 17,
        head_channels: int = 64,
        head_hidden: int = 192,
        groups: int = 8,
        spatial_attention: bool = True,
        tau: float = 3.0,
    ) -> None:
        super().__init__()
        cfg = pose_config(config)
        self.in_channels = cfg.stem.in_channels
        self.stem = Stem(cfg.stem)
        self.blocks = nn.Sequential(*[MicroBlock(r) for r in cfg.blocks])
        c = cfg.last_channels
        self.head8 = MicroBlock(_head_row(c, head_channels, head_hidden, groups))
        self.head4 = nn.Sequential(
            MicroBlock(_head_row(head_channels, head_channels, head_hidden, groups)),
            MicroBlock(_head_row(head_channels, head_channels, head_hidden, groups)),
        )
        self.final = nn.Conv2d(head_channels, num_keypoints, 1)
        init_weights(self)
        if spatial_attention:  # after the re-init, so the attention convs keep their zero (uniform π) start
            spatial_aware(self.head8, tau=tau)
            spatial_aware(self.head4, tau=tau)

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"MicroNetPose: expected input (B, {self.in_channels}, H, W), got shape {tuple(x.shape)}")
        if x.shape[-2] < 16 or x.shape[-1] < 16:
            raise ValueError(f"MicroNetPose: input {tuple(x.shape[-2:])} is smaller than the total stride 16")
        f = self.blocks(self.stem(x))
        f = self.head8(F.interpolate(f, scale_factor=2.0, mode="bilinear", align_corners=False))
        f = self.head4(F.interpolate(f, scale_factor=2.0, mode="bilinear", align_corners=False))
        return self.final(f)


def gaussian_heatmaps(keypoints: Tensor, size: tuple[int, int], sigma: float = 2.0) -> Tensor:
    """Target heatmaps (B, K, h, w) for keypoints (B, K, 2) given in heatmap pixel coordinates (x, y)."""
    h, w = size
    ys = torch.arange(h, dtype=torch.float32).view(1, 1, h, 1)
    xs = torch.arange(w, dtype=torch.float32).view(1, 1, 1, w)
    kx, ky = keypoints[..., 0, None, None], keypoints[..., 1, None, None]
    return torch.exp(-((xs - kx) ** 2 + (ys - ky) ** 2) / (2 * sigma**2))
