from __future__ import annotations

import pytest
import torch
from torch.utils.data import Subset

from drt.layers import DynamicResidualConfig
from drt.losses import DomainLabelsRequiredError, per_source_cross_entropy
from drt.models import ClassifierHead, DigitCNNConfig, DigitFiveCNN, DomainAdaptationNet, SourceClassifiers
from drt.train import TrainConfig, evaluate, train
from dyncore.data import MultiSourceDataset

TINY = DigitCNNConfig(conv_channels=(4, 4, 8), fc_features=(16, 16), dropout=0.0, image_size=16)


def _net(num_sources: int | None = 3, dim: int = 16, classes: int = 5) -> DomainAdaptationNet:
    torch.manual_seed(0)
    return DomainAdaptationNet(torch.nn.Identity(), classes, feature_dim=dim, num_sources=num_sources)


@pytest.mark.quick
def test_m3sda_net_has_a_classifier_pair_per_source() -> None:
    net = _net(num_sources=4, dim=16, classes=5)
    assert len(net.heads) == 2 and all(isinstance(h, SourceClassifiers) for h in net.heads)
    pairs = net.source_pairs()
    assert len(pairs) == 4 and all(len(p) == 2 and isinstance(p[0], ClassifierHead) for p in pairs)
    assert len({id(c) for p in pairs for c in p}) == 8  # 4 sources × 2 distinct classifiers
    head_params = sum(p.numel() for p in net.heads.parameters())
    assert head_params == 2 * 4 * (16 * 5 + 5)
    assert torch.equal(net.heads[0].source_weights, torch.full((4,), 0.25))  # uniform by default, a buffer
    assert "heads.1.source_weights" in net.state_dict()
    out = net.predict(torch.randn(3, 16))
    assert set(out) == {"F1", "F2", "ensemble"} and all(v.shape == (3, 5) for v in out.values())
    with pytest.raises(ValueError, match="no per-source heads"):
        _net(num_sources=None).source_pairs()
    with pytest.raises(ValueError, match="num_sources must be >= 1"):
        _net(num_sources=0)


def test_weighted_combination_matches_a_hand_computation() -> None:
    net = _net(num_sources=3)
    net.set_source_weights([2.0, 3.0, 5.0])  # normalised to 0.2 / 0.3 / 0.5
    f = torch.randn(4, 16)
    for j, head in enumerate(net.heads):
        by_hand = sum(w * c(f).softmax(1) for w, c in zip((0.2, 0.3, 0.5), head.classifiers))
        torch.testing.assert_close(head(f).exp(), by_hand)
        torch.testing.assert_close(net.predict(f)[f"F{j + 1}"], by_hand.log())
    f1, f2 = (h(f).exp() for h in net.heads)
    ens = torch.where((f1.max(1).values >= f2.max(1).values)[:, None], f1, f2)  # the more confident of F1, F2
    torch.testing.assert_close(net(f).exp(), ens)
    net.set_source_weights([0.0, 1.0, 0.0])  # one source only: F1 = that source's classifier
    torch.testing.assert_close(net.heads[0](f), net.heads[0].classifiers[1](f).log_softmax(1))
    with pytest.raises(ValueError, match="expected 3 weights"):
        net.set_source_weights([1.0, 1.0])
    with pytest.raises(ValueError, match="not all 0"):
        net.set_source_weights([0.0, 0.0, 0.0])


def test_each_source_cross_entropy_reaches_only_its_own_classifier_pair() -> None:
    net = _net(num_sources=3)
    f = torch.randn(9, 16)
    y = torch.randint(0, 5, (9,))
    domain = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1, 2])
    terms = sum(per_source_cross_entropy(h.per_source(f), y, domain) for h in net.heads)
    assert terms.shape == (3,)
    for i, pair in enumerate(net.source_pairs()):
        expected = sum(torch.nn.functional.cross_entropy(c(f[domain == i]), y[domain == i]) for c in pair)
        torch.testing.assert_close(terms[i], expected)
        grads = torch.autograd.grad(terms[i], list(net.heads.parameters()), retain_graph=True, allow_unused=True)
        touched = {n for (n, _), g in zip(net.heads.named_parameters(), grads) if g is not None and g.abs().sum() > 0}
        assert touched == {f"{j}.classifiers.{i}.{p}" for j in (0, 1) for p in ("0.weight", "0.bias")}
    pseudo = torch.full((9,), -1)  # pseudo-labelled target samples (self-training) train every classifier
    assert bool((per_source_cross_entropy(net.heads[0].per_source(f), y, pseudo) > 0).all())
    with pytest.raises(ValueError, match=r"domain ids \[3\] outside \[-1, 2\]"):
        per_source_cross_entropy(net.heads[0].per_source(f), y, torch.full((9,), 3))
    with pytest.raises(DomainLabelsRequiredError, match="needs source domain labels"):
        per_source_cross_entropy(net.heads[0].per_source(f), y, None)


def test_m3sda_training_decreases_the_per_source_loss_on_a_fixed_batch(blob_domains) -> None:
    # 24 + 24 source and 48 target images with batch 48: every step sees the same (reshuffled) batch
    sources = MultiSourceDataset({d: Subset(blob_domains[d], range(24)) for d in ("d0", "d1")}, with_domain=True)
    target = blob_domains["d2"]
    torch.manual_seed(0)
    model = DomainAdaptationNet(DigitFiveCNN(TINY, dynamic=DynamicResidualConfig()), 3, num_sources=2)
    cfg = TrainConfig(method="m3sda", steps=12, batch_size=48, lr=0.05, eval_every=12, num_k=2, trade_off=0.01)
    stats: list[dict[str, float]] = []
    train(
        model,
        sources,
        target,
        source_val=blob_domains["d0"],
        target_test=target,
        config=cfg,
        callback=lambda step, s: stats.append(s),
    )
    assert set(stats[0]) == {"loss", "ce", "moments", "dis_max", "dis_min"}
    ce = [s["ce"] for s in stats]
    assert sum(ce[-3:]) / 3 < 0.5 * sum(ce[:3]) / 3
    assert evaluate(model, blob_domains["d0"])["ensemble"] > 90.0


def test_m3sda_needs_per_source_heads_and_domain_labels(blob_domains) -> None:
    labelled = MultiSourceDataset({d: blob_domains[d] for d in ("d0", "d1")}, with_domain=True)
    unlabelled = MultiSourceDataset({d: blob_domains[d] for d in ("d0", "d1")})
    cfg = TrainConfig(method="m3sda", steps=2, batch_size=8)
    shared = DomainAdaptationNet(DigitFiveCNN(TINY), 3)
    kw = {"source_val": blob_domains["d0"], "target_test": blob_domains["d2"], "config": cfg}
    with pytest.raises(ValueError, match=r"num_sources=len\(task.source_names\)"):
        train(shared, labelled, blob_domains["d2"], **kw)
    per_source = DomainAdaptationNet(DigitFiveCNN(TINY), 3, num_sources=2)
    with pytest.raises(DomainLabelsRequiredError, match="needs source domain labels"):
        train(per_source, unlabelled, blob_domains["d2"], **kw)
    one = DomainAdaptationNet(DigitFiveCNN(TINY), 3, num_sources=1)  # fewer pairs than source domains
    with pytest.raises(ValueError, match=r"domain ids \[1\] outside \[-1, 0\]"):
        train(one, labelled, blob_domains["d2"], **kw)
