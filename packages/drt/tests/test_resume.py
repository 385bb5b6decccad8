from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from drt.layers import DynamicResidualConfig
from drt.models import DigitCNNConfig, DigitFiveCNN, DomainAdaptationNet
from drt.train import TrainConfig, TrainResult, train, train_with_self_training
from dyncore.data import MultiSourceDataset
from dyncore.training import ConfigMismatchError, load_checkpoint

# dropout > 0 so the resumed run depends on the restored global RNG, not only on the weights
TINY = DigitCNNConfig(conv_channels=(4, 4, 8), fc_features=(16, 16), dropout=0.5, image_size=16)
STEPS, EVAL_EVERY = 8, 3  # last.pt after steps 3, 6 and 8; the 6-batch target loader starts a new pass at step 6


class Killed(RuntimeError):
    """Stands in for a killed process."""


def _run(
    domains: dict[str, Any],
    method: str,
    out: Path,
    *,
    kill_at: int | None = None,
    calls: list[int] | None = None,
    run_config: dict[str, Any] | None = None,
    **overrides: Any,
) -> tuple[DomainAdaptationNet, TrainResult]:
    sources = MultiSourceDataset({k: domains[k] for k in ("d0", "d1")}, with_domain=method == "m3sda")
    cfg = TrainConfig(
        **{"method": method, "steps": STEPS, "batch_size": 8, "lr": 0.05, "eval_every": EVAL_EVERY, "num_k": 2}
        | overrides
    )
    torch.manual_seed(0)
    num_sources = 2 if method == "m3sda" else None
    model = DomainAdaptationNet(DigitFiveCNN(TINY, dynamic=DynamicResidualConfig()), 3, num_sources=num_sources)

    def callback(step: int, stats: dict[str, float]) -> None:
        if calls is not None:
            calls.append(step)
        if step == kill_at:
            raise Killed(f"killed during step {step}")

    target = domains["d2"]
    result = train(
        model,
        sources,
        target,
        source_val=domains["d0"],
        target_test=target,
        config=cfg,
        out_dir=out,
        callback=callback,
        run_config=run_config,
    )
    return model, result


def _assert_same_tensors(a: dict[str, Any], b: dict[str, Any]) -> None:
    assert a.keys() == b.keys()
    for k in a:
        if isinstance(a[k], torch.Tensor):
            assert torch.equal(a[k], b[k]), k
        elif isinstance(a[k], dict):
            _assert_same_tensors(a[k], b[k])
        else:
            assert a[k] == b[k], k


@pytest.mark.parametrize(
    ("method", "kill_at"),
    [
        ("mcd", 7),  # resumes at 6, right where the target loader's pass ends
        ("adda", 4),  # resumes at 3, still in source-only pre-training (adda_pretrain 0.5 → step 4 freezes)
        ("adda", 7),  # resumes at 6 with the frozen source encoder and the discriminator from the checkpoint
        ("m3sda", 5),  # per-source heads, both head optimisers, domain-labelled loader
    ],
)
def test_killed_run_resumes_bit_identically(blob_domains, tmp_path, method: str, kill_at: int) -> None:
    kw = {"trade_off": 0.01} if method == "m3sda" else {}  # λ = 1 collapses the tiny CNN's features (README)
    ref_model, ref = _run(blob_domains, method, tmp_path / "ref", **kw)
    with pytest.raises(Killed):
        _run(blob_domains, method, tmp_path / "run", kill_at=kill_at, **kw)
    saved = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")
    assert saved["step"] == kill_at // EVAL_EVERY * EVAL_EVERY
    calls: list[int] = []
    model, res = _run(blob_domains, method, tmp_path / "run", calls=calls, **kw)
    assert res.resumed_at == saved["step"] and calls == list(range(saved["step"], STEPS))
    # the selected model, the whole history and the target accuracies are bit-identical ...
    _assert_same_tensors(ref_model.state_dict(), model.state_dict())
    assert res.history == ref.history and len(res.history) == 3
    assert (res.best_step, res.source_val, res.target_test) == (ref.best_step, ref.source_val, ref.target_test)
    # ... and so is the final training state (last model, every optimiser, discriminator / source encoder)
    a = load_checkpoint(tmp_path / "ref" / "checkpoints" / "last.pt")
    b = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")
    assert a["step"] == b["step"] == STEPS
    _assert_same_tensors(a["model"], b["model"])
    _assert_same_tensors(a["optimizer"], b["optimizer"])
    _assert_same_tensors(a["extra"]["learner"], b["extra"]["learner"])
    if method == "adda":
        assert b["extra"]["learner"]["source_encoder"] is not None and b["extra"]["learner"]["adda"] is not None


def test_finished_run_is_re_evaluated_not_retrained(blob_domains, tmp_path, caplog) -> None:
    model_a, first = _run(blob_domains, "adda", tmp_path)
    assert first.best_step == 6 < STEPS  # the selected state is not the last one: last.pt must carry it
    assert (tmp_path / "checkpoints" / "best.pt").is_file() and (tmp_path / "checkpoints" / "last.pt").is_file()
    calls: list[int] = []
    with caplog.at_level(logging.INFO, logger="drt"):
        model_b, again = _run(blob_domains, "adda", tmp_path, calls=calls)
    assert calls == [] and again.resumed_at == STEPS and first.resumed_at is None
    assert f"at step {STEPS} of {STEPS}" in caplog.text and "resuming from" in caplog.text
    assert (again.best_step, again.target_test, again.history) == (first.best_step, first.target_test, first.history)
    _assert_same_tensors(model_a.state_dict(), model_b.state_dict())


@pytest.mark.quick
def test_resuming_with_another_config_names_the_differing_keys(blob_domains, tmp_path) -> None:
    _run(blob_domains, "source_only", tmp_path, steps=3, run_config={"target": "d2"})
    with pytest.raises(ConfigMismatchError, match=r"\['lr'\].*lr: saved 0\.05 vs current 0\.01"):
        _run(blob_domains, "source_only", tmp_path, steps=3, lr=0.01, run_config={"target": "d2"})
    with pytest.raises(ConfigMismatchError, match=r"run\.target: saved 'd2' vs current 'd1'"):
        _run(blob_domains, "source_only", tmp_path, steps=3, run_config={"target": "d1"})
    _, same = _run(blob_domains, "source_only", tmp_path, steps=3, device="cpu", run_config={"target": "d2"})
    assert same.resumed_at == 3


def test_self_training_resumes_each_stage_in_its_own_directory(blob_domains, tmp_path, caplog) -> None:
    sources = MultiSourceDataset({k: blob_domains[k] for k in ("d0", "d1")})
    target = blob_domains["d2"]
    cfg = TrainConfig(method="source_only", steps=12, st_steps=4, batch_size=8, lr=0.05, eval_every=4, st_threshold=0.5)

    def run() -> tuple[DomainAdaptationNet, TrainResult, TrainResult]:
        torch.manual_seed(0)
        model = DomainAdaptationNet(DigitFiveCNN(TINY, dynamic=DynamicResidualConfig()), 3)
        first, second = train_with_self_training(
            model, sources, target, source_val=blob_domains["d0"], target_test=target, config=cfg, out_dir=tmp_path
        )
        return model, first, second

    model_a, first_a, second_a = run()
    assert second_a.pseudo_labels is not None and second_a.pseudo_labels >= 8  # the second stage really ran
    assert (tmp_path / "self_training" / "checkpoints" / "last.pt").is_file()
    # a kill during the second stage: the finished first stage is only re-evaluated (same pseudo labels), the
    # second stage starts again (here: from scratch) and ends where the uninterrupted run ended
    shutil.rmtree(tmp_path / "self_training")
    with caplog.at_level(logging.INFO, logger="drt"):
        model_b, first_b, second_b = run()
    assert first_b.resumed_at == 12 and second_b.resumed_at is None and "at step 12 of 12" in caplog.text
    assert (first_b.best_step, first_b.target_test) == (first_a.best_step, first_a.target_test)
    assert second_b.pseudo_labels == second_a.pseudo_labels
    assert (second_b.history, second_b.target_test) == (second_a.history, second_a.target_test)
    _assert_same_tensors(model_a.state_dict(), model_b.state_dict())


@pytest.mark.slow
def test_ddp_run_resumes_bit_identically_on_every_rank(tmp_path) -> None:
    """torchrun, 2 gloo CPU processes: ADDA and M³SDA-β (heads with BN outside DDP, per-source batches that can
    leave a classifier unused on one rank) killed during step 7 and resumed from step 6 end as uninterrupted."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "DYNCORE_NO_PROGRESS": "1"}
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(var, None)
    script = Path(__file__).with_name("ddp_resume_script.py")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes=1", "--nproc_per_node=2",
           str(script), str(tmp_path)]  # fmt: skip
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, f"torchrun failed:\nSTDOUT:\n{proc.stdout[-3000:]}\nSTDERR:\n{proc.stderr[-3000:]}"
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    for method in ("adda", "m3sda"):
        for r in ranks:
            m = r[method]
            assert m["resumed_at"] == 6 and m["history"] == m["ref_history"] and len(m["history"]) == 3
            _assert_same_tensors(m["ref_state"], m["state"])
        _assert_same_tensors(ranks[0][method]["state"], ranks[1][method]["state"])  # replicas agree
