"""Helper for test_resume.py (not a test module): launched by ``torchrun --nproc_per_node=2`` (gloo, CPU).

For each method, every rank trains a tiny DRT net three times in its own process: uninterrupted (``OUT/<method>/ref``),
killed by an exception during step 7 (``OUT/<method>/run``: last.pt holds step 6) and resumed from that directory.
Rank r writes ``OUT/rank{r}.pt`` with both runs' final states, histories and the step the resumed run started at.
"""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path
from typing import Any

import torch

from drt.layers import DynamicResidualConfig
from drt.models import DigitCNNConfig, DigitFiveCNN, DomainAdaptationNet
from drt.train import TrainConfig, train
from dyncore.data import EmbeddedDataset, MultiSourceDataset
from dyncore.training import init_distributed, shutdown

TINY = DigitCNNConfig(conv_channels=(4, 4, 8), fc_features=(16, 16), dropout=0.5, image_size=16)
METHODS = ("adda", "m3sda")  # ADDA: the source encoder freezes mid-run; M³SDA-β: per-source heads


class Killed(RuntimeError):
    pass


def blobs(seed: int, shift: float) -> EmbeddedDataset:
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(48) % 3
    images = torch.rand(48, 3, 16, 16, generator=g) * 60 + 40 + shift
    images[torch.arange(48), labels] += 120
    return EmbeddedDataset(images.clamp(0, 255).to(torch.uint8), labels, ["a", "b", "c"], name=f"d{seed}")


def run(method: str, out: Path, env: Any, kill_at: int | None = None) -> tuple[dict[str, torch.Tensor], Any]:
    domains = [blobs(i, 20.0 * i) for i in range(3)]
    sources = MultiSourceDataset({"d0": domains[0], "d1": domains[1]}, with_domain=method == "m3sda")
    cfg = TrainConfig(method=method, steps=8, batch_size=4, lr=0.05, eval_every=3, num_k=2, trade_off=0.01)
    torch.manual_seed(0)
    num_sources = 2 if method == "m3sda" else None
    # hidden head layers with BN: running statistics outside DDP, per rank
    backbone = DigitFiveCNN(TINY, dynamic=DynamicResidualConfig())
    model = DomainAdaptationNet(backbone, 3, head_hidden=(8,), num_sources=num_sources)

    def callback(step: int, stats: dict[str, float]) -> None:
        if step == kill_at:
            raise Killed(step)

    result = train(
        model,
        sources,
        domains[2],
        source_val=domains[0],
        target_test=domains[2],
        config=cfg,
        out_dir=out,
        env=env,
        callback=callback,
    )
    return model.state_dict(), result


def main(out_dir: Path) -> None:
    torch.set_num_threads(1)
    env = init_distributed(backend="gloo", device="cpu")
    assert env.world_size == 2, env
    report: dict[str, Any] = {"rank": env.rank}
    for method in METHODS:
        ref_state, ref = run(method, out_dir / method / "ref", env)
        with contextlib.suppress(Killed):  # both ranks raise during the same step
            run(method, out_dir / method / "run", env, kill_at=7)
        state, res = run(method, out_dir / method / "run", env)
        report[method] = {
            "ref_state": ref_state,
            "state": state,
            "ref_history": ref.history,
            "history": res.history,
            "resumed_at": res.resumed_at,
        }
    torch.save(report, out_dir / f"rank{env.rank}.pt")
    shutdown(env)


if __name__ == "__main__":
    main(Path(sys.argv[1]))
