from __future__ import annotations

import json
import re

import pytest
import torch

from drt.cli import main


def test_help_and_bad_flags_exit_codes(capsys) -> None:
    for argv, code in ((["--help"], 0), (["train", "--help"], 0), (["train", "--method", "nope"], 2)):
        with pytest.raises(SystemExit) as exc:
            main(argv)
        assert exc.value.code == code
    assert "--select-on" in capsys.readouterr().out


def test_train_on_tiny_digits5_writes_a_run_directory(tmp_path, digits_root, monkeypatch) -> None:
    monkeypatch.setenv("DYNCORE_CACHE", str(digits_root))
    monkeypatch.setenv("DYNCORE_NO_PROGRESS", "1")
    out = tmp_path / "run"
    argv = [
        "train",
        "--target",
        "usps",
        "--limit",
        "32",
        "--width",
        "0.125",
        "--steps",
        "2",
        "--batch-size",
        "8",
        "--eval-every",
        "2",
        "--out",
        str(out),
        "--device",
        "cpu",
        "--seeds",
        "0",
        "1",
    ]
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 0
    result = json.loads((out / "result.json").read_text())
    assert result["seeds"] == [0, 1] and set(result["target_test"]) == {"F1", "F2", "ensemble"}
    assert (out / "seed1" / "checkpoints" / "best.pt").is_file()
    assert (out / "seed1" / "checkpoints" / "last.pt").is_file()
    # the same command again: every finished seed resumes at its last step (no retraining), same results
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 0
    log = (out / "train.log").read_text()
    assert log.count("resuming from") == 2 and "seed1/checkpoints/last.pt at step 2 of 2" in log
    assert json.loads((out / "result.json").read_text()) == result
    # another model on the same --out is refused (exit code 2), naming the setting
    with pytest.raises(SystemExit) as exc:
        main([*argv[:6], "0.25", *argv[7:]])
    assert exc.value.code == 2
    assert re.search(r"run\.width: saved 0\.125 vs current 0\.25", (out / "train.log").read_text())
    ckpt = out / "seed0" / "model.pt"
    with pytest.raises(SystemExit) as exc:
        main(
            [
                "eval",
                "--target",
                "usps",
                "--limit",
                "32",
                "--width",
                "0.125",
                "--checkpoint",
                str(ckpt),
                "--out",
                str(tmp_path / "eval"),
                "--device",
                "cpu",
            ]
        )
    assert exc.value.code == 0


def test_m3sda_builds_one_head_pair_per_source_domain(tmp_path, digits_root, monkeypatch) -> None:
    monkeypatch.setenv("DYNCORE_CACHE", str(digits_root))
    monkeypatch.setenv("DYNCORE_NO_PROGRESS", "1")
    common = ["--target", "usps", "--sources", "mnist", "svhn", "--limit", "32", "--width", "0.125", "--device", "cpu"]
    common += ["--method", "m3sda"]
    out = tmp_path / "run"
    argv = ["train", *common, "--steps", "2", "--batch-size", "8", "--eval-every", "2", "--out", str(out)]
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 0
    state = torch.load(out / "seed0" / "model.pt", weights_only=True)
    assert {k.split(".weight")[0] for k in state if k.startswith("heads.") and k.endswith(".weight")} == {
        f"heads.{j}.classifiers.{i}.0" for j in (0, 1) for i in (0, 1)
    }
    with pytest.raises(SystemExit) as exc:
        main(["eval", *common, "--checkpoint", str(out / "seed0" / "model.pt"), "--out", str(tmp_path / "eval")])
    assert exc.value.code == 0
