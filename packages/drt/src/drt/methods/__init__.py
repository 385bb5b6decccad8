"""The alignment methods of Table 6.2, one module each, in a registry the training loop looks up by name.

========== =================================================================================================
name       module
========== =================================================================================================
source_only :mod:`drt.methods.source_only` — CE on the pooled sources
dann       :mod:`drt.methods.dann` — CE + λ·domain-adversarial loss (GRL + discriminator)
adda       :mod:`drt.methods.adda` — source pre-training, then a GAN loss on the target encoder
mcd        :mod:`drt.methods.mcd` — the released one-pass MCD with gradient reversal
mcd3       :mod:`drt.methods.mcd3` — classic three-step MCD
m3sda      :mod:`drt.methods.m3sda` — M³SDA-β: a classifier pair per source, moment matching
========== =================================================================================================

A new method subclasses :class:`AlignmentMethod` and is added with :func:`register_method`.
"""

from __future__ import annotations

from drt.methods.adda import ADDA
from drt.methods.base import STATE_KEYS, AlignmentMethod, Learner, is_new_parameter
from drt.methods.dann import DANN
from drt.methods.m3sda import M3SDA
from drt.methods.mcd import MCD
from drt.methods.mcd3 import MCD3
from drt.methods.source_only import SourceOnly

__all__ = [
    "METHOD_REGISTRY",
    "STATE_KEYS",
    "AlignmentMethod",
    "Learner",
    "get_method",
    "is_new_parameter",
    "register_method",
]

#: method name → class; the order is Table 6.2's (and ``drt.train.METHODS``).
METHOD_REGISTRY: dict[str, type[AlignmentMethod]] = {}


def register_method(cls: type[AlignmentMethod]) -> type[AlignmentMethod]:
    """Add ``cls`` under ``cls.name`` (usable as a class decorator); a taken name is an error."""
    if not cls.name:
        raise ValueError(f"register_method: {cls.__name__} has no `name`")
    if cls.name in METHOD_REGISTRY and METHOD_REGISTRY[cls.name] is not cls:
        raise ValueError(f"register_method: the name {cls.name!r} is taken by {METHOD_REGISTRY[cls.name].__name__}")
    METHOD_REGISTRY[cls.name] = cls
    return cls


def get_method(name: str) -> type[AlignmentMethod]:
    """The registered class for ``name`` (ValueError listing the known names otherwise)."""
    if name not in METHOD_REGISTRY:
        raise ValueError(f"unknown alignment method {name!r}; choose one of {tuple(METHOD_REGISTRY)}")
    return METHOD_REGISTRY[name]


for _cls in (SourceOnly, DANN, ADDA, MCD, MCD3, M3SDA):
    register_method(_cls)
