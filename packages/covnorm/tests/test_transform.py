from __future__ import annotations

import copy

import pytest
import torch

import covnorm as cn
from covnorm.layers import CovNormConv1x1, LowRankConv1x1
from covnorm.train import CovNormSchedule, FitConfig, TensorBatches, fit_covnorm


def _state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


def _same(a: dict[str, torch.Tensor], model: torch.nn.Module) -> bool:
    b = model.state_dict()
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.quick
def test_exact_init_untruncated_reproduces_trained_adapter(tiny_model, batches) -> None:
    x = batches[0]
    reference = tiny_model(x)
    stats = cn.collect_statistics(tiny_model, batches, domain="digits")
    assert set(stats) == set(cn.adapter_sites(tiny_model))
    report = cn.apply_covnorm(tiny_model, stats, domain="digits", threshold=1.0, init="exact")
    assert all(s.k_x == s.k_y == s.channels for s in report.sites[:2])  # conv sites: full rank
    assert isinstance(cn.adapter_sites(tiny_model)["backbone.features.conv1_1"].branch("digits").a, CovNormConv1x1)
    torch.testing.assert_close(tiny_model(x), reference, rtol=1e-4, atol=1e-4)
    # the other domain is untouched
    assert isinstance(cn.adapter_sites(tiny_model)["backbone.features.conv1_1"].branch("letters").a, torch.nn.Conv2d)


def test_truncated_transform_implements_eq_2_8_with_correct_bias(tiny_model, batches) -> None:
    stats = cn.collect_statistics(tiny_model, batches, domain="digits")
    cn.apply_covnorm(tiny_model, stats, domain="digits", threshold=0.9, init="random")
    site = "backbone.features.conv2_1"
    layer = cn.adapter_sites(tiny_model)[site].branch("digits").a
    px, py = stats[site].x.pca(), stats[site].y.pca()
    assert layer.k_x < 16 and layer.k_y < 16
    # W̃_x = Ẽ^{-1/2} P̃ᵀ whitens x: unit covariance on the kept components; C̃_y = P̃ Ẽ^{1/2}
    W = layer.whitening.double()
    torch.testing.assert_close(W @ px.covariance @ W.T, torch.eye(layer.k_x, dtype=torch.float64), rtol=0, atol=1e-4)
    C = layer.colouring.double()
    torch.testing.assert_close(
        C @ C.T,
        py.eigenvectors[:, : layer.k_y] @ torch.diag(py.eigenvalues[: layer.k_y]) @ py.eigenvectors[:, : layer.k_y].T,
        rtol=1e-4,
        atol=1e-5,
    )
    xin = torch.randn(2, 16, 3, 3)
    manual = torch.einsum("oi,bihw->bohw", layer.matrix(), xin - px.mean.float()[None, :, None, None])
    manual = manual + py.mean.float()[None, :, None, None]  # ỹ = C̃MW̃(x − μ_x) + μ_y
    torch.testing.assert_close(layer(xin), manual, rtol=1e-4, atol=1e-5)
    assert layer.mini.std() < 0.02  # released init N(0, 0.01)


@pytest.mark.quick
def test_absorb_keeps_outputs_and_stores_2C_min_k(tiny_model, batches) -> None:
    stats = cn.collect_statistics(tiny_model, batches, domain="digits")
    report = cn.apply_covnorm(tiny_model, stats, domain="digits", threshold=0.95)
    x = batches[1]
    before = tiny_model(x)
    done = cn.absorb(tiny_model)
    assert len(done) == len(report.sites)
    torch.testing.assert_close(tiny_model(x), before, rtol=1e-4, atol=1e-5)
    for s in report.sites:
        a = cn.adapter_sites(tiny_model)[s.site].branch("digits").a
        assert isinstance(a, LowRankConv1x1) and a.rank == min(s.k_x, s.k_y)
        assert a.W.numel() + a.C.numel() == 2 * s.channels * min(s.k_x, s.k_y) == s.stored_absorbed
    # absorbing twice: a clear error and nothing changes
    snapshot = _state(tiny_model)
    with pytest.raises(cn.AbsorbError, match="absorbing twice"):
        cn.absorb(tiny_model)
    assert _same(snapshot, tiny_model)


@pytest.mark.quick
def test_bad_input_leaves_model_unchanged(tiny_model, batches) -> None:
    stats = cn.collect_statistics(tiny_model, batches, domain="digits")
    snapshot = _state(tiny_model)
    partial = dict(stats)
    partial.pop("backbone.features.fc7")
    with pytest.raises(cn.MissingStatisticsError, match=r"no statistics for site\(s\) \['backbone.features.fc7'\]"):
        cn.apply_covnorm(tiny_model, partial, domain="digits")
    with pytest.raises(ValueError, match=r"threshold must be in \(0, 1\]"):
        cn.apply_covnorm(tiny_model, stats, domain="digits", threshold=1.2)
    with pytest.raises(cn.UnknownDomainError, match="known domains"):
        cn.apply_covnorm(tiny_model, stats, domain="svhn")
    broken = copy.deepcopy(stats)
    broken["backbone.features.fc7"].y.update(torch.full((1, 12), float("nan")))
    with pytest.raises(cn.DegenerateStatisticsError, match=r"fc7.*NaN"):
        cn.apply_covnorm(tiny_model, broken, domain="digits")
    dead = copy.deepcopy(stats)
    dead["backbone.features.conv1_1"].x = cn.Moments(8)
    dead["backbone.features.conv1_1"].x.update(torch.zeros(2, 8, 4, 4))
    with pytest.raises(cn.DegenerateStatisticsError, match=r"conv1_1.*rank 0"):
        cn.apply_covnorm(tiny_model, dead, domain="digits")
    with pytest.raises(ValueError, match="needs k_x == k_y"):
        cn.apply_covnorm(tiny_model, stats, domain="digits", threshold=0.9, init="identity")
    with pytest.raises(cn.AbsorbError, match="no CovNorm transform"):
        cn.absorb(tiny_model)
    assert _same(snapshot, tiny_model)


def test_identity_init_where_square(tiny_model, batches) -> None:
    stats = cn.collect_statistics(tiny_model, batches, domain="digits")
    cn.apply_covnorm(tiny_model, stats, domain="digits", threshold=1.0, init="identity")
    a = cn.adapter_sites(tiny_model)["backbone.features.conv1_1"].branch("digits").a
    torch.testing.assert_close(a.mini, torch.eye(a.k_x))


def test_mini_finetuning_lowers_loss_and_trains_only_m_first(tiny_model, batches) -> None:
    stats = cn.collect_statistics(tiny_model, batches, domain="digits")
    cn.apply_covnorm(tiny_model, stats, domain="digits", threshold=0.95, init="random")
    a = cn.adapter_sites(tiny_model)["backbone.features.conv2_1"].branch("digits").a
    w0, m0 = a.whitening.detach().clone(), a.mini.detach().clone()
    data = TensorBatches(batches[0], torch.arange(16) % 10, batch_size=16, shuffle=False)
    sched = CovNormSchedule(FitConfig(epochs=15, lr=1e-2), FitConfig(epochs=0))
    losses = fit_covnorm(tiny_model, data, sched)
    assert losses[-1] < losses[0]
    assert torch.equal(a.whitening, w0) and not torch.equal(a.mini, m0)  # M alone in the first phase


def test_joint_mode_shares_factors_and_keeps_only_m_per_domain(tiny_model, batches) -> None:
    stats = {
        d: cn.collect_statistics(tiny_model, batches[2 * i : 2 * i + 2], domain=d)
        for i, d in enumerate(("digits", "letters"))
    }
    other = copy.deepcopy(tiny_model)
    pristine = copy.deepcopy(tiny_model)
    report = cn.apply_joint_covnorm(tiny_model, stats, threshold=0.95, merge="pcas")
    rep2 = cn.apply_joint_covnorm(other, stats, threshold=0.95, merge="moments")
    assert [(s.k_x, s.k_y) for s in report.sites] == [(s.k_x, s.k_y) for s in rep2.sites]
    site = cn.adapter_sites(tiny_model)["backbone.features.conv2_1"]
    a, b = site.branch("digits").a, site.branch("letters").a
    assert a.whitening is b.whitening and a.colouring is b.colouring and a.mini is not b.mini
    assert not a.whitening.requires_grad
    s = report.sites[1]
    assert s.stored_per_domain == s.k_x * s.k_y
    assert report.shared_weights == sum(r.channels * (r.k_x + r.k_y) for r in report.sites)
    tp = cn.task_parameters(tiny_model, "digits")
    assert tp.shared == report.shared_weights
    assert tp.adapters == sum(r.k_x * r.k_y + r.channels for r in report.sites)  # M + bias per site
    with pytest.raises(cn.AbsorbError, match="joint mode"):
        cn.absorb(tiny_model)
    # untruncated joint transform with the exact M still reproduces each domain's trained adapter
    ref = {d: pristine.set_domain(d)(batches[0]) for d in ("digits", "letters")}
    fourth = copy.deepcopy(pristine)
    cn.apply_joint_covnorm(fourth, stats, threshold=1.0, merge="sequential")
    for d in ("digits", "letters"):
        torch.testing.assert_close(fourth.set_domain(d)(batches[0]), ref[d], rtol=1e-3, atol=1e-3)


def test_layout_rebuilds_joint_and_absorbed_models(tiny_model, batches) -> None:
    from covnorm.transform import apply_layout, layout
    from dyncore.training import load_state_dict_strict

    fresh = copy.deepcopy(tiny_model)
    stats = {d: cn.collect_statistics(tiny_model, batches, domain=d) for d in ("digits", "letters")}
    cn.apply_joint_covnorm(tiny_model, stats, threshold=0.9)
    apply_layout(fresh, layout(tiny_model))
    load_state_dict_strict(fresh, tiny_model.state_dict())
    for d in ("digits", "letters"):
        torch.testing.assert_close(fresh.set_domain(d)(batches[0]), tiny_model.set_domain(d)(batches[0]))
    site = cn.adapter_sites(fresh)["backbone.features.conv2_1"]
    assert site.branch("digits").a.whitening is site.branch("letters").a.whitening  # sharing restored
