"""DDP through the real launcher: ``torchrun`` (torch.distributed.run), 2 CPU processes, gloo backend."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).with_name("ddp_train_script.py")


@pytest.mark.slow
def test_torchrun_two_gloo_replicas_stay_identical(tmp_path: Path) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "DYNCORE_NO_PROGRESS": "1"}
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(var, None)
    # --standalone: a local c10d rendezvous on a free port (localhost:0), so parallel runs never collide.
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes=1", "--nproc_per_node=2",
           str(SCRIPT), str(tmp_path)]  # fmt: skip
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, f"torchrun failed:\nSTDOUT:\n{proc.stdout[-3000:]}\nSTDERR:\n{proc.stderr[-3000:]}"

    r0 = torch.load(tmp_path / "rank0.pt", weights_only=True)
    r1 = torch.load(tmp_path / "rank1.pt", weights_only=True)
    assert (r0["rank"], r1["rank"]) == (0, 1)
    assert r0["world_size"] == r1["world_size"] == 2 and r0["backend"] == "gloo"
    assert r0["final"].keys() == r0["init"].keys()
    for k in r0["final"]:
        # replicas trained on different data stay bit-identical (gradients are averaged) ...
        assert torch.equal(r0["final"][k], r1["final"][k]), k
        # ... and they really trained
        assert not torch.equal(r0["final"][k], r0["init"][k]), k
    assert r0["mean_rank"].item() == pytest.approx(0.5) and r1["mean_rank"].item() == pytest.approx(0.5)
    assert r0["mean_losses"] == r1["mean_losses"]
    # confusion matrices summed over ranks: rank0 adds (0→0, 2→1), rank1 adds (1→1, 2→1)
    expected = torch.zeros(3, 3, dtype=torch.int64)
    expected[0, 0] = expected[1, 1] = 1
    expected[2, 1] = 2
    assert torch.equal(r0["confusion"], expected) and torch.equal(r1["confusion"], expected)
    assert r0["unwrapped_is_model"] and r1["unwrapped_is_model"]
