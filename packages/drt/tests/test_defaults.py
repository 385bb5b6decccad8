"""Issue 19: per-backbone defaults (resolved when a flag is not given, recorded in config.json, shown in --help),
collapse detection, and every method above chance with the digit-CNN defaults."""

from __future__ import annotations

import json
import logging
import math

import pytest
import torch

from drt.cli import main
from drt.defaults import BACKBONE_DEFAULTS, backbone_for_data, resolve
from drt.layers import DynamicResidualConfig
from drt.losses import MCDConfig
from drt.models import DigitCNNConfig, DigitFiveCNN, DomainAdaptationNet
from drt.train import METHODS, CollapseCheck, TrainConfig, collapse_report, train
from dyncore.data import MultiSourceDataset

TINY = DigitCNNConfig(conv_channels=(4, 4, 8), fc_features=(16, 16), dropout=0.0, image_size=16)


@pytest.mark.quick
def test_defaults_table_resolves_unset_flags_per_backbone() -> None:
    assert backbone_for_data("digits5") == "digit_cnn" and backbone_for_data("domainnet") == "resnet"
    digit, resnet = BACKBONE_DEFAULTS["digit_cnn"], BACKBONE_DEFAULTS["resnet"]
    # the thesis / released DomainNet values stay for the ResNet ...
    thesis = (1e-3, 10.0, 50.0, 4.0, 64)
    assert (resnet.lr, resnet.new_lr_mult, resnet.eta, resnet.grl_coeff, resnet.batch_size) == thesis
    # ... the digit CNN gets weights that do not collapse it (issue 19)
    assert digit.eta < resnet.eta and digit.grl_coeff < resnet.grl_coeff
    unset = {"lr": None, "eta": None, "trade_off": None}
    assert resolve("digit_cnn", "mcd", unset)["eta"] == digit.eta
    assert resolve("resnet", "mcd", unset)["eta"] == 50.0
    assert resolve("digit_cnn", "m3sda", unset)["trade_off"] == digit.trade_off["m3sda"]
    given = resolve("digit_cnn", "mcd", {"lr": 0.5, "eta": 7.0, "trade_off": 3.0})
    assert (given["lr"], given["eta"], given["trade_off"]) == (0.5, 7.0, 3.0)  # a passed flag wins
    with pytest.raises(ValueError, match="--data must be one of"):
        backbone_for_data("imagenet")


def test_help_names_the_defaults_of_both_backbones(capsys) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["train", "--help"])
    assert exc.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    eta = "--eta ETA MCD: η, weight of the discrepancy; default per backbone: 1 with --data digits5; 50 with --data"
    assert eta + " domainnet" in text
    assert "--grl-coeff" in text and "--weight-decay WEIGHT_DECAY, --wd WEIGHT_DECAY" in text


def test_config_json_records_the_resolved_values(tmp_path, digits_root, monkeypatch) -> None:
    monkeypatch.setenv("DYNCORE_CACHE", str(digits_root))
    monkeypatch.setenv("DYNCORE_NO_PROGRESS", "1")
    out = tmp_path / "run"
    argv = ["train", "--target", "usps", "--limit", "32", "--width", "0.125", "--steps", "1", "--batch-size", "8",
            "--eval-every", "1", "--eta", "2.5", "--out", str(out), "--device", "cpu"]  # fmt: skip
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 0
    cfg = json.loads((out / "config.json").read_text())
    digit = BACKBONE_DEFAULTS["digit_cnn"]
    assert cfg["eta"] == 2.5 and cfg["batch_size"] == 8  # given
    assert (cfg["lr"], cfg["grl_coeff"], cfg["weight_decay"]) == (digit.lr, digit.grl_coeff, digit.weight_decay)
    assert cfg["defaults"]["backbone"] == "digit_cnn"
    assert "eta" not in cfg["defaults"]["from_table"] and "lr" in cfg["defaults"]["from_table"]
    ckpt = torch.load(out / "seed0" / "checkpoints" / "last.pt", weights_only=True)
    assert ckpt["config"]["mcd"]["eta"] == 2.5 and ckpt["config"]["lr"] == digit.lr  # what was trained


@pytest.mark.quick
def test_collapse_report_rules() -> None:
    healthy = collapse_report([10] * 10, 80.0)
    assert not healthy["collapsed"] and healthy["reasons"] == [] and math.isclose(healthy["entropy_ratio"], 1.0)
    one_class = collapse_report([91, 1, 1, 1, 1, 1, 1, 1, 1, 1], 80.0)
    assert one_class["collapsed"] and one_class["top_class"] == 0 and "91.0 % of the target images" in one_class[
        "reasons"][0]  # fmt: skip
    two_classes = collapse_report([45, 45, 2, 2, 2, 1, 1, 1, 1, 0], 80.0)  # no majority, but low entropy
    assert two_classes["collapsed"] and any("entropy" in r for r in two_classes["reasons"])
    dead = collapse_report([10] * 10, 12.0)  # balanced predictions, but the features carry no class
    assert dead["collapsed"] and "near chance" in dead["reasons"][0]
    assert not collapse_report([10] * 10, 12.0, check=CollapseCheck(min_source_chance_ratio=1.0))["collapsed"]
    with pytest.raises(ValueError, match="need >= 2 classes"):
        collapse_report([0, 0], 50.0)


def _blob_run(blob_domains, mcd: MCDConfig, lr: float, caplog) -> dict:
    sources = MultiSourceDataset({k: blob_domains[k] for k in ("d0", "d1")})
    torch.manual_seed(0)
    model = DomainAdaptationNet(DigitFiveCNN(TINY, dynamic=DynamicResidualConfig()), 3)
    cfg = TrainConfig(method="mcd", steps=40, batch_size=16, lr=lr, eval_every=20, mcd=mcd)
    with caplog.at_level(logging.WARNING, logger="drt"):
        res = train(model, sources, blob_domains["d2"], source_val=blob_domains["d0"], target_test=blob_domains["d2"],
                    config=cfg)  # fmt: skip
    assert res.collapse is not None
    return res.collapse


def test_a_collapsed_run_is_reported_and_a_healthy_one_is_not(blob_domains, caplog) -> None:
    """The released MCD weights at a high lr wreck the tiny CNN; the digit defaults do not (same data, same init)."""
    digit = BACKBONE_DEFAULTS["digit_cnn"]
    healthy = _blob_run(blob_domains, MCDConfig(eta=digit.eta, grl_coeff=digit.grl_coeff), 0.05, caplog)
    assert not healthy["collapsed"] and "COLLAPSE" not in caplog.text
    caplog.clear()
    collapsed = _blob_run(blob_domains, MCDConfig(eta=500.0, grl_coeff=40.0), 0.5, caplog)
    assert collapsed["collapsed"] and collapsed["reasons"]
    assert "COLLAPSE" in caplog.text


@pytest.fixture(scope="module")
def digits_root_600(tmp_path_factory: pytest.TempPathFactory):
    """A private Digits-5 cache with 600 images per split (enough for a few hundred real training steps)."""
    from dyncore.data import DIGITS5_DOMAINS, digits5

    root = tmp_path_factory.mktemp("digits5_600")
    for d in DIGITS5_DOMAINS:
        for split in ("train", "test"):
            digits5(d, split, limit=600, root=root)
    return root


@pytest.mark.slow
@pytest.mark.parametrize("method", METHODS)
def test_every_method_learns_with_the_digit_cnn_defaults(method: str, tmp_path, digits_root_600, monkeypatch):
    """Issue 19: the CLI defaults (nothing but width, budget and data size given) must not collapse any method.
    Ten classes: chance is 10 %; a collapsed run (9–11 %) fails the 30 % bar, and result.json must not flag it."""
    monkeypatch.setenv("DYNCORE_CACHE", str(digits_root_600))
    monkeypatch.setenv("DYNCORE_NO_PROGRESS", "1")
    out = tmp_path / method
    argv = ["train", "--target", "mnist", "--method", method, "--width", "0.125", "--steps", "200", "--eval-every",
            "100", "--limit", "600", "--out", str(out), "--device", "cpu", "--threads", "1"]  # fmt: skip
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 0
    result = json.loads((out / "result.json").read_text())
    assert result["target_test"]["ensemble"]["mean"] > 30.0, result
    assert result["collapse"]["detected"] is False, result["collapse"]
