"""MicroNet as a staged backbone (strides 2, 4, 8, 16, 32) and as segmentation-models-pytorch encoders.

``register_smp_encoders()`` registers ``micronet_m0`` … ``micronet_m3`` with smp through
:func:`dyncore.segmentation.register_smp_encoder`, so ``smp.DeepLabV3Plus(encoder_name="micronet_m2",
encoder_weights=None)`` builds (BDL uses MicroNet encoders this way). smp is optional and imported only on call.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from micronet.config import MicroNetConfig, get_config
from micronet.model import MicroBlock, Stem, init_weights

__all__ = ["ENCODER_NAMES", "micronet_stages", "register_smp_encoders", "stage_channels"]

ENCODER_NAMES: tuple[str, ...] = ("micronet_m0", "micronet_m1", "micronet_m2", "micronet_m3")


def _cfg(config: MicroNetConfig | str) -> MicroNetConfig:
    return get_config(config) if isinstance(config, str) else config


def _groups(cfg: MicroNetConfig) -> list[list[int]]:
    """Block indices per stage (stage s ends at output stride 2^(s+1))."""
    if cfg.stem.stride != 2:
        raise ValueError(f"micronet_stages: {cfg.name} has stem stride {cfg.stem.stride}; stages need stride 2")
    stages: list[list[int]] = [[] for _ in range(4)]
    stride = 2
    for i, row in enumerate(cfg.blocks):
        stride *= row.stride
        level = stride.bit_length() - 3  # 4 → 0, 8 → 1, 16 → 2, 32 → 3
        if not 0 <= level < 4:
            raise ValueError(f"micronet_stages: block {i + 1} of {cfg.name} reaches unsupported stride {stride}")
        stages[level].append(i)
    if any(not s for s in stages):
        raise ValueError(f"micronet_stages: {cfg.name} does not reach every stride 4, 8, 16, 32")
    return stages


def micronet_stages(config: MicroNetConfig | str) -> list[nn.Module]:
    """Five freshly initialised stages: stem (stride 2), then the blocks ending at strides 4, 8, 16, 32."""
    cfg = _cfg(config)
    stages: list[nn.Module] = [Stem(cfg.stem)]
    stages += [nn.Sequential(*[MicroBlock(cfg.blocks[i]) for i in idx]) for idx in _groups(cfg)]
    holder = nn.ModuleList(stages)
    init_weights(holder)
    return stages


def stage_channels(config: MicroNetConfig | str) -> tuple[int, ...]:
    """(input channels, stage 1 … stage 5 channels), smp's ``out_channels``."""
    cfg = _cfg(config)
    return (cfg.stem.in_channels, cfg.stem.out_channels, *(cfg.blocks[idx[-1]].cout for idx in _groups(cfg)))


def register_smp_encoders(names: Sequence[str] = ENCODER_NAMES) -> None:
    """Register MicroNet encoders with segmentation-models-pytorch (needs it installed); unknown names raise
    ValueError before anything is registered."""
    from dyncore.segmentation import register_smp_encoder

    channels = {name: stage_channels(name) for name in names}  # validates every name first (get_config)
    for name in names:
        register_smp_encoder(name, lambda n=name: micronet_stages(n), channels[name])
