from __future__ import annotations

import json

import pytest

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
