from __future__ import annotations

import pytest
import torch

from dyncore.data import EmbeddedDataset


def _blobs(n: int, seed: int, shift: float, name: str) -> EmbeddedDataset:
    """A tiny separable 3-class image set: class c brightens the c-th colour channel; ``shift`` moves the domain."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % 3
    images = torch.rand(n, 3, 16, 16, generator=g) * 60 + 40 + shift
    images[torch.arange(n), labels] += 120
    return EmbeddedDataset(images.clamp(0, 255).to(torch.uint8), labels, ["a", "b", "c"], name=name)


@pytest.fixture(scope="session")
def blob_domains() -> dict[str, EmbeddedDataset]:
    """Three tiny labelled domains (48 images each, 16×16, 3 classes)."""
    return {f"d{i}": _blobs(48, seed=i, shift=20.0 * i, name=f"d{i}") for i in range(3)}


@pytest.fixture(scope="session")
def digits_root(tmp_path_factory: pytest.TempPathFactory):
    """A private Digits-5 cache with tiny splits (32 images per split), built once per session."""
    from dyncore.data import DIGITS5_DOMAINS, digits5

    root = tmp_path_factory.mktemp("digits5")
    for d in DIGITS5_DOMAINS:
        digits5(d, limit=32, root=root)
    return root
