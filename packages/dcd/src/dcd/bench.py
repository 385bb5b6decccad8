"""``dcd bench``: latency and training-step ratios, measured side by side (interleaved) on this machine.

1. Batch-1, single-thread, 224×224 latency of MobileNetV2 ×0.5 DCD ÷ static:
   * eager PyTorch: DCD with its own modules (eval) vs torchvision's ``mobilenet_v2(width_mult)``;
   * the explicit fast form (:func:`dcd.reparameterize`: BNs folded, per-layer form fixed by MAdds on the example) of
     DCD vs the static model's fast form (BN folded), eager, TorchScript and ONNX Runtime (1 intra-op thread).
2. Training step time (batch 64, 2 threads) of DCD (default "auto" form, and the released feature-wise form), DY-Conv
   and CondConv ×0.5 (and static), interleaved rounds.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from dcd.inference import reparameterize
from dcd.models import DynamicConfig, mobilenetv2
from dyncore.bench import compare_latency, compare_train_throughput, tune_malloc
from dyncore.cli import RunDir
from dyncore.complexity import MAddsConvention, count_madds
from dyncore.report import write_bench

__all__ = ["run_bench"]


def _ort_session(model: nn.Module, x: torch.Tensor, path: Any) -> Any:
    import onnxruntime as ort

    torch.onnx.export(model, (x,), str(path), input_names=["input"], output_names=["logits"], opset_version=17,
                      dynamo=False)  # fmt: skip
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def run_bench(args: argparse.Namespace) -> dict[str, Any]:
    t0 = time.perf_counter()
    quick = bool(args.quick)
    malloc_tuned = tune_malloc()
    width = args.width
    size = 96 if quick else 224
    run = RunDir(args.out)
    run.write_config({"command": "bench", "width": width, "size": size, "quick": quick})
    torch.manual_seed(args.seed)
    x = torch.randn(1, 3, size, size)
    import torchvision

    static_tv = torchvision.models.mobilenet_v2(width_mult=width).eval()
    static = mobilenetv2(width_mult=width, kind="static").eval()
    dcd = mobilenetv2(width_mult=width, kind="dcd").eval()
    rounds, repeats = (2, 3) if quick else (5, 10)
    print(f"bench: eager latency, batch 1, 1 thread, {size}² …", flush=True)
    eager = compare_latency({"static": (static_tv, (x,)), "dcd": (dcd, (x,))}, threads=1, rounds=rounds,
                            repeats=repeats)  # fmt: skip
    per_sample = count_madds(dcd, x, convention=MAddsConvention(dynamic="per_sample")).by_module
    per_pixel = count_madds(dcd, x, convention=MAddsConvention(dynamic="per_pixel")).by_module
    static_madds = count_madds(static, x).total
    # The explicit fast forms: BN folded in both; DCD layers in the form that costs fewer MAdds at this size.
    print("bench: explicit fast forms (dcd.reparameterize) …", flush=True)
    static_f = reparameterize(static, x)
    dcd_f = reparameterize(dcd, x)
    forms = [getattr(m, "form", None) for m in dcd_f.modules()]
    inf = compare_latency({"static": (static_f, (x,)), "dcd": (dcd_f, (x,)), "static_torchvision": (static_tv, (x,))},
                          threads=1, rounds=rounds, repeats=repeats)  # fmt: skip
    details: dict[str, Any] = {"malloc_tuned": malloc_tuned, "eager_ms": eager, "fast_form_ms": inf,
                               "input": [1, 3, size, size], "threads_latency": 1,
                               "forms": {f: forms.count(f) for f in ("featurewise", "synthesis")},
                               "madds": {"static": static_madds, "dcd_featurewise": sum(per_pixel.values()),
                                         "dcd_cheaper_form_per_layer": sum(map(min, per_pixel.values(),
                                                                               per_sample.values()))}}  # fmt: skip
    ratios = {"latency_eager_dcd_over_torchvision": eager["dcd"] / eager["static"],
              "latency_fast_dcd_over_torchvision": inf["dcd"] / inf["static_torchvision"],
              "latency_fast_dcd_over_fast_static": inf["dcd"] / inf["static"],
              "madds_dcd_cheaper_form_over_static":
                  details["madds"]["dcd_cheaper_form_per_layer"] / static_madds}  # fmt: skip
    # Compiled: TorchScript trace → freeze → optimize_for_inference, for both folded models.
    print("bench: TorchScript and ONNX Runtime …", flush=True)
    with torch.no_grad():
        ts_static, ts_dcd = (torch.jit.optimize_for_inference(torch.jit.freeze(
            torch.jit.trace(m, (x,), check_trace=False))) for m in (static_f, dcd_f))  # fmt: skip
    ts = compare_latency({"static": (ts_static, (x,)), "dcd": (ts_dcd, (x,))}, threads=1,
                         rounds=rounds,
                         repeats=repeats)  # fmt: skip
    details["torchscript_ms"] = ts
    ratios["latency_torchscript_fast_dcd_over_fast_static"] = ts["dcd"] / ts["static"]
    try:
        s_sess = _ort_session(static_f, x, run.path / "static.onnx")
        d_sess = _ort_session(dcd_f, x, run.path / "dcd.onnx")
        feed = {"input": x.numpy()}
        ort_ms = compare_latency({"static": (lambda: s_sess.run(None, feed), ()),
                                  "dcd": (lambda: d_sess.run(None, feed), ())}, threads=1, rounds=rounds,
                                 repeats=repeats)  # fmt: skip
        details["onnxruntime_ms"] = ort_ms
        ratios["latency_onnxruntime_fast_dcd_over_fast_static"] = ort_ms["dcd"] / ort_ms["static"]
    except Exception as e:
        details["onnxruntime_ms"] = f"skipped: {type(e).__name__}: {str(e).splitlines()[0][:200]}"
    print("bench: training steps, 2 threads …", flush=True)
    # Training step time, 2 threads.
    batch, tsize = (8, 96) if quick else (64, 224)
    gen = torch.Generator().manual_seed(0)
    xb = torch.randn(batch, 3, tsize, tsize, generator=gen)
    yb = torch.randint(0, 1000, (batch,), generator=gen)
    # DCD in its default "auto" form (stabilised training by per-sample synthesis where cheaper) and in the released
    # feature-wise form; DY-Conv / CondConv by kernel synthesis, their faster form here.
    cases = {}
    for name, kind, mode in (("static", "static", "featurewise"), ("dcd", "dcd", "auto"),
                             ("dcd_featurewise", "dcd", "featurewise"), ("dyconv", "dyconv", "synthesis"),
                             ("condconv", "condconv", "synthesis")):  # fmt: skip
        model = mobilenetv2(
            width_mult=width, cfg=DynamicConfig(kind=kind, mode=mode, fc_squeeze=16 if width >= 1 else 8)
        )
        cases[name] = (model, lambda: (xb, yb), F.cross_entropy)
    ips = compare_train_throughput(cases, threads=2, rounds=1 if quick else 3, steps=1 if quick else 2, warmup=1)
    step_ms = {k: 1000.0 * batch / v for k, v in ips.items()}
    details.update(train_step_ms=step_ms, train_batch=batch, train_size=tsize, threads_train=2)
    for other in ("static", "dyconv", "condconv"):
        ratios[f"train_step_dcd_over_{other}"] = step_ms["dcd"] / step_ms[other]
    ratios["train_step_dcd_featurewise_over_static"] = step_ms["dcd_featurewise"] / step_ms["static"]
    details["dcd_fastest_dynamic_train"] = step_ms["dcd"] < min(step_ms["dyconv"], step_ms["condconv"])
    seconds = time.perf_counter() - t0
    write_bench(run.path, package="dcd", ratios=ratios, details=details, seconds=seconds)
    for k, v in ratios.items():
        print(f"{k:<45} {v:.3f}")
    print(f"bench finished in {seconds:.1f} s → {run.path / 'bench.json'}")
    return {"ratios": ratios, "details": details}
