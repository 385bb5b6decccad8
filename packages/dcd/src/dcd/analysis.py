"""Analysis of dynamic channel fusion (Sec. 3.5.5, Figure 3.6) and MAdds under every counting convention.

σ_Φ = Σ_{i,j} Var_x[φ_ij(x)] / L², the variance of each entry of Φ(x) over a dataset averaged over entries, divided by
the variance of the layer's input feature map (over images, channels and positions) so that layers compare.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from dcd.layers import DynamicConvDecomposition
from dyncore.complexity import MAddsConvention, count_madds

__all__ = ["madds_conventions", "phi_variance", "plot_phi_variance"]


@torch.no_grad()
def phi_variance(model: nn.Module, batches: Iterable[Any], *, max_batches: int | None = None) -> dict[str, float]:
    """Normalised variance σ_Φ of every DCD layer with a dynamic residual (in eval mode), in forward order.

    Args:
        model: a model containing :class:`DynamicConvDecomposition` layers.
        batches: iterable of image tensors (B, 3, H, W) or (images, labels) tuples.
        max_batches: stop after this many batches.
    Returns:
        layer name → σ_Φ / Var(input feature map).
    Raises:
        ValueError: the model has no DCD layer with Φ, or no batch was seen.
    """
    layers = [(n, m) for n, m in model.named_modules() if isinstance(m, DynamicConvDecomposition) and m.use_residual]
    if not layers:
        raise ValueError("phi_variance: the model has no DCD layer with a dynamic residual Φ")
    stats: dict[str, dict[str, Tensor]] = {}

    def hook(mod: DynamicConvDecomposition, inp: tuple[Tensor, ...], name: str) -> None:
        x = inp[0] if inp[0].dim() == 4 else inp[0][:, :, None, None]  # the classifier sees (B, C)
        _, phi = mod.coefficients(x)
        assert phi is not None
        phi = phi.double().flatten(1)
        xd = x.double()
        f64 = torch.float64
        new = {"s1": phi.sum(0), "s2": (phi * phi).sum(0), "n": torch.tensor(float(phi.shape[0]), dtype=f64),
               "xs": xd.sum(), "xss": (xd * xd).sum(), "xn": torch.tensor(float(xd.numel()), dtype=f64)}  # fmt: skip
        old = stats.get(name)
        stats[name] = new if old is None else {k: old[k] + v for k, v in new.items()}

    handles = [m.register_forward_pre_hook(lambda mod, inp, name=n: hook(mod, inp, name)) for n, m in layers]
    was_training = model.training
    model.eval()
    seen = 0
    try:
        for batch in batches:
            images = batch[0] if isinstance(batch, (tuple, list)) else batch
            model(images)
            seen += 1
            if max_batches is not None and seen >= max_batches:
                break
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    if not seen:
        raise ValueError("phi_variance: no batch was given")
    out: dict[str, float] = {}
    for name, _ in layers:
        if name not in stats:
            continue
        st = stats[name]
        var_phi = (st["s2"] / st["n"] - (st["s1"] / st["n"]) ** 2).clamp_min(0).mean().item()
        var_x = max((st["xss"] / st["xn"] - (st["xs"] / st["xn"]) ** 2).item(), 1e-12)
        out[name] = var_phi / var_x
    return out


def plot_phi_variance(variances: dict[str, float] | dict[str, dict[str, float]], path: str | Path) -> Path:
    """Figure 3.6 analogue: σ_Φ per layer index (one line per model when given {model: {layer: σ}}). Writes a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series = variances if variances and isinstance(next(iter(variances.values())), dict) else {"model": variances}
    fig, ax = plt.subplots(figsize=(6, 3.5))
    for label, values in series.items():
        assert isinstance(values, dict)
        ax.plot(
            range(1, len(values) + 1),
            [float(v) for v in values.values() if not isinstance(v, dict)],
            marker="o",
            ms=3,
            label=label,
        )
    ax.set_xlabel("DCD layer (forward order)")
    ax.set_ylabel("normalised variance σ_Φ")
    ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def madds_conventions(model: nn.Module, *inputs: Tensor) -> dict[str, int]:
    """MAdds for one sample under three conventions:

    * ``per_pixel`` — the released feature-wise computation (dynamic part at every output position);
    * ``per_sample`` — every dynamic kernel synthesised once per sample;
    * ``cheapest`` — each dynamic layer counted in its cheaper form (what the paper's Table 3.4 numbers match).
    """
    was_training = model.training
    model.eval()
    try:
        pp = count_madds(model, *inputs, convention=MAddsConvention(dynamic="per_pixel"))
        ps = count_madds(model, *inputs, convention=MAddsConvention(dynamic="per_sample"))
    finally:
        model.train(was_training)
    names = set(pp.by_module) | set(ps.by_module)
    cheapest = sum(min(pp.by_module.get(k, 0), ps.by_module.get(k, 0)) for k in names)
    return {"per_pixel": pp.total, "per_sample": ps.total, "cheapest": cheapest}
