from __future__ import annotations

import json
import logging

import pytest
import torch

from drt.layers import DynamicResidualConfig
from drt.losses import DomainLabelsRequiredError, MCDConfig
from drt.models import DigitCNNConfig, DigitFiveCNN, DomainAdaptationNet
from drt.train import (
    DomainMismatchError,
    TrainConfig,
    check_domains,
    digits5_task,
    domainnet_task,
    evaluate,
    mean_std,
    pseudo_labels,
    train,
    train_with_self_training,
)
from dyncore.data import EmbeddedDataset, MultiSourceDataset

TINY = DigitCNNConfig(conv_channels=(4, 4, 8), fc_features=(16, 16), dropout=0.0, image_size=16)


def _model(dynamic: bool = True, seed: int = 0, num_sources: int | None = None) -> DomainAdaptationNet:
    torch.manual_seed(seed)
    cfg = DynamicResidualConfig() if dynamic else None
    return DomainAdaptationNet(DigitFiveCNN(TINY, dynamic=cfg), 3, num_sources=num_sources)


def _task(domains, *, with_domain: bool = False):
    sources = MultiSourceDataset({k: domains[k] for k in ("d0", "d1")}, with_domain=with_domain)
    return sources, domains["d2"]


def _run(domains, method: str, *, steps: int = 6, dynamic: bool = True, **kw):
    sources, target = _task(domains, with_domain=method == "m3sda")
    cfg = TrainConfig(method=method, steps=steps, batch_size=8, lr=0.05, eval_every=3, **kw)
    model = _model(dynamic, num_sources=2 if method == "m3sda" else None)  # M³SDA-β: a head pair per source
    return train(model, sources, target, source_val=domains["d0"], target_test=target, config=cfg)


@pytest.mark.quick
def test_bad_domains_are_rejected(blob_domains, digits_root) -> None:
    with pytest.raises(DomainMismatchError, match="target domain 'd0' is also a source"):
        check_domains(blob_domains, "d0")
    four = EmbeddedDataset(torch.zeros(4, 3, 8, 8, dtype=torch.uint8), torch.arange(4), list("abcd"), name="four")
    with pytest.raises(DomainMismatchError, match="different numbers of classes"):
        check_domains({"d0": blob_domains["d0"]}, ("four", four))
    with pytest.raises(DomainMismatchError, match="target domain 'svhn' is also a source"):
        digits5_task("svhn", sources=["mnist", "svhn"], limit=32, root=digits_root)
    task = digits5_task("usps", limit=32, root=digits_root)
    assert task.source_names == ("mnist", "mnistm", "syn", "svhn") and task.num_classes == 10
    assert len(task.sources) + len(task.source_val) == 4 * 32  # 10 % of the pooled source train held out
    single = digits5_task("usps", sources=["mnist"], limit=32, root=digits_root)  # single-source mode
    assert single.source_names == ("mnist",) and len(single.source_val) == 3


@pytest.mark.parametrize("method", ["source_only", "dann", "adda", "mcd", "mcd3", "m3sda"])
def test_every_method_trains_and_reports_three_accuracies(blob_domains, method: str) -> None:
    result = _run(blob_domains, method)
    assert set(result.target_test) == {"F1", "F2", "ensemble"}
    assert result.select_on == "source" and result.best_step in (3, 6)
    assert all(0.0 <= v <= 100.0 for v in result.target_test.values())


@pytest.mark.quick
def test_m3sda_without_domain_labels_is_an_error(blob_domains) -> None:
    sources, target = _task(blob_domains, with_domain=False)
    cfg = TrainConfig(method="m3sda", steps=2, batch_size=8)
    with pytest.raises(DomainLabelsRequiredError, match="needs source domain labels"):
        train(_model(), sources, target, source_val=target, target_test=target, config=cfg)


def test_source_only_learns_and_is_deterministic(blob_domains) -> None:
    a = _run(blob_domains, "source_only", steps=30, dynamic=True)
    b = _run(blob_domains, "source_only", steps=30, dynamic=True)
    assert a.target_test == b.target_test and a.history == b.history
    assert a.source_val["ensemble"] > 60.0  # 3 classes: chance is 33 %


def test_mcd_loss_decreases_on_a_fixed_batch(blob_domains) -> None:
    losses: list[float] = []
    source, target = blob_domains["d0"], blob_domains["d2"]  # batch = the whole 48-image domain: a fixed batch
    cfg = TrainConfig(method="mcd", steps=25, batch_size=48, lr=0.05, eval_every=25, mcd=MCDConfig(eta=1.0))
    train(
        _model(),
        source,
        target,
        source_val=target,
        target_test=target,
        config=cfg,
        callback=lambda step, stats: losses.append(stats["ce"]),
    )
    assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5


def test_target_selection_is_opt_in_and_logged(blob_domains, caplog) -> None:
    with caplog.at_level(logging.WARNING, logger="drt"):
        result = _run(blob_domains, "source_only", select_on="target")
    assert result.select_on == "target"
    assert "TARGET TEST SET" in caplog.text
    assert all("target_test/ensemble" in h for h in result.history)
    with pytest.raises(ValueError, match="select_on must be one of"):
        TrainConfig(select_on="best")  # type: ignore[arg-type]


def test_self_training_uses_confident_pseudo_labels(blob_domains, tmp_path) -> None:
    sources, target = _task(blob_domains)
    cfg = TrainConfig(
        method="source_only", steps=30, st_steps=6, batch_size=8, lr=0.05, eval_every=10, st_threshold=0.5
    )
    model = _model()
    _, second = train_with_self_training(
        model, sources, target, source_val=blob_domains["d0"], target_test=target, config=cfg, out_dir=tmp_path
    )
    assert second.pseudo_labels is not None and second.pseudo_labels >= 8
    idx, labels = pseudo_labels(model, target, threshold=0.5)
    assert len(idx) == len(labels) and all(0 <= i < len(target) for i in idx)
    assert (tmp_path / "checkpoints" / "best.pt").is_file()
    assert (tmp_path / "self_training" / "metrics.jsonl").is_file()
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert records[-1]["selected"] is True
    acc = evaluate(model, target)
    assert set(acc) == {"F1", "F2", "ensemble"}


def test_mean_std() -> None:
    assert mean_std([1.0, 2.0, 3.0]) == (2.0, 1.0)
    assert mean_std([4.0]) == (4.0, 0.0)
    with pytest.raises(ValueError, match="no values"):
        mean_std([])


def test_domainnet_task_from_fabricated_lists(tmp_path) -> None:
    from PIL import Image

    for domain in ("clipart", "real"):
        for split in ("train", "test"):
            lines = []
            for i in range(6):
                rel = f"{domain}/c{i % 2}/{split}_{i}.png"
                (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
                Image.new("RGB", (8, 8), (40 * i, 0, 0)).save(tmp_path / rel)
                lines.append(f"{rel} {i % 2}")
            (tmp_path / f"{domain}_{split}.txt").write_text("\n".join(lines) + "\n")
    task = domainnet_task(tmp_path, "real", sources=["clipart"], val_fraction=0.5)
    assert task.num_classes == 345 and task.source_names == ("clipart",)
    assert len(task.sources) == 3 and len(task.source_val) == 3 and len(task.target_test) == 6
    with pytest.raises(DomainMismatchError, match="also a source"):
        domainnet_task(tmp_path, "real", sources=["clipart", "real"])
    with pytest.raises(DomainMismatchError, match="unknown DomainNet target"):
        domainnet_task(tmp_path, "photos")
