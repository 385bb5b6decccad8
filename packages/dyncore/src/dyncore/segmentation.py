"""Use any staged backbone as a segmentation-models-pytorch encoder (optional: needs ``segmentation-models-pytorch``).

A backbone package describes its network as stages of increasing stride (2, 4, 8, 16, 32) and registers a name::

    register_smp_encoder("micronet_m0", lambda: micronet_m0_stages(), out_channels=(3, 4, 8, 12, 32, 384))
    smp.DeepLabV3Plus(encoder_name="micronet_m0", encoder_weights=None, classes=19)

:class:`StagedEncoder` implements what smp asks of an encoder: ``out_channels``, ``output_stride``, a forward that
returns the input and one feature per stage, ``set_in_channels`` and ``make_dilated`` (output stride 8/16 by turning
strides into dilations, per axis, so factorised k×1 / 1×k convs stay correct).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from torch import Tensor, nn

__all__ = ["StagedEncoder", "register_smp_encoder"]

StageFactory = Callable[[], Sequence[nn.Module]]


def _dilate(stage: nn.Module, rate: int) -> None:
    """Replace every stride of ``stage`` by 1 and dilate its convs by ``rate`` along each axis the kernel spans."""
    for module in stage.modules():
        if not isinstance(module, nn.Conv2d):
            continue
        module.stride = (1, 1)
        kh, kw = module.kernel_size
        rh, rw = (rate if kh > 1 else 1), (rate if kw > 1 else 1)
        module.dilation = (rh, rw)
        module.padding = ((kh - 1) // 2 * rh, (kw - 1) // 2 * rw)


class StagedEncoder(nn.Module):
    """smp-compatible encoder over a list of stages with strides 2, 4, 8, 16, 32.

    Args:
        stages: modules run in order; stage i halves the resolution (output stride 2^(i+1)).
        out_channels: channels of [input, stage1, ..., stage5].
        depth: number of stages used (smp's ``encoder_depth``), 1–5.
        output_stride: 32, or 16/8 (later stages run dilated instead of strided).

    Forward: (B, C, H, W) → [x, f1 (H/2), f2 (H/4), ...] with ``depth + 1`` tensors.
    """

    def __init__(
        self, stages: Sequence[nn.Module], out_channels: Sequence[int], *, depth: int = 5, output_stride: int = 32
    ) -> None:
        super().__init__()
        if not 1 <= depth <= len(stages):
            raise ValueError(f"StagedEncoder: depth must be in [1, {len(stages)}], got {depth}")
        if len(out_channels) != len(stages) + 1:
            raise ValueError(
                f"StagedEncoder: out_channels needs {len(stages) + 1} entries (input + each stage), got {out_channels}"
            )
        self.stages = nn.ModuleList(stages[:depth])
        self._out_channels = list(out_channels)
        self._depth = depth
        self._in_channels = out_channels[0]
        self._output_stride = 32
        if output_stride != 32:
            self.make_dilated(output_stride)

    @property
    def out_channels(self) -> list[int]:
        return self._out_channels[: self._depth + 1]

    @property
    def output_stride(self) -> int:
        return min(self._output_stride, 2**self._depth)

    def set_in_channels(self, in_channels: int, pretrained: bool = True) -> None:
        if in_channels != self._in_channels:
            raise ValueError(
                f"StagedEncoder: built for {self._in_channels} input channels; rebuild the backbone for {in_channels}"
            )

    def make_dilated(self, output_stride: int) -> None:
        if output_stride not in (8, 16):
            raise ValueError(f"StagedEncoder: output stride must be 8, 16 or 32, got {output_stride}")
        for index, stage in enumerate(self.stages):
            stride = 2 ** (index + 1)
            if stride > output_stride:
                _dilate(stage, stride // output_stride)
        self._output_stride = output_stride

    def forward(self, x: Tensor) -> list[Tensor]:
        features = [x]
        for stage in self.stages:
            x = stage(x)
            features.append(x)
        return features


def register_smp_encoder(name: str, stages: StageFactory, out_channels: Sequence[int]) -> None:
    """Register ``name`` with segmentation-models-pytorch so ``smp.<Model>(encoder_name=name, encoder_weights=None)``
    builds this backbone. ``stages()`` must build fresh stage modules (randomly initialised) on every call."""
    try:
        from segmentation_models_pytorch import encoders as smp_encoders
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError(f"register_smp_encoder({name!r}) needs segmentation-models-pytorch installed") from err

    channels = list(out_channels)

    class _Encoder(StagedEncoder):
        def __init__(self, depth: int = 5, output_stride: int = 32) -> None:
            super().__init__(stages(), channels, depth=depth, output_stride=output_stride)

    _Encoder.__name__ = _Encoder.__qualname__ = f"{name}_encoder"
    smp_encoders.encoders[name] = {"encoder": _Encoder, "pretrained_settings": {}, "params": {}}
