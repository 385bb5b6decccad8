from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from bdl.adaptation import AdaptationConfig
from bdl.pipeline import BDLConfig, BDLPipeline, algorithm2_stages, run_bdl
from bdl.translation import CycleGANConfig


class Killed(RuntimeError):
    pass


def tiny_config(**kw) -> BDLConfig:
    base = dict(
        K=1,
        N=1,
        seed=0,
        segmenter="deeplabv3plus",
        encoder="tu-mobilenetv3_small_050",
        adaptation=AdaptationConfig(lr=1e-3, optimizer="adam"),
        source_only_steps=3,
        seg_steps=3,
        seg_steps_st=4,
        batch_size=2,
        translation=CycleGANConfig(ngf=4, ndf=4, n_blocks=1, pool_size=2),
        translation_steps=3,
        translation_batch=2,
        perceptual_first_round=True,
        eval_batch=4,
        ckpt_every=2,
    )
    base.update(kw)
    return BDLConfig(**base)


@pytest.mark.quick
def test_algorithm2_stage_order():
    names = [s.name for s in algorithm2_stages(2, 2)]
    assert names == [
        "M0",
        "F1",
        "translate1",
        "M1_0",
        "pseudo1_1",
        "M1_1",
        "pseudo1_2",
        "M1_2",
        "F2",
        "translate2",
        "M2_0",
        "pseudo2_1",
        "M2_1",
        "pseudo2_2",
        "M2_2",
    ]
    assert [s.label for s in algorithm2_stages(1, 1) if s.kind == "adapt"] == ["M₀⁽¹⁾(F⁽¹⁾)", "M₁⁽¹⁾(F⁽¹⁾)"]


def test_killed_run_resumes_to_identical_weights(tiny_scenes, tmp_path):
    src, tgt, val = tiny_scenes
    cfg = tiny_config()
    rows_a = run_bdl(cfg, tmp_path / "a", source=src, target=tgt, val=val, log=lambda s: None)
    final_a = torch.load(tmp_path / "a" / "final_model.pt")["model"]

    kills = [("F1", 3), ("M1_1", 3)]  # die after step 3 of the translation stage, then of a self-training stage

    def hook(stage: str, step: int) -> None:
        if kills and (stage, step) == kills[0]:
            kills.pop(0)
            raise Killed(f"simulated kill in {stage} at step {step}")

    for expected in ("F1", "M1_1"):
        with pytest.raises(Killed, match=expected):
            run_bdl(cfg, tmp_path / "b", source=src, target=tgt, val=val, step_hook=hook, log=lambda s: None)
    manifest = json.loads((tmp_path / "b" / "manifest.json").read_text())
    assert "M1_0" in manifest["stages"] and "M1_1" not in manifest["stages"]
    rows_b = run_bdl(cfg, tmp_path / "b", source=src, target=tgt, val=val, step_hook=hook, log=lambda s: None)
    final_b = torch.load(tmp_path / "b" / "final_model.pt")["model"]
    assert final_a.keys() == final_b.keys()
    assert all(torch.equal(final_a[k], final_b[k]) for k in final_a)
    assert [r["miou19"] for r in rows_a] == [r["miou19"] for r in rows_b]
    assert [r["stage"] for r in rows_b] == ["M0", "M1_0", "M1_1"]
    r = rows_b[-1]
    assert len(r["iou"]) == 19 and {"miou16", "miou13", "pixel_ratio"} <= set(r)
    assert (tmp_path / "b" / "plots" / "qualitative_M1_1.png").is_file()
    assert (tmp_path / "b" / "stage_table.md").read_text().count("\n") == 5

    # resuming with a different config: clear error, nothing overwritten
    from dyncore.training import ConfigMismatchError

    before = {p: p.read_bytes() for p in (tmp_path / "b").rglob("*") if p.is_file()}
    with pytest.raises(ConfigMismatchError, match=r"bdl\.adaptation\.lr"):
        run_bdl(
            tiny_config(adaptation=AdaptationConfig(lr=5e-3, optimizer="adam")),
            tmp_path / "b",
            source=src,
            target=tgt,
            val=val,
            log=lambda s: None,
        )
    after = {p: p.read_bytes() for p in (tmp_path / "b").rglob("*") if p.is_file()}
    assert before == after


@pytest.mark.quick
def test_class_count_mismatch_between_model_and_data_is_refused(tiny_scenes, tmp_path):
    src, tgt, val = tiny_scenes
    with pytest.raises(ValueError, match="M predicts 5 classes but the source data set has 19"):
        run_bdl(tiny_config(num_classes=5), tmp_path, source=src, target=tgt, val=val)
    assert not (tmp_path / "manifest.json").exists()


def test_translation_crop_is_random_and_validated():
    from bdl.pipeline import random_crop

    torch.manual_seed(0)
    x = torch.arange(2 * 3 * 8 * 12, dtype=torch.float32).view(2, 3, 8, 12)
    crops = [random_crop(x, 4) for _ in range(6)]
    assert all(c.shape == (2, 3, 4, 4) for c in crops)
    assert len({float(c[0, 0, 0, 0]) for c in crops}) > 1
    assert random_crop(x, 16).shape == (2, 3, 8, 12)
    with pytest.raises(ValueError, match=r"translation_crop \(--translation-crop\) must be a multiple of 4"):
        tiny_config(translation_crop=30)
    with pytest.raises(ValueError, match="at least 24"):  # smaller crops leave the 3-layer PatchGAN no patch
        tiny_config(translation_crop=20)


# ---------------------------------------------------------------- kill anywhere (issue 14.1)
class HardKill(BaseException):
    """Like SIGKILL/KeyboardInterrupt: nothing in the pipeline may catch it."""


def _scramble_rngs(n: int) -> None:
    random.seed(1000 + n)
    np.random.seed(1000 + n)
    torch.manual_seed(1000 + n)


def _stage_models(run_dir: Path) -> dict[str, dict[str, torch.Tensor]]:
    out = {}
    for ckpt in sorted((run_dir / "checkpoints").glob("*/last.pt")):
        out[ckpt.parent.name] = torch.load(ckpt, weights_only=True)["model"]
    return out


def _assert_equal_states(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], what: str) -> None:
    assert a.keys() == b.keys(), what
    differ = [k for k in a if not torch.equal(a[k], b[k])]
    assert not differ, f"{what}: {len(differ)} of {len(a)} tensors differ, e.g. {differ[:3]}"


@pytest.mark.slow
def test_resume_is_bit_identical_after_a_kill_at_every_stage_boundary_and_inside_the_first_checkpoint_write(
    tiny_scenes, tmp_path, monkeypatch
):
    import dyncore.training.checkpoint as ckpt_module

    src, tgt, val = tiny_scenes
    cfg = tiny_config()  # K = 1, N = 1, ckpt_every = 2: each training stage's first checkpoint is at step 2
    quiet = {"source": src, "target": tgt, "val": val, "log": lambda s: None}
    run_bdl(cfg, tmp_path / "a", **quiet)
    reference = torch.load(tmp_path / "a" / "final_model.pt", weights_only=True)["model"]
    reference_stages = _stage_models(tmp_path / "a")

    stages = algorithm2_stages(cfg.K, cfg.N)
    training = [s.name for s in stages if s.kind in ("source_only", "translation", "adapt")]
    # kill points in the order an uninterrupted run reaches them
    pending: list[tuple[str, str]] = []
    for s in stages:
        if s.name in training:
            pending += [("step1", s.name), ("first_write", s.name)]
        pending.append(("boundary", s.name))  # the stage is recorded done, the next one has not started

    def step_hook(stage: str, step: int) -> None:
        if pending and pending[0] == ("step1", stage) and step == 1:
            pending.pop(0)
            raise HardKill(f"before the first checkpoint of {stage}")

    real_save = ckpt_module.atomic_torch_save

    def torn_save(path, obj):  # SIGKILL inside the write: half a temporary file is left, the target never appears
        path = Path(path)
        if pending and pending[0] == ("first_write", path.parent.name) and not path.exists():
            pending.pop(0)
            real_save(path.with_name("full.bin"), obj)
            data = path.with_name("full.bin").read_bytes()
            path.with_name("full.bin").unlink()
            path.with_name(f".{path.name}.killed.tmp").write_bytes(data[: len(data) // 2])
            raise HardKill(f"inside the first checkpoint write of {path.parent.name}")
        return real_save(path, obj)

    real_manifest = BDLPipeline._save_manifest

    def manifest_then_kill(self, manifest):
        real_manifest(self, manifest)
        if pending and pending[0][0] == "boundary" and pending[0][1] in manifest["stages"]:
            name = pending.pop(0)[1]
            raise HardKill(f"after stage {name}")

    monkeypatch.setattr(ckpt_module, "atomic_torch_save", torn_save)
    monkeypatch.setattr(BDLPipeline, "_save_manifest", manifest_then_kill)
    kills = []
    for n in range(len(pending) + 1):
        _scramble_rngs(n)  # a fresh process: a resume must not lean on RNG state the killed run left behind
        try:
            run_bdl(cfg, tmp_path / "b", step_hook=step_hook, **quiet)
            break
        except HardKill as exc:
            kills.append(str(exc))
    assert not pending and len(kills) == 3 * len(training) + (len(stages) - len(training)), kills

    for name, state in reference_stages.items():
        _assert_equal_states(state, _stage_models(tmp_path / "b")[name], f"stage {name}")
    final = torch.load(tmp_path / "b" / "final_model.pt", weights_only=True)["model"]
    _assert_equal_states(reference, final, "final model")
    assert not list((tmp_path / "b").rglob("*.tmp")), "a killed write's temporary file was left behind"
