from __future__ import annotations

import pytest
import torch

import covnorm as cn
from covnorm.stats import DegenerateStatisticsError


def _features(seed: int, n: int = 4, c: int = 6, shift: float = 0.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    mix = torch.randn(c, c, generator=g)
    x = torch.randn(n, 5, 5, c, generator=g) @ mix + shift
    return x.permute(0, 3, 1, 2).contiguous()  # (B, C, H, W)


@pytest.mark.quick
def test_streaming_moments_equal_batch_statistics() -> None:
    chunks = [_features(i) for i in range(3)]
    m = cn.Moments(6)
    for c in chunks:
        m.update(c)
    samples = torch.cat([c.permute(0, 2, 3, 1).reshape(-1, 6) for c in chunks]).double()
    assert m.n == 3 * 4 * 25  # every spatial position is a sample
    torch.testing.assert_close(m.mean, samples.mean(0))
    torch.testing.assert_close(m.covariance, torch.cov(samples.T, correction=0))
    # memory does not grow with the data: the state is (C,) + (C, C) whatever n is
    assert m.total.shape == (6,) and m.outer.shape == (6, 6) and m.outer.dtype == torch.float64


@pytest.mark.quick
def test_merged_domain_moments_equal_pooled_data_moments() -> None:
    domains = [_features(10 + i, n=2 + i, shift=float(i)) for i in range(3)]
    per_domain = []
    pooled = cn.Moments(6)
    for x in domains:
        m = cn.Moments(6)
        m.update(x)
        per_domain.append(m)
        pooled.update(x)
    merged = per_domain[0] + per_domain[1] + per_domain[2]
    torch.testing.assert_close(merged.mean, pooled.mean, rtol=0, atol=1e-12)
    torch.testing.assert_close(merged.covariance, pooled.covariance, rtol=0, atol=1e-12)
    # Eq. 2.10 from the per-domain PCAs, at once and recursively (sequential-joint, one PCA kept)
    joint = cn.merge_pcas([m.pca() for m in per_domain])
    torch.testing.assert_close(joint.mean, pooled.mean, rtol=0, atol=1e-10)
    torch.testing.assert_close(joint.covariance, pooled.covariance, rtol=0, atol=1e-10)
    seq = cn.SequentialJointPCA()
    for i, m in enumerate(per_domain):
        seq.update(f"d{i}", m.pca())
    assert seq.pca is not None and seq.pca.n == pooled.n
    torch.testing.assert_close(seq.pca.covariance, pooled.covariance, rtol=0, atol=1e-10)
    torch.testing.assert_close(seq.pca.eigenvalues, pooled.pca().eigenvalues, rtol=0, atol=1e-10)


def test_pca_is_descending_and_reconstructs_covariance() -> None:
    m = cn.Moments(6)
    m.update(_features(3))
    p = m.pca()
    assert torch.all(p.eigenvalues[:-1] >= p.eigenvalues[1:])
    torch.testing.assert_close(p.covariance, m.covariance, rtol=0, atol=1e-10)


@pytest.mark.quick
def test_explained_variance_rules() -> None:
    e = torch.tensor([50.0, 30.0, 15.0, 4.0, 0.9, 0.1])  # cumulative 0.5, 0.8, 0.95, 0.99, 0.999, 1.0
    assert cn.select_components(e, 0.9) == 3  # smallest i with r_i > t
    assert cn.select_components(e, 0.989) == 4
    assert cn.select_components(e, 0.991) == 5
    assert cn.select_components(e, 1.0) == 6
    assert cn.select_components(e, 0.5, rule="released") == 2  # strictly below t, at least 2
    assert cn.select_components(e, 0.995, rule="released") == 4
    # default thresholds: 0.99 (thesis), 0.995 (released code)
    e2 = torch.tensor([60.0, 30.0, 8.0, 1.6, 0.4])  # cumulative 0.6, 0.9, 0.98, 0.996, 1.0
    assert cn.select_components(e2) == 4 and cn.select_components(e2, rule="released") == 3
    # never beyond the numerical rank (so that Ẽ^{-1/2} stays finite)
    assert cn.select_components(torch.tensor([2.0, 1.0, 0.0, 0.0]), 1.0) == 2


@pytest.mark.parametrize("t", [0.0, -0.1, 1.5, float("nan")])
def test_threshold_outside_unit_interval_is_rejected(t: float) -> None:
    with pytest.raises(ValueError, match="threshold must be in"):
        cn.select_components(torch.tensor([1.0, 0.5]), t)


def test_degenerate_covariance_errors() -> None:
    const = cn.Moments(4)
    const.update(torch.ones(3, 4, 2, 2))
    with pytest.raises(DegenerateStatisticsError, match="rank 0"):
        const.pca()
    nan = cn.Moments(4)
    x = torch.randn(3, 4, 2, 2)
    x[0, 1, 0, 0] = float("nan")
    nan.update(x)
    with pytest.raises(DegenerateStatisticsError, match="NaN"):
        nan.pca()
    with pytest.raises(DegenerateStatisticsError, match="no samples"):
        cn.Moments(4).pca()
    with pytest.raises(ValueError, match="expected 4 channels"):
        cn.Moments(4).update(torch.randn(2, 3, 2, 2))


def test_collected_statistics_are_b1_output_and_a_output(tiny_model, batches) -> None:
    site = cn.adapter_sites(tiny_model)["backbone.features.conv2_1"]
    branch = site.branch("letters")
    seen: list[torch.Tensor] = []
    handle = branch.b1.register_forward_hook(lambda m, i, o: seen.append(o.detach()))
    stats = cn.collect_statistics(tiny_model, batches, domain="letters")
    handle.remove()
    x = torch.cat(seen)  # B1 output, eval mode (running statistics)
    ref_x, ref_y = cn.Moments(16), cn.Moments(16)
    ref_x.update(x)
    ref_y.update(branch.a(x))  # y = A·x, before the residual add
    st = stats["backbone.features.conv2_1"]
    assert st.x.n == len(batches) * 16 * 16 * 16  # B × H × W positions at 16×16
    torch.testing.assert_close(st.x.covariance, ref_x.covariance)
    torch.testing.assert_close(st.y.mean, ref_y.mean)
    assert tiny_model.domain == "digits" and not tiny_model.training  # active domain and mode restored
    with pytest.raises(cn.UnknownDomainError, match="known domains"):
        cn.collect_statistics(tiny_model, batches, domain="svhn")
