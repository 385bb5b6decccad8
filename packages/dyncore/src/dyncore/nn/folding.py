"""Folded eval forwards: a module whose eval forward without autograd runs from constants folded once.

Dynamic layers carry x-independent work in every forward — BatchNorm affine maps, output maps of coefficient
branches, pairs of convolutions that compose into one. In eval mode without autograd that work can be done once;
:class:`FoldedForward` holds the folded value, builds it on first use and rebuilds it whenever any parameter or
buffer of the module changed: in place (tensor version counters: an optimizer step, ``load_state_dict``, BatchNorm
statistics), replaced (``module.weight = …``, a new sub-module) or moved (``.to()``, ``.half()``). With autograd on,
or in training, the module runs its defining computation.

:func:`folded_forward` switches the folded forwards off in a block; :func:`dyncore.complexity.count_madds` does, since
it counts a model through hooks on the modules its forward calls.
"""

from __future__ import annotations

import abc
import contextlib
from collections.abc import Callable, Iterator
from typing import Any, Generic, TypeVar

import torch
from torch import Tensor, nn

__all__ = ["FoldedForward", "folded_forward", "folded_forward_enabled"]

T = TypeVar("T")
_ENABLED = [True]


@contextlib.contextmanager
def folded_forward(enabled: bool) -> Iterator[None]:
    """Enable or disable every :class:`FoldedForward` module's folded path inside the block (restored after)."""
    previous = _ENABLED[0]
    _ENABLED[0] = bool(enabled)
    try:
        yield
    finally:
        _ENABLED[0] = previous


def folded_forward_enabled() -> bool:
    """Whether folded eval forwards are enabled (see :func:`folded_forward`)."""
    return _ENABLED[0]


class _Folded(Generic[T]):
    __slots__ = ("key", "sources", "value")

    def __init__(self, value: T, sources: tuple[Tensor, ...]) -> None:
        self.value, self.sources = value, sources
        self.key = tuple(t._version for t in sources)

    def current(self) -> bool:
        return self.key == tuple(t._version for t in self.sources)


class FoldedForward(nn.Module, metaclass=abc.ABCMeta):
    """Mixin for modules with a folded eval forward.

    Subclasses implement :meth:`build_folded` (the x-independent value: folded weights, a fused module, a plan) and
    branch in ``forward`` on :meth:`use_folded`, then call :meth:`folded`. Example::

        class ConvBN(FoldedForward, nn.Sequential):
            def build_folded(self): return fuse_conv_bn_eval(self[0], self[1])
            def forward(self, x):
                return self.folded()(x) if self.use_folded() else super().forward(x)
    """

    @abc.abstractmethod
    def build_folded(self) -> Any:
        """The x-independent value the folded forward runs from (built without autograd)."""

    def use_folded(self) -> bool:
        """Eval mode, autograd off and folded forwards enabled."""
        return not self.training and not torch.is_grad_enabled() and _ENABLED[0]

    def folded(self) -> Any:
        """The value of :meth:`build_folded`, rebuilt when any parameter or buffer has changed."""
        cache: _Folded[Any] | None = self.__dict__.get("_folded_cache")
        if cache is not None and cache.current():
            return cache.value
        with torch.inference_mode(False), torch.no_grad():
            value = self.build_folded()
        object.__setattr__(self, "_folded_cache", _Folded(value, (*self.parameters(), *self.buffers())))
        return value

    def drop_folded(self) -> None:
        """Forget the folded value (rebuilt on next use)."""
        self.__dict__.pop("_folded_cache", None)

    def __setattr__(self, name: str, value: Any) -> None:
        super().__setattr__(name, value)
        if isinstance(value, (Tensor, nn.Module)):
            self.drop_folded()  # a parameter, buffer or sub-module replaced

    def _apply(self, fn: Callable[[Tensor], Tensor], recurse: bool = True) -> Any:  # type: ignore[override]
        self.drop_folded()  # .to() / .cuda() / .half(): new storage
        return super()._apply(fn, recurse)
