"""InfiniteLoader: endless passes with reshuffling, set_epoch for distributed samplers, exact resume."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch.utils.data import DataLoader, DistributedSampler, RandomSampler, TensorDataset

from dyncore.training import InfiniteLoader


def _loader(n: int, batch: int, seed: int | None = 0, **kw: object) -> DataLoader:
    gen = torch.Generator().manual_seed(seed) if seed is not None else None
    return DataLoader(TensorDataset(torch.arange(n)), batch_size=batch, generator=gen, **kw)  # type: ignore[arg-type]


def test_infinite_loader_pairs_unequal_loaders_and_reshuffles() -> None:
    src = InfiniteLoader(_loader(10, 4, shuffle=True))  # 3 batches per pass
    tgt = InfiniteLoader(_loader(4, 4, shuffle=True))  # 1 batch per pass
    passes: list[list[int]] = []
    for _ in range(9):
        (xs,), (xt,) = next(src), next(tgt)
        assert sorted(xt.tolist()) == [0, 1, 2, 3]
        if src.batch_in_epoch == 1:
            passes.append([])
        passes[-1].extend(xs.tolist())
    assert src.epoch == 2 and tgt.epoch == 8 and len(src) == 3
    assert all(sorted(p) == list(range(10)) for p in passes)  # every pass covers the dataset once
    assert passes[0] != passes[1] or passes[1] != passes[2]  # and the order is reshuffled


def test_infinite_loader_calls_set_epoch() -> None:
    data = TensorDataset(torch.arange(8))
    sampler: DistributedSampler[Any] = DistributedSampler(data, num_replicas=2, rank=0, shuffle=True, seed=0)
    it = InfiniteLoader(DataLoader(data, batch_size=2, sampler=sampler))
    epochs = []
    for _ in range(6):
        next(it)
        epochs.append(sampler.epoch)
    assert epochs == [0, 0, 1, 1, 2, 2]


def test_infinite_loader_state_resumes_exact_order() -> None:
    ref = InfiniteLoader(_loader(10, 3, shuffle=True))  # 4 batches per pass
    order = [next(ref)[0].tolist() for _ in range(11)]
    first = InfiniteLoader(_loader(10, 3, shuffle=True))
    for _ in range(6):
        next(first)
    state = first.state_dict()
    assert (state["epoch"], state["batch_in_epoch"]) == (1, 2)
    torch.manual_seed(99)
    before = torch.get_rng_state()
    resumed = InfiniteLoader(_loader(10, 3, seed=12345, shuffle=True))  # different generator seed
    resumed.load_state_dict(state)
    assert torch.equal(torch.get_rng_state(), before)  # fast-forwarding leaves the global RNG alone
    assert [next(resumed)[0].tolist() for _ in range(5)] == order[6:]


def test_infinite_loader_bad_input() -> None:
    with pytest.raises(TypeError, match="`loader` must be a torch DataLoader, got list"):
        InfiniteLoader([1, 2])  # type: ignore[arg-type]
    empty = InfiniteLoader(_loader(3, 4, drop_last=True))
    with pytest.raises(ValueError, match="yielded no batches"):
        next(empty)
    no_gen = InfiniteLoader(_loader(8, 2, seed=None, shuffle=True))
    next(no_gen)
    with pytest.raises(ValueError, match=r"RandomSampler has no `generator`.*DataLoader\(\.\.\., generator="):
        no_gen.state_dict()
    it = InfiniteLoader(_loader(8, 2, shuffle=True))
    with pytest.raises(ValueError, match=r"missing key\(s\) \['generators'\]"):
        it.load_state_dict({"epoch": 0, "batch_in_epoch": 1})
    with pytest.raises(ValueError, match="saved position batch 9 exceeds the loader's 4 batches"):
        it.load_state_dict({"epoch": 0, "batch_in_epoch": 9, "generators": []})


def test_infinite_loader_resume_with_sampler_generator_and_sequential() -> None:
    data = TensorDataset(torch.arange(9))

    def make() -> InfiniteLoader:
        sampler = RandomSampler(data, generator=torch.Generator().manual_seed(3))  # the sampler owns the generator
        return InfiniteLoader(DataLoader(data, batch_size=2, sampler=sampler))

    ref = make()
    order = [next(ref)[0].tolist() for _ in range(12)]
    first = make()
    for _ in range(7):
        next(first)
    resumed = make()
    next(resumed)  # advance its generator: the restore must not depend on a fresh object
    resumed.load_state_dict(first.state_dict())
    assert [next(resumed)[0].tolist() for _ in range(5)] == order[7:]

    seq = InfiniteLoader(DataLoader(data, batch_size=4))  # no randomness, no generator needed
    for _ in range(4):
        next(seq)
    again = InfiniteLoader(DataLoader(data, batch_size=4))
    again.load_state_dict(seq.state_dict())
    assert next(again)[0].tolist() == next(seq)[0].tolist() == [4, 5, 6, 7]
