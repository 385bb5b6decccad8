"""Digits-5: shapes, normalisation, determinism (in process and across processes), measurable domain shift,
leave-one-domain-out, export to an image folder, bad arguments."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from dyncore.data import (
    DIGITS5_DOMAINS,
    DataError,
    EmbeddedDataset,
    digits5,
    export_image_folder,
    image_folder,
    leave_one_out,
)

Splits = dict[str, tuple[EmbeddedDataset, EmbeddedDataset]]
N = 100  # images per split in these tests (a prefix of the full split)


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="module")
def domains(root: Path) -> Splits:
    return {
        d: (digits5(d, "train", root=root, limit=N), digits5(d, "test", root=root, limit=N)) for d in DIGITS5_DOMAINS
    }


@pytest.mark.quick
def test_shapes_dtypes_labels(domains: Splits) -> None:
    for name, (train, test) in domains.items():
        for ds in (train, test):
            assert ds.images.shape == (N, 3, 32, 32) and ds.images.dtype == torch.uint8, name
            assert ds.labels.shape == (N,) and ds.labels.dtype == torch.int64
            assert ds.classes == [str(i) for i in range(10)]
            assert int(ds.labels.min()) >= 0 and int(ds.labels.max()) <= 9
        assert len(set(train.labels.tolist())) >= 8, f"{name}: labels should cover most digits"
        x, y = train[3]
        assert x.shape == (3, 32, 32) and x.dtype == torch.float32 and isinstance(y, int)
        # mean/std 0.5 normalisation: x = (u8/255 - 0.5)/0.5
        torch.testing.assert_close(x, train.images[3].float() / 127.5 - 1.0)
        assert float(x.min()) >= -1.0 and float(x.max()) <= 1.0


@pytest.mark.quick
def test_deterministic_for_a_seed(tmp_path: Path, domains: Splits) -> None:
    for d in ("syn", "svhn", "mnistm"):  # the randomised generators, rebuilt in a fresh cache
        again = digits5(d, "train", root=tmp_path, limit=N)
        assert again.content_hash == domains[d][0].content_hash, d
        assert torch.equal(again.images, domains[d][0].images)
    other = digits5("svhn", "train", root=tmp_path, limit=N, seed=1)
    assert other.content_hash != domains["svhn"][0].content_hash


def test_deterministic_across_processes(tmp_path: Path, domains: Splits) -> None:
    code = (
        "import sys; from dyncore.data import digits5\n"
        f"for d in ('mnistm', 'syn', 'svhn'): print(digits5(d, 'test', root=sys.argv[1], limit={N}).content_hash)"
    )
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, check=True)
    assert out.stdout.split() == [domains[d][1].content_hash for d in ("mnistm", "syn", "svhn")]


def test_limited_split_is_a_prefix_of_a_larger_one(root: Path, domains: Splits) -> None:
    for d in ("usps", "syn"):
        small = digits5(d, "train", root=root, limit=N // 4)
        assert torch.equal(small.images, domains[d][0].images[: N // 4])
        assert torch.equal(small.labels, domains[d][0].labels[: N // 4])


def test_mnist_and_mnistm_share_the_split_and_no_test_digit_is_trained(domains: Splits) -> None:
    assert torch.equal(domains["mnist"][1].labels, domains["mnistm"][1].labels)
    train = {bytes(x.numpy()) for x in domains["mnist"][0].images}
    assert not any(bytes(x.numpy()) in train for x in domains["mnist"][1].images)


def test_domains_differ_measurably(domains: Splits) -> None:
    stats = {d: (tr.images.float().mean().item(), tr.images.float().std().item()) for d, (tr, _) in domains.items()}
    for i, a in enumerate(DIGITS5_DOMAINS):
        for b in DIGITS5_DOMAINS[i + 1 :]:
            (ma, sa), (mb, sb) = stats[a], stats[b]
            assert max(abs(ma - mb), abs(sa - sb)) > 5.0, f"{a} {stats[a]} vs {b} {stats[b]}"
    # mnist/usps are grey (channels equal); the photo/rendered domains are colour
    for d in ("mnist", "usps"):
        assert torch.equal(domains[d][0].images[:, 0], domains[d][0].images[:, 2])
    for d in ("mnistm", "syn", "svhn"):
        assert (domains[d][0].images[:, 0].float() - domains[d][0].images[:, 2].float()).abs().mean() > 5


def _stats_features(x: torch.Tensor) -> torch.Tensor:
    """Per-image intensity histogram (16 bins), saturation, per-channel mean/std: (B, 23)."""
    grey = x.mean(1).flatten(1)
    hist = torch.stack([torch.histc(r, bins=16, min=0, max=1) for r in grey]) / grey.shape[1]
    sat = (x.max(1).values - x.min(1).values).flatten(1).mean(1, keepdim=True)
    return torch.cat([hist, sat, x.flatten(2).mean(2), x.flatten(2).std(2)], 1)


def test_domain_classifier_beats_chance(domains: Splits) -> None:
    """Logistic-regression domain classifiers tell the domains apart far above chance (held-out test images)."""
    from sklearn.linear_model import LogisticRegression

    x = {s: [domains[d][s].images.float() / 255 for d in DIGITS5_DOMAINS] for s in (0, 1)}
    y = np.repeat(np.arange(5), N)
    acc = {}
    for kind, f in (("raw", lambda t: t.flatten(1)), ("stats", _stats_features)):
        xtr, xte = (torch.cat([f(t) for t in x[s]]).numpy() for s in (0, 1))
        acc[kind] = LogisticRegression(max_iter=1000).fit(xtr, y).score(xte, y)
        if kind == "raw":  # two-domain classifiers on raw pixels
            for a, b in ((0, 1), (0, 2), (1, 2), (2, 4), (1, 4)):
                m = (y == a) | (y == b)
                pair = LogisticRegression(max_iter=1000).fit(xtr[m], y[m]).score(xte[m], y[m])
                assert pair > 0.75, (DIGITS5_DOMAINS[a], DIGITS5_DOMAINS[b], pair)
    assert acc["raw"] > 0.55 and acc["stats"] > 0.7, acc  # 5-way chance: 0.2


@pytest.mark.quick
def test_leave_one_out_and_unknown_domain() -> None:
    assert leave_one_out("svhn") == (("mnist", "mnistm", "usps", "syn"), "svhn")
    for target in DIGITS5_DOMAINS:
        sources, t = leave_one_out(target)
        assert t == target and len(sources) == 4 and target not in sources
    with pytest.raises(DataError, match=r"unknown target domain 'mnist_m'; valid: mnist, mnistm, usps, syn, svhn"):
        leave_one_out("mnist_m")
    with pytest.raises(DataError, match=r"unknown Digits-5 domain 'SVHN'; valid: mnist, mnistm"):
        digits5("SVHN")
    with pytest.raises(DataError, match=r"unknown split 'val'; valid: train, test"):
        digits5("mnist", "val")
    with pytest.raises(DataError, match="limit must be a positive int"):
        digits5("mnist", limit=0)
    with pytest.raises(DataError, match="seed must be a non-negative int"):
        digits5("mnist", seed=-1, limit=2)


def test_transform_receives_uint8_image(root: Path) -> None:
    seen: list[torch.Tensor] = []

    def t(img: torch.Tensor) -> torch.Tensor:
        seen.append(img)
        return img.float().mean(0, keepdim=True)

    ds = digits5("usps", "test", root=root, limit=N, transform=t)
    x, _ = ds[0]
    assert seen[0].dtype == torch.uint8 and seen[0].shape == (3, 32, 32) and x.shape == (1, 32, 32)


def test_export_image_folder_round_trip(tmp_path: Path, domains: Splits) -> None:
    ds = domains["svhn"][1]
    out = export_image_folder(ds, tmp_path / "svhn", limit=30)
    assert len(list(out.rglob("*.png"))) == 30
    folder = image_folder(out)
    assert set(folder.classes) <= set(ds.classes)
    # PNG is lossless: every exported image is one of the dataset's images, under its class
    pngs = {
        bytes(np.asarray(folder[i][0]).transpose(2, 0, 1).tobytes()): folder.classes[folder[i][1]]
        for i in range(len(folder))
    }
    for i in range(30):
        assert pngs[bytes(ds.images[i].numpy().tobytes())] == ds.classes[int(ds.labels[i])]
