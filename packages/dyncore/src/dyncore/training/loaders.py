"""Infinite iteration over a DataLoader (for pairing unequal source/target loaders) with resumable position."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
from torch.utils.data import DataLoader

from dyncore.training.seed import get_rng_state, set_rng_state

__all__ = ["InfiniteLoader"]


class InfiniteLoader:
    """Iterates forever over ``loader``, starting a new pass when one is exhausted (so a shuffling sampler reshuffles).

    Before each pass it calls ``sampler.set_epoch(epoch)`` when the sampler has one (DistributedSampler), so
    distributed runs reshuffle too. Use ``next(it)`` for a batch; ``epoch`` and ``batch_in_epoch`` tell the position.

    Exact resume: :meth:`state_dict` records the position and the state the loader's ``generator`` had at the start
    of the current pass; :meth:`load_state_dict` restores it and fast-forwards, reproducing the same batch order (and
    worker seeds). This needs ``DataLoader(..., generator=torch.Generator().manual_seed(s))`` whenever the sampler
    is random; without a generator the order comes from the global torch RNG and cannot be replayed.

    Example (DA training, unequal domains)::

        src, tgt = InfiniteLoader(source_loader), InfiniteLoader(target_loader)
        for step in range(steps):
            (xs, ys), (xt, _) = next(src), next(tgt)
    """

    def __init__(self, loader: DataLoader[Any]) -> None:
        if not isinstance(loader, DataLoader):
            raise TypeError(f"InfiniteLoader: `loader` must be a torch DataLoader, got {type(loader).__name__}")
        self.loader = loader
        self.epoch = 0
        self.batch_in_epoch = 0
        self._iterator: Iterator[Any] | None = None
        self._generators_at_epoch_start: list[torch.Tensor] = []

    def __iter__(self) -> InfiniteLoader:
        return self

    def _sampler(self) -> Any:
        sampler = self.loader.sampler
        batch_sampler = self.loader.batch_sampler
        if batch_sampler is not None and hasattr(batch_sampler, "sampler"):
            sampler = batch_sampler.sampler
        return sampler

    def _generators(self) -> list[torch.Generator]:
        """The distinct torch Generators that decide this loader's order and worker seeds."""
        found: list[torch.Generator] = []
        for gen in (self.loader.generator, getattr(self._sampler(), "generator", None)):
            if isinstance(gen, torch.Generator) and all(gen is not g for g in found):
                found.append(gen)
        return found

    def _start_pass(self) -> None:
        set_epoch = getattr(self._sampler(), "set_epoch", None)
        if callable(set_epoch):
            set_epoch(self.epoch)
        self._generators_at_epoch_start = [g.get_state() for g in self._generators()]
        self._iterator = iter(self.loader)
        self.batch_in_epoch = 0

    def __next__(self) -> Any:
        if self._iterator is None:
            self._start_pass()
        assert self._iterator is not None
        try:
            batch = next(self._iterator)
        except StopIteration:
            if self.batch_in_epoch == 0:
                raise ValueError(
                    "InfiniteLoader: the DataLoader yielded no batches (empty dataset, or "
                    "drop_last=True with fewer samples than batch_size)"
                ) from None
            self.epoch += 1
            self._start_pass()
            assert self._iterator is not None
            try:
                batch = next(self._iterator)
            except StopIteration:
                raise ValueError(f"InfiniteLoader: the DataLoader yielded no batches in pass {self.epoch}") from None
        self.batch_in_epoch += 1
        return batch

    def __len__(self) -> int:
        """Batches per pass of the underlying loader."""
        return len(self.loader)

    def state_dict(self) -> dict[str, Any]:
        """Position (``epoch``, ``batch_in_epoch``) and the generator states at the start of the current pass."""
        sampler = self._sampler()
        if hasattr(sampler, "generator") and sampler.generator is None:
            raise ValueError(
                f"InfiniteLoader.state_dict: the DataLoader's {type(sampler).__name__} has no `generator`, so it draws "
                "its order from the global RNG and cannot be replayed; construct the loader with "
                "DataLoader(..., generator=torch.Generator().manual_seed(s))"
            )
        return {
            "epoch": self.epoch,
            "batch_in_epoch": self.batch_in_epoch,
            "generators": list(self._generators_at_epoch_start) if self._iterator is not None else [],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue exactly where :meth:`state_dict` was taken (fast-forwards ``batch_in_epoch`` batches).

        Skipped batches are loaded and discarded; any global RNG they consume (augmentation in the main process) is
        restored afterwards, so the caller's RNG state is unaffected.
        """
        missing = [k for k in ("epoch", "batch_in_epoch", "generators") if k not in state]
        if missing:
            raise ValueError(f"InfiniteLoader.load_state_dict: `state` is missing key(s) {missing}")
        epoch, skip, gen_states = int(state["epoch"]), int(state["batch_in_epoch"]), list(state["generators"])
        try:
            per_pass: int | None = len(self.loader)
        except TypeError:  # an IterableDataset without __len__
            per_pass = None
        if per_pass is not None and skip > per_pass:
            raise ValueError(
                f"InfiniteLoader.load_state_dict: saved position batch {skip} exceeds the loader's {per_pass} "
                "batches per pass (a different dataset or batch size?)"
            )
        gens = self._generators()
        if gen_states and len(gen_states) != len(gens):
            raise ValueError(
                f"InfiniteLoader.load_state_dict: the state holds {len(gen_states)} generator state(s) but this "
                f"DataLoader uses {len(gens)} generator(s); build it the same way as the saved one"
            )
        for gen, gen_state in zip(gens, gen_states):
            gen.set_state(gen_state)
        self.epoch = epoch
        self._iterator = None
        if not gen_states and skip == 0:
            return  # next() starts the pass fresh
        rng = get_rng_state()
        self._start_pass()
        assert self._iterator is not None
        for _ in range(skip):
            next(self._iterator)
        self.batch_in_epoch = skip
        set_rng_state(rng)
