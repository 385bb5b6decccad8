from __future__ import annotations

import pytest

import covnorm as cn


@pytest.mark.quick
def test_decathlon_score_reference_points() -> None:
    base = {"a": 10.0, "b": 20.0}
    assert cn.decathlon_score({"a": 0.0}, base) == pytest.approx(1000.0)  # perfect task
    assert cn.decathlon_score({"a": 20.0}, base) == 0.0  # error = 2× baseline
    assert cn.decathlon_score({"a": 35.0}, base) == 0.0  # worse still: clipped at 0
    assert cn.decathlon_score({"a": 10.0, "b": 20.0}, base) == pytest.approx(500.0)  # baseline itself: 250 each
    assert cn.decathlon_score({"a": 0.0, "b": 0.0}, base) == pytest.approx(2000.0)
    with pytest.raises(KeyError, match="no baseline error for domain 'c'"):
        cn.decathlon_score({"c": 1.0}, base)
    with pytest.raises(ValueError, match="must be positive"):
        cn.decathlon_score({"a": 1.0}, {"a": 0.0})


def test_effective_dimension_ratio(tiny_model, batches) -> None:
    stats = cn.collect_statistics(tiny_model, batches, domain="digits")
    eta = cn.effective_dimension_ratio(stats, threshold=0.9)
    report = cn.apply_covnorm(tiny_model, stats, domain="digits", threshold=0.9)
    assert {k: v[2] for k, v in eta.items()} == pytest.approx(report.eta)
    assert all(v[2] > 0 for v in eta.values())
