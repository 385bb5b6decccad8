"""Helper for test_training_ddp.py (not a test module): launched by ``torchrun --nproc_per_node=2``.

Each rank trains the same tiny model for a few DDP steps on *different* data (rank-seeded batches) and writes its
initial and final parameters plus the results of the collective helpers to ``OUT_DIR/rank{r}.pt``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from torch import nn

from dyncore.training import (
    ConfusionMatrix,
    all_reduce_mean,
    barrier,
    init_distributed,
    seed_everything,
    shutdown,
    unwrap,
    wrap_ddp,
)


def main(out_dir: Path) -> None:
    torch.set_num_threads(1)
    env = init_distributed(backend="gloo", device="cpu")
    assert env.world_size == 2, env
    seed_everything(0)  # same init on every rank (DDP also broadcasts rank 0's parameters)
    model = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3))
    init = {k: v.detach().clone() for k, v in model.state_dict().items()}
    ddp = wrap_ddp(model, env)
    opt = torch.optim.SGD(ddp.parameters(), lr=0.1, momentum=0.9)
    data_gen = torch.Generator().manual_seed(100 + env.rank)  # each rank sees different data
    losses = []
    for _ in range(4):
        x = torch.randn(5, 6, generator=data_gen)
        y = torch.randint(0, 3, (5,), generator=data_gen)
        loss = nn.functional.cross_entropy(ddp(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(all_reduce_mean(loss, env).item())
    cm = ConfusionMatrix(3, ignore_index=255)
    cm.update(torch.tensor([env.rank, 1]), torch.tensor([env.rank, 2]))
    cm.all_reduce(env)
    barrier(env)
    final = {k: v.detach().clone() for k, v in unwrap(ddp).state_dict().items()}
    torch.save(
        {
            "rank": env.rank,
            "world_size": env.world_size,
            "backend": env.backend,
            "init": init,
            "final": final,
            "mean_rank": all_reduce_mean(torch.tensor(env.rank), env),
            "mean_losses": losses,
            "confusion": cm.matrix.clone(),
            "unwrapped_is_model": unwrap(ddp) is model,
        },
        out_dir / f"rank{env.rank}.pt",
    )
    shutdown(env)


if __name__ == "__main__":
    main(Path(sys.argv[1]))
