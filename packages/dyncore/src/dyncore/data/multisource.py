"""Pooling several source domains into one dataset, with optional domain ids (multi-source adaptation)."""

from __future__ import annotations

import bisect
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import Dataset

from .base import DataError

__all__ = ["MultiSourceDataset", "digits5_sources", "domainnet_sources"]


class MultiSourceDataset(Dataset[tuple[Any, ...]]):
    """The concatenation of source datasets; item ``i`` is ``(x, y)`` or ``(x, y, domain_id)`` (``with_domain``).

    Args:
        datasets: a sequence of datasets, or a mapping ``domain name → dataset`` (names kept in ``.domains``).
        with_domain: also return the index of the source the item came from.

    Attributes:
        domains: source names; ``domain_ids``: int64 tensor (N,) giving each item's source (for samplers);
        ``classes``: the shared class names when every source has the same ``.classes``.
    """

    def __init__(
        self, datasets: Sequence[Dataset[Any]] | Mapping[str, Dataset[Any]], with_domain: bool = False
    ) -> None:
        if isinstance(datasets, Mapping):
            names, dss = [str(k) for k in datasets], list(datasets.values())
        else:
            dss = list(datasets)
            names = [str(getattr(d, "name", i)) for i, d in enumerate(dss)]
        if not dss:
            raise DataError("MultiSourceDataset needs at least one source dataset")
        sizes = []
        for name, d in zip(names, dss):
            n = len(d)  # type: ignore[arg-type]
            if n == 0:
                raise DataError(f"source {name!r} is empty")
            sizes.append(n)
        classes = [getattr(d, "classes", None) for d in dss]
        if all(c is not None for c in classes) and any(list(c) != list(classes[0]) for c in classes):  # type: ignore[arg-type]
            raise DataError(f"sources {names} have different label spaces (.classes differ)")
        self.datasets = dss
        self.domains = names
        self.with_domain = with_domain
        self.classes = list(classes[0]) if classes[0] is not None else None
        self.cumulative_sizes: list[int] = torch.tensor(sizes).cumsum(0).tolist()
        self.domain_ids: Tensor = torch.repeat_interleave(torch.arange(len(dss)), torch.tensor(sizes))

    def __len__(self) -> int:
        return self.cumulative_sizes[-1]

    def __getitem__(self, index: int) -> tuple[Any, ...]:
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for MultiSourceDataset of length {len(self)}")
        d = bisect.bisect_right(self.cumulative_sizes, index)
        j = index - (self.cumulative_sizes[d - 1] if d > 0 else 0)
        x, y = self.datasets[d][j][:2]
        return (x, y, d) if self.with_domain else (x, y)

    def __repr__(self) -> str:
        sizes = dict(zip(self.domains, [len(d) for d in self.datasets]))  # type: ignore[arg-type]
        return f"MultiSourceDataset({sizes}, with_domain={self.with_domain})"


def digits5_sources(
    target: str,
    split: str = "train",
    *,
    seed: int = 0,
    root: str | os.PathLike[str] | None = None,
    transform: Callable[[Tensor], Any] | None = None,
    limit: int | None = None,
    with_domain: bool = False,
) -> MultiSourceDataset:
    """The four Digits-5 source domains of a leave-one-domain-out task with ``target`` held out, pooled."""
    from .digits5 import digits5, leave_one_out

    sources, _ = leave_one_out(target)
    return MultiSourceDataset(
        {d: digits5(d, split, seed=seed, root=root, transform=transform, limit=limit) for d in sources},
        with_domain=with_domain,
    )


def domainnet_sources(
    root: str | os.PathLike[str],
    target: str,
    split: str = "train",
    *,
    domains: tuple[str, ...] | None = None,
    transform: Callable[[Any], Any] | None = None,
    num_classes: int | None = None,
    with_domain: bool = False,
) -> MultiSourceDataset:
    """DomainNet leave-one-domain-out sources: every domain of ``domains`` (default all six) except ``target``,
    pooled from ``root/<domain>_<split>.txt`` lists."""
    from .folders import DOMAINNET_DOMAINS, DOMAINNET_NUM_CLASSES, domainnet

    domains = DOMAINNET_DOMAINS if domains is None else tuple(domains)
    if target not in domains:
        raise DataError(f"unknown DomainNet target domain {target!r}; valid: {', '.join(domains)}")
    k = DOMAINNET_NUM_CLASSES if num_classes is None else num_classes
    return MultiSourceDataset(
        {d: domainnet(root, d, split, transform=transform, num_classes=k) for d in domains if d != target},
        with_domain=with_domain,
    )
