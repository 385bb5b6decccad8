"""Pooling sources with and without domain ids."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from dyncore.data import DataError, EmbeddedDataset, MultiSourceDataset, digits5_sources


def _toy(n: int, value: int, classes: tuple[str, ...] = ("a", "b")) -> EmbeddedDataset:
    images = torch.full((n, 3, 4, 4), value, dtype=torch.uint8)
    return EmbeddedDataset(images, torch.arange(n) % len(classes), classes, name=f"toy{value}")


@pytest.mark.quick
def test_pools_sources_with_and_without_domain_ids() -> None:
    a, b = _toy(3, 0), _toy(2, 255)
    plain = MultiSourceDataset([a, b])
    assert len(plain) == 5 and plain.domains == ["toy0", "toy255"] and plain.classes == ["a", "b"]
    x, y = plain[4]
    assert float(x.mean()) == 1.0 and y == 1
    tagged = MultiSourceDataset({"A": a, "B": b}, with_domain=True)
    assert [tagged[i][2] for i in range(5)] == [0, 0, 0, 1, 1] == tagged.domain_ids.tolist()
    assert tagged.domains == ["A", "B"] and tagged[-1][2] == 1
    with pytest.raises(IndexError, match="index 5 out of range"):
        tagged[5]


def test_rejects_bad_sources() -> None:
    with pytest.raises(DataError, match="at least one source"):
        MultiSourceDataset([])
    with pytest.raises(DataError, match=r"different label spaces"):
        MultiSourceDataset([_toy(2, 0), _toy(2, 1, ("a", "b", "c"))])
    with pytest.raises(DataError, match=r"source 'empty' is empty"):
        MultiSourceDataset({"ok": _toy(2, 0), "empty": torch.utils.data.TensorDataset(torch.zeros(0))})
    with pytest.raises(DataError, match="empty split"):
        _toy(0, 0)


def test_digits5_sources_leave_one_out(tmp_path: Path) -> None:
    ds = digits5_sources("mnist", root=tmp_path, limit=8, with_domain=True)
    assert ds.domains == ["mnistm", "usps", "syn", "svhn"] and len(ds) == 32
    x, y, d = ds[9]
    assert x.shape == (3, 32, 32) and 0 <= y <= 9 and d == 1


def test_batches_through_a_dataloader(tmp_path: Path) -> None:
    ds = digits5_sources("svhn", "test", root=tmp_path, limit=6, with_domain=True)
    x, y, d = next(iter(torch.utils.data.DataLoader(ds, batch_size=24, shuffle=False)))
    assert x.shape == (24, 3, 32, 32) and x.dtype == torch.float32
    assert y.dtype == torch.int64 and d.tolist() == [0] * 6 + [1] * 6 + [2] * 6 + [3] * 6


def test_embedded_dataset_validates_its_arrays() -> None:
    ok = torch.zeros((2, 3, 4, 4), dtype=torch.uint8)
    with pytest.raises(DataError, match=r"toy: images must be uint8 \(N, 3, H, W\), got torch.float32"):
        EmbeddedDataset(ok.float(), torch.tensor([0, 1]), ("a", "b"), name="toy")
    with pytest.raises(DataError, match=r"toy: labels shape \(3,\) does not match 2 images"):
        EmbeddedDataset(ok, torch.tensor([0, 1, 1]), ("a", "b"), name="toy")
    with pytest.raises(DataError, match=r"toy: labels must lie in \[0, 2\), got \[0, 2\]"):
        EmbeddedDataset(ok, torch.tensor([0, 2]), ("a", "b"), name="toy")
    ds = EmbeddedDataset(ok.numpy(), torch.tensor([1, 0]).numpy(), ("a", "b"), name="toy")
    assert ds.targets == [1, 0] and len(ds.content_hash) == 64 and "toy" in repr(ds)
