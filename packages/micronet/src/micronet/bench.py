"""``micronet bench``: the Performance section of issue 5, measured side by side in one run.

* Batch-1, single-thread, 224×224 latency of M0–M3 and timm mobilenetv3_small_050/075/100, as ratios to
  mobilenetv3_small_050 (interleaved rounds, medians; :func:`dyncore.bench.compare_latency`):
  eager training form; the explicit inference form (:func:`micronet.reparameterize`) vs the eager baseline; and both
  exported to ONNX and run by onnxruntime (the same way for MicroNet and the baseline), when onnxruntime is installed.
  Also ``latency_fast_over_eager_<model>``: the inference form ÷ the eager model, timed interleaved in one run.
* Training throughput (images/s, batch 32, 224×224, 2 threads) as ratios to mobilenetv3_small_050, plus M3 with
  Dynamic Shift-Max ÷ M3 with ReLU6.
* With ``--device cuda``: GPU training throughput (batch 256, fp32) ratios, and M2 DSM ÷ M2 ReLU6.
* CPU latency is also reported for TorchScript (trace + freeze + ``optimize_for_inference``) applied to the inference
  forms and to the baseline alike.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

import timm
import torch
import torch.nn.functional as F
from torch import nn

from dyncore.bench import compare_latency, compare_train_throughput, ratios, tune_malloc
from dyncore.report import write_bench
from micronet.config import M3, with_relu
from micronet.deploy import optimize_torchscript, reparameterize
from micronet.model import MicroNet

__all__ = ["run_bench"]

MICRO = ("micronet_m0", "micronet_m1", "micronet_m2", "micronet_m3")
BASELINES = ("mobilenetv3_small_050", "mobilenetv3_small_075", "mobilenetv3_small_100")
BASE = "mobilenetv3_small_050"


def _progress(quick: bool, message: str) -> None:
    if quick:
        print(f"[micronet bench] {message}", flush=True)


def _ort_case(model: nn.Module, directory: Path, name: str, image_size: int) -> tuple[Any, tuple[Any, ...]] | None:
    try:
        import onnxruntime as ort
    except ImportError:  # optional dependency (micronet[export])
        return None
    from dyncore.export import export_onnx

    x = torch.randn(1, 3, image_size, image_size)
    report = export_onnx(
        model, directory / f"{name}.onnx", x, dynamo=False, input_names=("image",), output_names=("logits",)
    )
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    sess = ort.InferenceSession(str(report.path), opts, providers=["CPUExecutionProvider"])
    return (lambda a: sess.run(None, {"image": a}), (x.numpy(),))


def _gpu_training(device: str, quick: bool, image_size: int, details: dict[str, Any]) -> dict[str, float]:
    """GPU training throughput (batch 256, fp32) of M0/M2/M3 and M2 with ReLU6, ratios to mobilenetv3_small_050."""
    from micronet.config import M2

    batch = 32 if quick else 256
    xb = torch.randn(batch, 3, image_size, image_size, device=device)
    yb = torch.randint(0, 1000, (batch,), device=device)
    cases = {
        "micronet_m0": timm.create_model("micronet_m0"),
        "micronet_m2": timm.create_model("micronet_m2"),
        "micronet_m2_relu6": MicroNet(with_relu(M2)),
        "micronet_m3": timm.create_model("micronet_m3"),
        BASE: timm.create_model(BASE),
    }
    thr = compare_train_throughput(
        {n: (m.to(device), (lambda: (xb, yb)), F.cross_entropy) for n, m in cases.items()},
        threads=None,
        rounds=1 if quick else 3,
        steps=2 if quick else 10,
        warmup=2,
    )
    details.update({"gpu_train_images_per_s": thr, "gpu_train_batch": batch, "gpu": torch.cuda.get_device_name()})
    out = {f"gpu_train_throughput_{n}": v for n, v in ratios(thr, BASE).items() if n != BASE}
    out["gpu_train_throughput_m2_dsm_over_relu6"] = thr["micronet_m2"] / thr["micronet_m2_relu6"]
    return out


def run_bench(
    out: str | Path, *, quick: bool = False, image_size: int = 224, train_threads: int = 2, device: str = "cpu"
) -> dict[str, Any]:
    """Measure and write ``out/bench.json`` (dyncore.report.write_bench); returns ratios and details."""
    start = time.perf_counter()
    malloc_tuned = tune_malloc()  # large freed feature maps stay in the heap: no page faults on every allocation
    torch.manual_seed(0)
    rounds, repeats = (2, 3) if quick else (5, 10)
    _progress(quick, f"building {len(MICRO + BASELINES)} models")
    models = {n: timm.create_model(n).eval() for n in MICRO + BASELINES}
    x = torch.randn(1, 3, image_size, image_size)
    _progress(quick, "eager latency (batch 1, 1 thread)")
    eager = compare_latency({n: (m, (x,)) for n, m in models.items()}, threads=1, rounds=rounds, repeats=repeats)
    ratio: dict[str, float] = {f"latency_eager_{n}": v for n, v in ratios(eager, BASE).items() if n != BASE}

    _progress(quick, "explicit inference form (micronet.reparameterize) vs eager, interleaved")
    infer_cases: dict[str, tuple[nn.Module, tuple[torch.Tensor]]] = {
        f"{n}_inference": (reparameterize(models[n]), (x,)) for n in MICRO
    }
    infer_cases.update({f"{n}_eager": (models[n], (x,)) for n in MICRO})
    infer_cases[BASE] = (models[BASE], (x,))
    infer = compare_latency(infer_cases, threads=1, rounds=rounds, repeats=repeats)
    ratio.update({f"latency_{n}": v for n, v in ratios(infer, BASE).items() if n != BASE and "_eager" not in n})
    ratio.update({f"latency_fast_over_eager_{n}": infer[f"{n}_inference"] / infer[f"{n}_eager"] for n in MICRO})

    # TorchScript (trace + freeze + optimize_for_inference) for the inference forms AND the baseline
    # (their MKLDNN / ORT kernels run the two 1-D depthwise convs faster than the composed k×k one: not composed)
    _progress(quick, "TorchScript (trace + freeze + optimize_for_inference)")
    exported: dict[str, nn.Module] = {
        f"{n}_inference": reparameterize(models[n], compose_depthwise=False) for n in MICRO
    }
    exported[BASE] = models[BASE]
    jit_cases: dict[str, tuple[Any, tuple[torch.Tensor]]] = {}
    for name, model in exported.items():
        scripted = optimize_torchscript(model, x)
        jit_cases[f"{name}_jit"] = (scripted, (x,))
    jit = compare_latency(jit_cases, threads=1, rounds=rounds, repeats=repeats)
    ratio.update({f"latency_{n}": v for n, v in ratios(jit, f"{BASE}_jit").items() if n != f"{BASE}_jit"})

    details: dict[str, Any] = {
        "latency_jit_ms": jit,
        "latency_eager_ms": eager,
        "latency_inference_ms": infer,
        "image_size": image_size,
        "torch": torch.__version__,
        "threads_latency": 1,
        "malloc_tuned": malloc_tuned,
    }
    with tempfile.TemporaryDirectory() as tmp:
        _progress(quick, "ONNX Runtime (legacy exporter, checked against PyTorch)")
        ort_cases = {}
        for n in MICRO:
            case = _ort_case(exported[f"{n}_inference"], Path(tmp), n, image_size)
            if case is not None:
                ort_cases[f"{n}_ort"] = case
        base_case = _ort_case(models[BASE], Path(tmp), BASE, image_size)
        if base_case is not None and ort_cases:
            ort_cases[f"{BASE}_ort"] = base_case
            ort_ms = compare_latency(ort_cases, threads=1, rounds=rounds, repeats=repeats)
            ratio.update({f"latency_{n}": v for n, v in ratios(ort_ms, f"{BASE}_ort").items() if n != f"{BASE}_ort"})
            details["latency_ort_ms"] = ort_ms

    _progress(quick, "training throughput")
    batch = 8 if quick else 32
    xb, yb = torch.randn(batch, 3, image_size, image_size), torch.randint(0, 1000, (batch,))
    train_cases = {
        "micronet_m0": timm.create_model("micronet_m0"),
        "micronet_m3": timm.create_model("micronet_m3"),
        "micronet_m3_relu6": MicroNet(with_relu(M3)),
        BASE: timm.create_model(BASE),
    }
    thr = compare_train_throughput(
        {n: (m, (lambda: (xb, yb)), F.cross_entropy) for n, m in train_cases.items()},
        threads=train_threads,
        rounds=1 if quick else 2,
        steps=1 if quick else 3,
        warmup=1,
    )
    ratio.update({f"train_throughput_{n}": v for n, v in ratios(thr, BASE).items() if n != BASE})
    ratio["train_throughput_m3_dsm_over_relu6"] = thr["micronet_m3"] / thr["micronet_m3_relu6"]
    details.update({"train_images_per_s": thr, "train_batch": batch, "train_threads": train_threads, "quick": quick})
    if device.startswith("cuda"):
        ratio.update(_gpu_training(device, quick, image_size, details))
    seconds = time.perf_counter() - start
    path = write_bench(out, package="micronet", ratios=ratio, details=details, seconds=seconds)
    for k, v in ratio.items():
        print(f"{k:55s} {v:6.3f}")
    print(f"wrote {path} in {seconds:.1f}s")
    return {"ratios": ratio, "details": details}
