"""torch.compile variant of gpu_check.py: batch-1 latency (reduce-overhead) and batch-256 training (default mode)."""

from __future__ import annotations

import copy
import json
import time

import torch
import torch.nn.functional as F

from dcd.inference import fold_batchnorm, set_apply_mode
from dcd.models import DynamicConfig, mobilenetv2
from dyncore.bench import call_ms


def timed(fn, n: int, warm: int = 5) -> float:
    """Median seconds of ``fn()`` with the GPU synchronised around each call."""
    return call_ms(fn, repeats=n, warmup=warm, cuda=True) / 1e3


def main() -> None:
    dev = torch.device("cuda")
    res: dict = {}
    x1 = torch.randn(1, 3, 224, 224, device=dev)
    t0 = time.time()
    with torch.no_grad():
        static = mobilenetv2(width_mult=0.5, kind="static").to(dev).eval()
        dcd = mobilenetv2(width_mult=0.5, kind="dcd").to(dev).eval()
        fold_batchnorm(static)
        fold_batchnorm(dcd)
        for name, m, mode in (
            ("static", static, None),
            ("dcd_synthesis", dcd, "synthesis"),
            ("dcd_featurewise", copy.deepcopy(dcd), "featurewise"),
            ("dcd_auto", copy.deepcopy(dcd), "auto"),
        ):
            if mode:
                set_apply_mode(m, mode)
            c = torch.compile(m, mode="reduce-overhead")
            res[f"latency_ms_{name}"] = 1e3 * timed(lambda c=c: c(x1), 200)
    res["latency_ratio_compiled"] = (
        min(res[f"latency_ms_dcd_{m}"] for m in ("synthesis", "featurewise", "auto")) / res["latency_ms_static"]
    )
    res["latency_compile_s"] = time.time() - t0
    print(json.dumps(res, indent=2), flush=True)
    batch = 256
    x = torch.randn(batch, 3, 224, 224, device=dev)
    y = torch.randint(0, 1000, (batch,), device=dev)
    for kind in ("static", "dcd"):
        m = mobilenetv2(width_mult=0.5, cfg=DynamicConfig(kind=kind, mode="auto", fc_squeeze=8)).to(dev)
        opt = torch.optim.SGD(m.parameters(), lr=0.01, momentum=0.9)
        cm = torch.compile(m)

        def step(cm: torch.nn.Module = cm, opt: torch.optim.Optimizer = opt) -> None:
            loss = F.cross_entropy(cm(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

        res[f"train_images_per_s_compiled_{kind}"] = batch / timed(step, 10, warm=3)
        print(kind, res[f"train_images_per_s_compiled_{kind}"], time.time() - t0, flush=True)
    res["train_ratio_compiled"] = res["train_images_per_s_compiled_dcd"] / res["train_images_per_s_compiled_static"]
    print(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
