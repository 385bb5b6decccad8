"""``bdl run --register micronet.segmentation:register_smp_encoders --encoder micronet_m0`` (the README's example):
the registration reaches every process of the run, first and resumed, through the run config (bdl itself never
imports micronet)."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

Cli = Callable[..., subprocess.CompletedProcess[str]]

TINY = (
    "--size", "32", "64", "--num-source", "4", "--num-target", "4", "--num-val", "2",
    "--model", "deeplabv3plus", "--K", "1", "--N", "0", "--source-only-steps", "2", "--seg-steps", "1",
    "--translation-steps", "1", "--ngf", "4", "--ndf", "4", "--n-blocks", "1", "--translation-batch", "2",
    "--batch-size", "2", "--optimizer", "adam", "--lr", "1e-3", "--ckpt-every", "1", "--device", "cpu",
)  # fmt: skip


@pytest.mark.slow
def test_bdl_run_with_a_micronet_encoder_registered_by_import_path(cli: Cli, tmp_path: Path) -> None:
    out = tmp_path / "run"
    register = ("--register", "micronet.segmentation:register_smp_encoders", "--encoder", "micronet_m0")
    env_cache = ("--cache", str(tmp_path / "cache"))
    cli("bdl", "run", *TINY, *register, *env_cache, "--out", str(out))
    final = torch.load(out / "final_model.pt", weights_only=True)["model"]
    assert any(k.startswith("encoder.stages.") for k in final)  # dyncore's StagedEncoder around MicroNet stages
    assert json.loads((out / "config.json").read_text())["register"] == [register[1]]
    # a second process on the finished run: registers again, resumes (nothing to do), same final model
    cli("bdl", "run", *TINY, *register, *env_cache, "--out", str(out))
    again = torch.load(out / "final_model.pt", weights_only=True)["model"]
    assert all(torch.equal(final[k], again[k]) for k in final)
    # without --register the encoder is unknown: a usage error naming --encoder and the way out
    proc = cli("bdl", "run", *TINY, "--encoder", "micronet_m0", *env_cache, "--out", str(tmp_path / "x"), check=False)
    assert proc.returncode == 2 and "--encoder 'micronet_m0' is not a known encoder" in proc.stderr
    assert "--register" in proc.stderr and not (tmp_path / "x").exists()
