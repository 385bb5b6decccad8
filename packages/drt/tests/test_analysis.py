from __future__ import annotations

import numpy as np
import pytest
import torch

from drt.analysis import RoutingCoefficients, collect_routing, domain_separability, plot_routing_tsne
from drt.layers import DynamicResidualConfig
from drt.models import DigitCNNConfig, DigitFiveCNN

TINY = DigitCNNConfig(conv_channels=(4, 4, 8), fc_features=(16, 16), image_size=16)


@pytest.mark.quick
def test_collect_routing_concatenates_pi_of_every_layer(blob_domains) -> None:
    torch.manual_seed(0)
    model = DigitFiveCNN(TINY, dynamic=DynamicResidualConfig(num_bases=3))
    pi = collect_routing(model, blob_domains, per_domain=10)
    assert pi.values.shape == (30, 3 * 3)  # 3 domains × 10 samples; 3 layers × K=3
    assert pi.layers == ["conv1", "conv2", "conv3"]
    np.testing.assert_allclose(pi.values.reshape(30, 3, 3).sum(-1), 1.0, rtol=1e-5)  # softmax per layer
    assert pi.low().shape == (30, 3) and pi.high().shape == (30, 6)
    assert list(pi.domains[:10]) == ["d0"] * 10
    with pytest.raises(ValueError, match="no DynamicResidualConv2d with subspace routing"):
        collect_routing(DigitFiveCNN(TINY), blob_domains)


def test_tsne_png_and_separability(tmp_path) -> None:
    rng = np.random.default_rng(0)
    values = np.concatenate([rng.normal(0, 0.1, (20, 8)), rng.normal(3, 0.1, (20, 8))])
    pi = RoutingCoefficients(values, np.array(["a"] * 20 + ["b"] * 20), ["l1", "l2"], 4)
    assert domain_separability(values, pi.domains) > 0.9
    path = plot_routing_tsne(pi, tmp_path / "plots" / "tsne.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ValueError, match="at least two domains"):
        domain_separability(values, np.array(["a"] * 40))
