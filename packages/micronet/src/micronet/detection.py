"""MicroNet beyond classification (thesis Sections 4.6–4.7).

* :class:`MicroNetFPNBackbone` — a MicroNet feature pyramid (strides 8/16/32) + torchvision's
  ``FeaturePyramidNetwork``; exposes ``out_channels`` like ``torchvision.models.detection.backbone_utils.
  BackboneWithFPN`` so it drops into :func:`faster_rcnn` (Faster R-CNN + FPN) and :func:`retinanet`.
* :class:`MicroNetPose` — the keypoint model: blocks that would reach stride 32 run at stride 16 (×2 resolution), a
  head of three Micro-Blocks (one at stride 8, two at stride 4) with bilinear upsampling, and a 1×1 conv to 17
  heatmaps; input 256×192 → heatmaps 64×48. (The spatial attention of DY-ReLU [90] used by the thesis is not
  included.)
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

from micronet.config import BlockRow, MicroNetConfig, dsm, get_config
from micronet.model import MicroBlock, MicroNet, Stem

__all__ = ["MicroNetFPNBackbone", "MicroNetPose", "faster_rcnn", "pose_config", "retinanet"]


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
        MicroNet.reset_parameters(self)  # type: ignore[arg-type]  # released init for the MicroNet part

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


class MicroNetPose(nn.Module):
    """Keypoint model (Section 4.7): MicroNet at output stride 16 → upsample ×2 → Micro-Block (stride 8) →
    upsample ×2 → 2 Micro-Blocks (stride 4) → 1×1 conv → ``num_keypoints`` heatmaps.

    Shapes: (B, 3, 256, 192) → (B, 17, 64, 48).
    """

    def __init__(
        self,
        config: MicroNetConfig | str = "micronet_m3",
        *,
        num_keypoints: int = 17,
        head_channels: int = 64,
        head_hidden: int = 192,
        groups: int = 8,
    ) -> None:
        super().__init__()
        cfg = pose_config(config)
        self.stem = Stem(cfg.stem)
        self.blocks = nn.Sequential(*[MicroBlock(r) for r in cfg.blocks])
        c = cfg.last_channels
        self.head8 = MicroBlock(_head_row(c, head_channels, head_hidden, groups))
        self.head4 = nn.Sequential(
            MicroBlock(_head_row(head_channels, head_channels, head_hidden, groups)),
            MicroBlock(_head_row(head_channels, head_channels, head_hidden, groups)),
        )
        self.final = nn.Conv2d(head_channels, num_keypoints, 1)
        MicroNet.reset_parameters(self)  # type: ignore[arg-type]

    def forward(self, x: Tensor) -> Tensor:
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
