"""GPU check of issue 4's Performance section (run on a CUDA machine):

PYTHONPATH=packages/dyncore/src:packages/dcd/src python3 packages/dcd/benchmarks/gpu_check.py [--quick]

* training images/s, batch 256, fp32, 224², MobileNetV2 ×0.5: DCD (and DY-Conv) ÷ static (target ≥ 0.8);
* batch-1 latency, 224²: DCD ÷ static, eager and CUDA-graph replay of the inference form (target ≤ 1.5).
"""

from __future__ import annotations

import argparse
import copy
import json

import torch
import torch.nn.functional as F

from dcd.inference import fold_batchnorm, set_apply_mode
from dcd.models import DynamicConfig, mobilenetv2
from dyncore.bench import call_ms


def timed(fn, n: int, warm: int = 3) -> float:
    """Median seconds of ``fn()`` with the GPU synchronised around each call."""
    return call_ms(fn, repeats=n, warmup=warm, cuda=True) / 1e3


def graphed(model: torch.nn.Module, x: torch.Tensor):
    static_x = x.clone()
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s), torch.no_grad():
        for _ in range(3):
            model(static_x)
    torch.cuda.current_stream().wait_stream(s)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g), torch.no_grad():
        out = model(static_x)
    return lambda: g.replay(), out


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--quick", action="store_true")
    args = p.parse_args()
    dev = torch.device("cuda")
    torch.backends.cudnn.benchmark = True
    res: dict = {"device": torch.cuda.get_device_name(0), "torch": torch.__version__}
    batch = 32 if args.quick else 256
    n = 3 if args.quick else 10
    x = torch.randn(batch, 3, 224, 224, device=dev)
    y = torch.randint(0, 1000, (batch,), device=dev)
    train = {}
    for kind, mode in (
        ("static", "featurewise"),
        ("dcd", "auto"),
        ("dcd", "featurewise"),
        ("dcd", "synthesis"),
        ("dyconv", "synthesis"),
    ):
        m = mobilenetv2(width_mult=0.5, cfg=DynamicConfig(kind=kind, mode=mode, fc_squeeze=8)).to(dev)
        opt = torch.optim.SGD(m.parameters(), lr=0.01, momentum=0.9)

        def step(m: torch.nn.Module = m, opt: torch.optim.Optimizer = opt) -> None:
            loss = F.cross_entropy(m(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

        train[f"{kind}_{mode}"] = batch / timed(step, n)
    res["train_images_per_s"] = train
    res["train_ratio_dcd_over_static"] = (
        max(train["dcd_auto"], train["dcd_featurewise"], train["dcd_synthesis"]) / train["static_featurewise"]
    )
    x1 = torch.randn(1, 3, 224, 224, device=dev)
    lat = {}
    with torch.no_grad():
        static = mobilenetv2(width_mult=0.5, kind="static").to(dev).eval()
        dcd = mobilenetv2(width_mult=0.5, kind="dcd").to(dev).eval()
        for mode in ("auto", "featurewise", "synthesis"):
            set_apply_mode(dcd, mode)
            lat[f"dcd_eager_{mode}"] = 1e3 * timed(lambda: dcd(x1), 50)
        lat["static_eager"] = 1e3 * timed(lambda: static(x1), 50)
        sf, df = copy.deepcopy(static), copy.deepcopy(dcd)
        fold_batchnorm(sf)
        fold_batchnorm(df)
        for mode in ("auto", "featurewise", "synthesis"):
            set_apply_mode(df, mode)
            run, _ = graphed(df, x1)
            lat[f"dcd_graph_{mode}"] = 1e3 * timed(run, 200)
        run, _ = graphed(sf, x1)
        lat["static_graph"] = 1e3 * timed(run, 200)
    res["latency_ms"] = lat
    res["latency_ratio_eager"] = min(v for k, v in lat.items() if k.startswith("dcd_eager")) / lat["static_eager"]
    res["latency_ratio_graph"] = min(v for k, v in lat.items() if k.startswith("dcd_graph")) / lat["static_graph"]
    print(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
