"""Φ-variance analysis (Sec. 3.5.5), the training recipe helpers and the loop."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from dcd.analysis import phi_variance, plot_phi_variance
from dcd.demo import DEMO_VARIANTS, demo_model
from dcd.train import (
    Recipe,
    evaluate,
    make_optimizer,
    make_scheduler,
    mixup_alpha,
    recipe_for,
    tensor_batches,
    train_one_epoch,
)


def test_phi_variance_and_plot(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = demo_model(DEMO_VARIANTS["DCD (ΛW0+PΦQᵀ, +CLS)"], 10)
    for m in model.modules():
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0, 0.2)
    batches = [torch.randn(4, 3, 32, 32) for _ in range(3)]
    var = phi_variance(model, batches)
    n_dcd = 2 * 6 + 1  # both 1×1 convs of the six t=6 blocks + the classifier
    assert len(var) == n_dcd and all(v > 0 for v in var.values())
    assert model.training  # mode restored
    png = plot_phi_variance({"a": var, "b": var}, tmp_path / "phi.png")
    assert png.stat().st_size > 1000
    with pytest.raises(ValueError, match="no DCD layer with a dynamic residual"):
        phi_variance(demo_model(DEMO_VARIANTS["static"], 10), batches)


def test_recipe_helpers() -> None:
    r = Recipe(epochs=10, mixup=0.2, mixup_ramp_epochs=4, lr=0.1)
    assert [mixup_alpha(e, r) for e in (0, 2, 4, 8)] == pytest.approx([0.0, 0.1, 0.2, 0.2])
    assert recipe_for("dcd_mobilenetv2_100").lr == 0.1 and recipe_for("dcd_mobilenetv2_050").lr == 0.05
    assert recipe_for("dcd_resnet18").schedule == "step"
    model = nn.Linear(4, 2)
    opt = make_optimizer(model, r)
    sched = make_scheduler(opt, r, steps_per_epoch=5)
    lrs = []
    for _ in range(50):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[0] == pytest.approx(0.1) and lrs[25] == pytest.approx(0.05, abs=2e-3) and lrs[-1] < 1e-3
    step = make_scheduler(make_optimizer(model, r.with_(schedule="step", step_epochs=3)), r.with_(schedule="step",
                          step_epochs=3), steps_per_epoch=2)  # fmt: skip
    assert step.lr_lambdas[0](5) == 1.0 and step.lr_lambdas[0](6) == pytest.approx(0.1)
    with pytest.raises(ValueError, match="schedule must be 'cosine' or 'step'"):
        Recipe(schedule="poly")


@pytest.mark.quick
def test_loss_decreases_with_mixup_and_smoothing() -> None:
    torch.manual_seed(0)
    model = demo_model(DEMO_VARIANTS["DCD (ΛW0+PΦQᵀ, +CLS)"], 4)
    x, y = torch.randn(16, 3, 32, 32), torch.arange(16) % 4
    recipe = Recipe(epochs=12, lr=0.05, batch_size=16, label_smoothing=0.1, mixup=0.2, mixup_ramp_epochs=4)
    opt = make_optimizer(model, recipe)
    losses = [
        train_one_epoch(model, tensor_batches(x, y, 16), opt, None, recipe, epoch=e, steps_per_epoch=1)["loss"]
        for e in range(12)
    ]
    assert sum(losses[-3:]) / 3 < losses[0] - 0.2
    assert evaluate(model, tensor_batches(x, y, 8))["top1"] >= 0.0


def test_non_finite_loss_names_the_flag() -> None:
    import pytest

    from dyncore.training import NonFiniteError

    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 3))
    recipe = Recipe(epochs=1, batch_size=2, lr=1e6)
    x, y = torch.full((4, 3, 2, 2), float("nan")), torch.tensor([0, 1, 2, 0])
    with pytest.raises(NonFiniteError, match=r"loss at epoch 1 step 1.*--lr \(now 1e\+06\)"):
        train_one_epoch(model, tensor_batches(x, y, 2), make_optimizer(model, recipe), None, recipe, epoch=0,
                        steps_per_epoch=2)  # fmt: skip
