"""Measurements on the embedded data: generation time of everything, and the Digits-5 source-only gap.

``source_only_gap`` trains a small LeNet-style CNN on the four source domains of each leave-one-domain-out task and
reports its accuracy on the sources' test splits (in-domain), on the held-out target's test split (source-only, the
number adaptation methods must raise), and of the same network trained on the target itself (target oracle).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch
from torch import Tensor, nn

from .base import normalise
from .digits5 import DIGITS5_DOMAINS, digits5, leave_one_out

__all__ = ["GapRow", "LeNet", "format_gap_table", "generate_all", "source_only_gap"]


def generate_all(
    *, seed: int = 0, root: str | os.PathLike[str] | None = None, limit: int | None = None
) -> dict[str, float]:
    """Generate (or load from cache) every embedded dataset; return seconds per dataset."""
    from .digits5 import digits5_arrays
    from .multidomain import MULTIDOMAIN_TASKS, SOURCE_TASK, multidomain_task

    times: dict[str, float] = {}
    for d in DIGITS5_DOMAINS:
        t = time.perf_counter()
        digits5_arrays(d, seed=seed, root=root, limit=limit)
        times[f"digits5/{d}"] = time.perf_counter() - t
    for task in (SOURCE_TASK, *MULTIDOMAIN_TASKS):
        t = time.perf_counter()
        multidomain_task(task, "train", seed=seed, root=root, limit=limit)
        times[f"multidomain/{task}"] = time.perf_counter() - t
    return times


class LeNet(nn.Module):
    """A small LeNet-style CNN for 32×32 RGB: (B, 3, 32, 32) → logits (B, num_classes) (~2.2 M MAdds/image)."""

    def __init__(self, num_classes: int = 10, width: int = 16) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, width, 5),
            nn.BatchNorm2d(width),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
            nn.Conv2d(width, 2 * width, 5),
            nn.BatchNorm2d(2 * width),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
        )
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(2 * width * 5 * 5, 64),
            nn.ReLU(inplace=True),
            nn.Dropout(0.2),
            nn.Linear(64, num_classes),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.features(x))


@dataclass
class GapRow:
    target: str
    sources: tuple[str, ...]
    source_test_acc: float  # mean over the 4 sources' test splits (in-domain for the source model)
    target_acc: float  # source-only on the held-out target
    oracle_acc: float  # same net trained on the target's train split
    gap: float  # oracle − source-only


def _train(model: nn.Module, x: Tensor, y: Tensor, *, steps: int, batch_size: int, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=2e-3, total_steps=steps)
    model.train()
    perm, pos = torch.randperm(len(x), generator=g), 0
    for _ in range(steps):
        if pos + batch_size > len(x):
            perm, pos = torch.randperm(len(x), generator=g), 0
        idx = perm[pos : pos + batch_size]
        pos += batch_size
        loss = nn.functional.cross_entropy(model(x[idx]), y[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()


@torch.no_grad()
def _accuracy(model: nn.Module, x: Tensor, y: Tensor) -> float:
    model.eval()
    pred = torch.cat([model(x[i : i + 500]).argmax(1) for i in range(0, len(x), 500)])
    return 100.0 * float((pred == y).float().mean())


def source_only_gap(
    *,
    targets: tuple[str, ...] = DIGITS5_DOMAINS,
    seed: int = 0,
    per_domain: int = 1000,
    epochs: float = 3.0,
    batch_size: int = 64,
    threads: int = 1,
    root: str | os.PathLike[str] | None = None,
    limit: int | None = None,
    log: Callable[[str], None] | None = print,
) -> list[GapRow]:
    """Source-only vs in-domain accuracy for each Digits-5 leave-one-domain-out task.

    The source model sees ``per_domain`` training images of each of the 4 sources for ``epochs`` passes; the oracle
    is trained on the target's first ``per_domain`` training images for the same number of optimisation steps.
    ``limit`` generates only a prefix of every split (for smoke tests).
    """
    torch.set_num_threads(threads)
    train = {d: digits5(d, "train", seed=seed, root=root, limit=limit) for d in DIGITS5_DOMAINS}
    test = {d: digits5(d, "test", seed=seed, root=root, limit=limit) for d in DIGITS5_DOMAINS}
    xs = {d: normalise(train[d].images[:per_domain]) for d in DIGITS5_DOMAINS}
    ys = {d: train[d].labels[:per_domain] for d in DIGITS5_DOMAINS}
    xt = {d: normalise(test[d].images) for d in DIGITS5_DOMAINS}
    rows = []
    for target in targets:
        sources, _ = leave_one_out(target)
        t0 = time.perf_counter()
        x = torch.cat([xs[d] for d in sources])
        y = torch.cat([ys[d] for d in sources])
        steps = max(1, int(epochs * len(x) / batch_size))
        torch.manual_seed(seed)
        model = LeNet()
        _train(model, x, y, steps=steps, batch_size=batch_size, seed=seed)
        src_acc = sum(_accuracy(model, xt[d], test[d].labels) for d in sources) / len(sources)
        tgt_acc = _accuracy(model, xt[target], test[target].labels)
        torch.manual_seed(seed)
        oracle = LeNet()
        _train(oracle, xs[target], ys[target], steps=steps, batch_size=batch_size, seed=seed)
        orc_acc = _accuracy(oracle, xt[target], test[target].labels)
        rows.append(GapRow(target, sources, src_acc, tgt_acc, orc_acc, orc_acc - tgt_acc))
        if log is not None:
            log(
                f"{target:>7}: sources {src_acc:5.1f}  target {tgt_acc:5.1f}  oracle {orc_acc:5.1f}"
                f"  ({time.perf_counter() - t0:.0f} s)"
            )
    return rows


def format_gap_table(rows: list[GapRow]) -> str:
    """Markdown table of :func:`source_only_gap` rows."""
    lines = [
        "| target | sources (in-domain test) | target, source-only | target, trained on target | gap |",
        "|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r.target} | {r.source_test_acc:.1f} | {r.target_acc:.1f} | {r.oracle_acc:.1f} | {r.gap:+.1f} |"
        )
    return "\n".join(lines)


def rows_as_dicts(rows: list[GapRow]) -> list[dict[str, object]]:
    return [asdict(r) for r in rows]
