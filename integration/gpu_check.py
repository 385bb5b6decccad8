"""Optional GPU check: every model forward/backward on CUDA with AMP, plus training throughput and batch-1 latency.

    python integration/gpu_check.py --out gpu.json [--batch 256] [--steps 20] [--models micronet_m0,dcd_mobilenetv2_050]

Without a CUDA device it says so and exits 0. Timings follow the issues' protocol: fp32 training at batch 256 on
224×224 (images/s, optimizer step included) and batch-1 eval latency, each model next to its static baseline, measured
in one run so the ratios compare like with like. The AMP pass (bf16 autocast) checks that every model runs and its
loss is finite under mixed precision.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

# (name, builder, baseline name or None). Builders import lazily so a missing package skips only its models.
BaselinePair = tuple[str, Callable[[], nn.Module], str | None]


def _timm(name: str, **kw: object) -> Callable[[], nn.Module]:
    def build() -> nn.Module:
        import timm

        for package in ("dcd", "micronet"):
            with contextlib.suppress(ImportError):
                __import__(package)
        return timm.create_model(name, pretrained=False, **kw)

    return build


def _drt_resnet50() -> nn.Module:
    import drt

    return drt.drt_resnet50(num_classes=1000)


def _resnet50() -> nn.Module:
    import torchvision

    return torchvision.models.resnet50(weights=None)


MODELS: list[BaselinePair] = [
    ("mobilenetv3_small_050", _timm("mobilenetv3_small_050"), None),
    ("micronet_m0", _timm("micronet_m0"), "mobilenetv3_small_050"),
    ("micronet_m1", _timm("micronet_m1"), "mobilenetv3_small_050"),
    ("micronet_m2", _timm("micronet_m2"), "mobilenetv3_small_050"),
    ("micronet_m3", _timm("micronet_m3"), "mobilenetv3_small_050"),
    ("dcd_mobilenetv2_050_static", _timm("dcd_mobilenetv2_050_static"), None),
    ("dcd_mobilenetv2_050", _timm("dcd_mobilenetv2_050"), "dcd_mobilenetv2_050_static"),
    ("dcd_mobilenetv2_050_dyconv", _timm("dcd_mobilenetv2_050_dyconv"), "dcd_mobilenetv2_050_static"),
    ("dcd_mobilenetv2_050_condconv", _timm("dcd_mobilenetv2_050_condconv"), "dcd_mobilenetv2_050_static"),
    ("resnet50", _resnet50, None),
    ("drt_resnet50", _drt_resnet50, "resnet50"),
]


def _sync() -> None:
    torch.cuda.synchronize()


def train_throughput(model: nn.Module, batch: int, steps: int, size: int) -> float:
    """fp32 images/s of SGD steps (forward, cross-entropy, backward, step) after 3 warm-up steps."""
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    x = torch.randn(batch, 3, size, size, device="cuda")
    y = torch.randint(0, 1000, (batch,), device="cuda")
    loss_fn = nn.CrossEntropyLoss()

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        loss_fn(model(x), y).backward()
        opt.step()

    for _ in range(3):
        step()
    _sync()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    _sync()
    return batch * steps / (time.perf_counter() - t0)


@torch.inference_mode()
def latency_ms(model: nn.Module, size: int, repeats: int = 50) -> float:
    model.eval()
    x = torch.randn(1, 3, size, size, device="cuda")
    for _ in range(10):
        model(x)
    times = []
    for _ in range(repeats):
        _sync()
        t0 = time.perf_counter()
        model(x)
        _sync()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def amp_step(model: nn.Module, size: int) -> float:
    """One bf16-autocast forward/backward; returns the loss (must be finite)."""
    model.train()
    x = torch.randn(8, 3, size, size, device="cuda")
    y = torch.randint(0, 1000, (8,), device="cuda")
    with torch.autocast("cuda", dtype=torch.bfloat16):
        loss = nn.functional.cross_entropy(model(x), y)
    loss.backward()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    if missing:
        raise RuntimeError(f"no gradient reached {len(missing)} parameters, e.g. {missing[:3]}")
    return float(loss)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("gpu_check.json"), help="JSON report path")
    parser.add_argument("--batch", type=int, default=256, help="training batch size (issues: 256)")
    parser.add_argument("--steps", type=int, default=20, help="timed training steps per model")
    parser.add_argument("--size", type=int, default=224, help="input resolution")
    parser.add_argument("--models", default="", help="comma-separated subset of model names (default: all)")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("gpu_check: no CUDA device here; nothing to check.")
        return 0
    torch.backends.cudnn.benchmark = True
    wanted = {m for m in args.models.split(",") if m}
    results: dict[str, dict[str, float | str]] = {}
    for name, build, _ in MODELS:
        if wanted and name not in wanted:
            continue
        try:
            model = build().cuda()
        except ImportError as err:
            results[name] = {"skipped": f"import failed: {err}"}
            continue
        row: dict[str, float | str] = {"amp_loss": amp_step(model, args.size)}
        row["train_img_s"] = train_throughput(model, args.batch, args.steps, args.size)
        row["latency_ms"] = latency_ms(model, args.size)
        results[name] = row
        print(f"{name:32s} amp_loss {row['amp_loss']:.3f}  train {row['train_img_s']:9.1f} img/s  "
              f"batch-1 {row['latency_ms']:6.2f} ms", flush=True)  # fmt: skip
        del model
        torch.cuda.empty_cache()
    ratios: dict[str, float] = {}
    for name, _, base in MODELS:
        if base and "train_img_s" in results.get(name, {}) and "train_img_s" in results.get(base, {}):
            ratios[f"{name}/{base}.train_throughput"] = float(results[name]["train_img_s"]) / float(
                results[base]["train_img_s"]
            )
            ratios[f"{name}/{base}.latency"] = float(results[name]["latency_ms"]) / float(results[base]["latency_ms"])
    report = {
        "device": torch.cuda.get_device_name(),
        "torch": torch.__version__,
        "batch": args.batch,
        "size": args.size,
        "results": results,
        "ratios": ratios,
    }
    args.out.write_text(json.dumps(report, indent=2))
    for key, value in ratios.items():
        print(f"{key:70s} {value:6.3f}")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
