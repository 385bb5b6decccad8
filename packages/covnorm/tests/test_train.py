"""The shared training machinery (covnorm.train): modes restored, silent failures turned into errors."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import covnorm as cn
from covnorm.pipeline import TrainConfig
from covnorm.train import (
    ConfigError,
    ExperimentConfig,
    FitConfig,
    TensorBatches,
    evaluate,
    fit,
)
from dyncore.training import NonFiniteError


def _modes(model: nn.Module) -> list[bool]:
    return [m.training for m in model.modules()]


def _data(n: int = 24, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, 32, 32, generator=g), torch.randint(0, 10, (n,), generator=g)


@pytest.mark.quick
def test_evaluate_and_fit_restore_the_callers_mode(tiny_model: cn.MultiDomainModel) -> None:
    x, y = _data()
    data = TensorBatches(x, y, batch_size=8, shuffle=False)
    # a model in train mode whose frozen backbone BNs stay in eval (MultiDomainModel.train): flags vary per module
    frozen_bn = nn.BatchNorm2d(3)
    tiny_model.add_module("frozen_bn", frozen_bn)
    tiny_model.train()
    frozen_bn.eval()
    before = _modes(tiny_model)
    assert any(before) and not all(before)
    acc = evaluate(tiny_model, data)
    assert 0.0 <= acc <= 100.0
    assert _modes(tiny_model) == before  # evaluate used to leave the model in eval mode
    fit(tiny_model, data, tiny_model.domain_parameters(), FitConfig(epochs=1))
    assert _modes(tiny_model) == before  # fit used to end in eval mode
    tiny_model.eval()
    evaluate(tiny_model, data)
    fit(tiny_model, data, tiny_model.domain_parameters(), FitConfig(epochs=1))
    assert not any(_modes(tiny_model))
    # evaluate's result does not depend on the caller's mode (it always scores in eval mode)
    tiny_model.train()
    assert evaluate(tiny_model, data) == evaluate(tiny_model.eval(), data)


@pytest.mark.quick
def test_non_finite_loss_stops_before_poisoning_the_weights(tiny_model: cn.MultiDomainModel) -> None:
    twin = copy.deepcopy(tiny_model)
    x, y = _data()
    x[5] = float("nan")  # the first batch holds a NaN image: its loss is NaN at step 0
    params = tiny_model.domain_parameters()
    kept = [p.detach().clone() for p in params]
    data = TensorBatches(x, y, batch_size=8, shuffle=False)
    with pytest.raises(NonFiniteError, match=r"loss at step 0 \(epoch 1 of 1\) is nan; lower --lr \(now 0\.001\)"):
        fit(tiny_model, data, params, FitConfig(epochs=1), hint="lower --lr (now 0.001)")
    assert all(torch.equal(a, p) for a, p in zip(kept, params))  # the NaN step was never applied
    # evaluate on NaN inputs refuses instead of scoring argmax(NaN) = class 0
    with pytest.raises(NonFiniteError, match="outputs hold NaN/inf"):
        evaluate(twin, data)
    # twin: the same data without the NaN image trains and scores
    x[5] = 0.0
    clean = TensorBatches(x, y, batch_size=8, shuffle=False)
    fit(twin, clean, twin.domain_parameters(), FitConfig(epochs=1))
    assert 0.0 <= evaluate(twin, clean) <= 100.0


@pytest.mark.quick
def test_diverged_weights_are_named(tiny_model: cn.MultiDomainModel) -> None:
    x, y = _data(8)
    with pytest.raises(NonFiniteError, match=r"training diverged: 'heads\.digits\.weight'.*lower --lr"):
        # one step at lr = inf gives finite losses but infinite weights
        fit(tiny_model, TensorBatches(x, y, batch_size=8), list(tiny_model.heads["digits"].parameters()),
            FitConfig(epochs=1, lr=float("inf")), hint="lower --lr (now inf)")  # fmt: skip


@pytest.mark.quick
def test_empty_data_is_an_error_not_a_zero(tiny_model: cn.MultiDomainModel) -> None:
    empty = TensorBatches(torch.empty(0, 3, 32, 32), torch.empty(0, dtype=torch.long))
    with pytest.raises(ValueError, match="yielded no batch"):  # fit returned [0.0] after training nothing
        fit(tiny_model, empty, tiny_model.domain_parameters(), FitConfig(epochs=1))
    with pytest.raises(ValueError, match="no sample"):  # evaluate returned 0.0 %
        evaluate(tiny_model, empty)


@pytest.mark.quick
def test_a_final_batch_of_one_image_is_dropped_in_training(tiny_model: cn.MultiDomainModel) -> None:
    x, y = _data(17)
    # BatchNorm cannot train on one sample per channel at the 1×1 fc sites: 17 = 16 + 1 crashed mid-epoch
    with pytest.raises(ValueError, match="Expected more than 1 value per channel"):
        fit(tiny_model, TensorBatches(x, y, batch_size=16), tiny_model.domain_parameters(), FitConfig(epochs=1))
    batches = TensorBatches(x, y, batch_size=16, min_batch=2)
    assert len(batches) == 1 and [len(b[1]) for b in batches] == [16]
    fit(tiny_model, batches, tiny_model.domain_parameters(), FitConfig(epochs=1))
    assert len(TensorBatches(x[:2], y[:2], batch_size=16, min_batch=2)) == 1  # batch > data: one batch of all
    with pytest.raises(ValueError, match="1 image"):
        TensorBatches(x[:1], y[:1], batch_size=16, min_batch=2)


def test_wrong_input_size_is_refused_up_front() -> None:
    net = cn.small_vgg(widths=((8,), (16,)), hidden=12, num_classes=5)
    assert net(torch.randn(2, 3, 32, 32)).shape == (2, 5)
    for size in (16, 31, 40, 64):  # smaller than the stride × fc6 window, or fc6 would see several positions
        with pytest.raises(ValueError, match=r"this network takes \(B, C, 32, 32\) images"):
            net(torch.randn(2, 3, size, size))
    with pytest.raises(ValueError, match="use at most 5 stages"):
        cn.small_vgg(widths=((4,),) * 6)
    vgg = cn.vgg16_fcn(num_classes=3)
    with pytest.raises(ValueError, match=r"takes \(B, C, 224, 224\).*64×64 leaves 2×2"):
        vgg(torch.randn(1, 3, 64, 64))


@pytest.mark.quick
@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("train_limit", -5, "train_limit must be an integer >= 2, got -5"),
        ("test_limit", 0, "test_limit must be an integer >= 1, got 0"),
        ("source_limit", 1, "source_limit must be an integer >= 2"),
        ("epochs", 0, "epochs must be an integer >= 1, got 0"),
        ("pretrain_epochs", -1, "pretrain_epochs must be an integer >= 1, got -1"),
        ("lr", float("nan"), "lr must be a finite number > 0, got nan"),
        ("weight_decay", -1e-4, "weight_decay must be a finite number >= 0"),
        ("tasks", (), "tasks must name at least one task"),
        ("tasks", ("faces", "faces"), "more than once"),
        ("tasks", ("faces", "nope"), "got unknown ['nope']"),
        ("threshold", 1.5, r"threshold must be in (0, 1], got 1.5"),
    ],
)
def test_config_names_the_unusable_field(field: str, value: object, message: str) -> None:
    cfg = ExperimentConfig()
    setattr(cfg, field, value)
    with pytest.raises(ConfigError) as info:
        cfg.validate()
    assert info.value.field == field and message in str(info.value)
    ExperimentConfig().validate()  # the defaults are valid
    TrainConfig.quick(tasks=("faces",)).validate()
    with pytest.raises(ConfigError, match="mode must be one of"):
        TrainConfig(mode="nope").validate()  # type: ignore[arg-type]
