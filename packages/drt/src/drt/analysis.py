"""Routing-coefficient analysis (thesis Section 6.4.5, Figures 6.4–6.5).

For each sample, Π = {π_i^l(x)} concatenates the subspace-routing coefficients of every dynamic layer l (K each).
:func:`collect_routing` gathers Π with forward hooks on the coefficient branches; :func:`plot_routing_tsne` embeds Π
with t-SNE (scikit-learn) coloured by domain — all layers, and the low-layer / high-layer halves — into one PNG;
:func:`domain_separability` scores how strongly Π clusters by domain (silhouette).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, Subset

from drt.layers import dynamic_residual_layers

__all__ = ["RoutingCoefficients", "collect_routing", "domain_separability", "plot_routing_tsne"]


class RoutingCoefficients:
    """Π per sample: ``values`` (N, L·K) float array, ``domains`` (N,) domain names, ``layers`` the L layer names,
    ``num_bases`` K. ``low()`` / ``high()`` give the first ⌊L/2⌋ and the remaining layers' columns."""

    def __init__(self, values: np.ndarray, domains: np.ndarray, layers: list[str], num_bases: int) -> None:
        self.values, self.domains, self.layers, self.num_bases = values, domains, layers, num_bases

    def _cols(self, layer_slice: slice) -> np.ndarray:
        idx = range(len(self.layers))[layer_slice]
        cols = [l * self.num_bases + k for l in idx for k in range(self.num_bases)]
        return self.values[:, cols]

    def low(self) -> np.ndarray:
        return self._cols(slice(0, max(1, len(self.layers) // 2)))

    def high(self) -> np.ndarray:
        return self._cols(slice(max(1, len(self.layers) // 2), None)) if len(self.layers) > 1 else self.values


@torch.no_grad()
def collect_routing(
    model: nn.Module,
    datasets: Mapping[str, Dataset[Any]],
    *,
    per_domain: int = 200,
    batch_size: int = 128,
    device: str | torch.device = "cpu",
) -> RoutingCoefficients:
    """Run ``model`` (eval mode) on up to ``per_domain`` samples of each named dataset and collect Π.

    Raises:
        ValueError: the model has no dynamic layer with subspace routing.
    """
    layers = [(n, m) for n, m in dynamic_residual_layers(model) if m.config.uses_routing]
    if not layers:
        raise ValueError(
            "collect_routing: the model has no DynamicResidualConv2d with subspace routing (a static twin?)"
        )
    captured: dict[str, list[Tensor]] = {n: [] for n, _ in layers}

    def hook(name: str) -> Any:
        def fn(module: nn.Module, inputs: Any, output: Any) -> None:
            captured[name].append(output["routing"].detach().float().cpu())

        return fn

    handles = [m.coefficients.register_forward_hook(hook(n)) for n, m in layers]
    was_training = model.training
    model.eval()
    domains: list[str] = []
    try:
        for dom, ds in datasets.items():
            n = min(per_domain, len(ds))  # type: ignore[arg-type]
            for batch in DataLoader(Subset(ds, range(n)), batch_size=batch_size, shuffle=False):
                x = batch[0] if isinstance(batch, (tuple, list)) else batch
                model(x.to(device))
                domains += [dom] * len(x)
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    values = torch.cat([torch.cat(captured[n]) for n, _ in layers], dim=1).numpy()
    return RoutingCoefficients(values, np.asarray(domains), [n for n, _ in layers], layers[0][1].config.num_bases)


def domain_separability(features: np.ndarray, domains: np.ndarray, *, seed: int = 0) -> float:
    """Silhouette score of the samples grouped by domain (−1..1; higher = Π clusters by domain)."""
    from sklearn.metrics import silhouette_score

    if len(set(domains.tolist())) < 2:
        raise ValueError("domain_separability: needs samples from at least two domains")
    return float(silhouette_score(features, domains, random_state=seed))


def plot_routing_tsne(
    coefficients: RoutingCoefficients,
    path: str | Path,
    *,
    seed: int = 0,
    title: str = "DRT routing coefficients Π",
    target: str | None = None,
) -> Path:
    """t-SNE of Π coloured by domain: all layers (Fig. 6.4), low and high layers (Fig. 6.5); one PNG at ``path``
    (the ``target`` domain, if named, is drawn with crosses)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.manifold import TSNE

    panels = [
        ("all layers", coefficients.values),
        ("low layers", coefficients.low()),
        ("high layers", coefficients.high()),
    ]
    n = coefficients.values.shape[0]
    perplexity = float(max(2, min(30, (n - 1) // 3)))
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 4.6))
    names = sorted(set(coefficients.domains.tolist()), key=coefficients.domains.tolist().index)
    for ax, (label, feats) in zip(axes, panels):
        emb = TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed).fit_transform(feats)
        for dom in names:
            sel = coefficients.domains == dom
            label_ = f"{dom} (target)" if dom == target else dom
            ax.scatter(emb[sel, 0], emb[sel, 1], s=6, alpha=0.7, label=label_, marker="x" if dom == target else "o")
        ax.set_title(f"{label} ({feats.shape[1]} coefficients)")
        ax.set_xticks([])
        ax.set_yticks([])
    axes[0].legend(markerscale=3, fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
