"""Issue 14 (bdl parts): bad values fail up front naming their flag, real-data sizes and scoring, head lr per model,
--register honoured, non-finite losses stopped before a checkpoint, run-directory hygiene."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from bdl.adaptation import AdaptationConfig, make_segmenter_optimizer
from bdl.cli import main
from bdl.pipeline import BDLConfig, BDLPipeline, algorithm2_stages, run_bdl, train_segmenter
from bdl.translation import CycleGANConfig


def _cli(argv: list[str]) -> int:
    with pytest.raises(SystemExit) as exc:
        main(argv)
    return int(exc.value.code or 0)


# a bdl run that finishes in seconds (K = 1, N = 0: M0, F1, translate1, M1_0)
TINY_RUN = [
    "--size", "32", "64", "--num-source", "4", "--num-target", "4", "--num-val", "2",
    "--model", "deeplabv3plus", "--encoder", "tu-mobilenetv3_small_050",
    "--K", "1", "--N", "0", "--source-only-steps", "1", "--seg-steps", "1", "--seg-steps-st", "1",
    "--translation-steps", "1", "--ngf", "4", "--ndf", "4", "--n-blocks", "1", "--translation-batch", "2",
    "--batch-size", "2", "--optimizer", "adam", "--lr", "1e-3", "--device", "cpu",
]  # fmt: skip


@pytest.fixture
def offline_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("DYNCORE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("DYNCORE_NO_PROGRESS", "1")


# ------------------------------------------------------------------------------------ flags validated up front
@pytest.mark.quick
@pytest.mark.parametrize(
    ("field", "value", "flag"),
    [
        ("pseudo_threshold", 1.5, "--pseudo-threshold"),
        ("pseudo_threshold", 0.0, "--pseudo-threshold"),
        ("K", 0, "--K"),
        ("N", -1, "--N"),
        ("batch_size", 0, "--batch-size"),
        ("translation_batch", 0, "--translation-batch"),
        ("seg_steps", -3, "--seg-steps"),
        ("ckpt_every", 0, "--ckpt-every"),
        ("seed", -1, "--seed"),
        ("segmenter", "pspnet", "--model"),
        ("register", ["no_such_module_xyz:f"], "--register"),
    ],
)
def test_every_bdl_config_value_is_validated_naming_its_flag(field, value, flag):
    with pytest.raises(ValueError, match=flag):
        BDLConfig(**{field: value})


@pytest.mark.quick
@pytest.mark.parametrize(
    ("kw", "flag"),
    [({"lr": math.nan}, "--lr"), ({"lr": 0.0}, "--lr"), ({"weight_decay": -1.0}, "--weight-decay"),
     ({"d_lr": math.inf}, "--d-lr"), ({"lambda_adv": -1e-3}, "--lambda-adv"), ({"optimizer": "rmsprop"}, "--optimizer"),
     ({"head_lr_mult": 0.0}, "--head-lr-mult")],
)  # fmt: skip
def test_optimisation_values_are_validated_naming_their_flag(kw, flag):
    with pytest.raises(ValueError, match=flag):
        AdaptationConfig(**kw)


@pytest.mark.quick
def test_translation_values_are_validated():
    with pytest.raises(ValueError, match="--n-blocks"):
        CycleGANConfig(n_blocks=-1)
    with pytest.raises(ValueError, match="--translation-lr"):
        CycleGANConfig(lr=math.nan)


def test_bad_pseudo_threshold_fails_before_the_first_stage_and_writes_nothing(tmp_path, capsys, offline_cache):
    out = tmp_path / "run"
    # N = 1: the threshold is first used by the pseudo-label stage, after M0, F1, translate1 and M1_0
    assert _cli(["run", *TINY_RUN, "--N", "1", "--pseudo-threshold", "1.5", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "--pseudo-threshold" in err and "Traceback" not in err
    assert not out.exists()


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--batch-size", "8"], "--batch-size 8 is larger than the source data set (4 images)"),
        (["--translation-batch", "5"], "--translation-batch 5 is larger than the source data set"),
        (["--size", "16", "40"], "--source-size: the source images are 16×40 but the segmentation model M"),
        (
            ["--size", "16", "32"],
            "16×32 but the translation model F needs sides that are multiples of 4 and at least 24",
        ),
        (
            ["--size", "24", "48", "--model", "deeplabv2", "--encoder", "resnet18"],
            "target images are 24×48 but the output-space discriminator D_M needs a height and width of at least",
        ),
        (["--encoder", "no_such_encoder"], "--encoder 'no_such_encoder' is not a known encoder; known: "),
    ],
)
def test_data_and_model_problems_fail_up_front_with_the_flag(tmp_path, capsys, offline_cache, extra, message):
    out = tmp_path / "run"
    assert _cli(["run", *TINY_RUN, *extra, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and "internal error" not in err
    assert not out.exists()


@pytest.mark.quick
def test_unknown_encoder_is_a_usage_error_listing_known_encoders():
    from bdl.models import build_segmenter
    from dyncore.cli import UsageError

    with pytest.raises(UsageError, match=r"--encoder 'resnet1O1' is not a known encoder; known: .*resnet101"):
        build_segmenter("deeplabv2", encoder="resnet1O1")
    with pytest.raises(UsageError, match="timm has no model 'not_a_timm_net'"):
        build_segmenter("unet", encoder="tu-not_a_timm_net")


def test_train_batch_larger_than_data_and_images_below_stride_are_refused(tiny_scenes, tmp_path):
    from bdl.models import build_segmenter
    from dyncore.training import Checkpointer

    src = tiny_scenes[0]  # 8 images of 32×64
    model = build_segmenter("deeplabv3plus", encoder="tu-mobilenetv3_small_050")
    ckpt = Checkpointer(tmp_path / "c", {})
    with pytest.raises(ValueError, match="--batch-size 9 is larger than the source data set"):
        train_segmenter(model, src, None, steps=1, cfg=AdaptationConfig(), checkpointer=ckpt, batch_size=9)
    dl = build_segmenter("deeplabv2", encoder="resnet18")
    small = torch.utils.data.TensorDataset(torch.zeros(2, 3, 4, 64), torch.zeros(2, 4, 64, dtype=torch.long))
    with pytest.raises(ValueError, match=r"4×64 but the segmentation model M \(deeplabv2\) needs .* its stride 8"):
        train_segmenter(dl, small, None, steps=1, cfg=AdaptationConfig(), checkpointer=ckpt)
    assert not (tmp_path / "c").exists()


# --------------------------------------------------------------------------------------------- non-finite loss
class _NaNImages(torch.utils.data.Dataset):
    """A data set whose images hold a NaN pixel: every loss on it is NaN."""

    def __init__(self, base) -> None:
        self.base, self.names, self.num_classes = base, base.names, base.num_classes

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i: int):
        x, y = self.base[i]
        x = x.clone()
        x[0, 0, 0] = math.nan
        return x, y


def test_non_finite_loss_stops_before_any_checkpoint_naming_the_lr_flag(tiny_scenes, tmp_path):
    from dyncore.training import NonFiniteError

    src, tgt, val = tiny_scenes
    cfg = BDLConfig(
        K=1, N=0, segmenter="deeplabv3plus", encoder="tu-mobilenetv3_small_050",
        adaptation=AdaptationConfig(lr=1e-3, optimizer="adam"), source_only_steps=3, seg_steps=1, batch_size=2,
        translation=CycleGANConfig(ngf=4, ndf=4, n_blocks=1), translation_steps=1, translation_batch=2,
        ckpt_every=1,
    )  # fmt: skip
    with pytest.raises(NonFiniteError, match=r"M0: loss term 'seg' at step 1 is nan; lower --lr \(now 0.001\)"):
        run_bdl(cfg, tmp_path, source=_NaNImages(src), target=tgt, val=val, log=lambda s: None)
    assert not (tmp_path / "checkpoints" / "M0").exists()  # ckpt_every = 1: the NaN step's weights were not saved
    assert not (tmp_path / "final_model.pt").exists()


def test_non_finite_translation_loss_names_the_translation_lr_flag(tiny_scenes, tmp_path):
    from bdl.pipeline import train_translation
    from dyncore.training import Checkpointer, NonFiniteError

    src, tgt, _ = tiny_scenes
    ckpt = Checkpointer(tmp_path / "F", {})
    config = CycleGANConfig(ngf=4, ndf=4, n_blocks=1, pool_size=2, lr=1e-3)
    with pytest.raises(
        NonFiniteError, match=r"F1: loss term .* at step 1 is nan; lower --translation-lr \(now 0.001\)"
    ):
        train_translation(
            _NaNImages(src), tgt, config, steps=2, checkpointer=ckpt, batch_size=2, ckpt_every=1, name="F1"
        )
    assert not ckpt.exists()


def test_cli_non_finite_loss_exits_2_without_a_model(tmp_path, capsys, offline_cache, monkeypatch):
    import bdl.cli
    from bdl.data import StreetScenes

    class NaNScenes(StreetScenes):
        def __getitem__(self, i):
            x, y = super().__getitem__(i)
            x[0, 0, 0] = math.nan
            return x, y

    monkeypatch.setattr(bdl.cli, "StreetScenes", NaNScenes)
    out = tmp_path / "seg"
    argv = ["train-seg", "--size", "32", "64", "--num-source", "4", "--num-target", "4", "--num-val", "2",
            "--model", "unet", "--encoder", "tu-mobilenetv3_small_050", "--steps", "2", "--ckpt-every", "1",
            "--lr", "0.01", "--out", str(out), "--device", "cpu"]  # fmt: skip
    assert _cli(argv) == 2
    err = capsys.readouterr().err
    assert "loss term 'seg' at step 1 is nan; lower --lr (now 0.01)" in err and "Traceback" not in err
    assert not (out / "model.pt").exists() and not list((out / "checkpoints").glob("*.pt"))


# ------------------------------------------------------------------------------------- head lr multiplier per model
@pytest.mark.quick
def test_fcn8s_gets_one_lr_and_deeplab_a_10x_head_unless_told_otherwise():
    from bdl.models import build_segmenter

    with torch.device("meta"):  # parameter groups only: no need to allocate VGG16
        fcn = build_segmenter("fcn8s", encoder="vgg16", fc_channels=8)
    groups = make_segmenter_optimizer(fcn, AdaptationConfig(lr=1e-5, optimizer="adam")).param_groups
    assert [g["lr"] for g in groups] == [1e-5, 1e-5]
    by_id = {id(p): g["lr"] for g in groups for p in g["params"]}
    # with an explicit ×10, only the new score layers get it: fc6/fc7 are VGG16's (ImageNet) layers
    groups10 = make_segmenter_optimizer(fcn, AdaptationConfig(lr=1e-5, head_lr_mult=10.0)).param_groups
    lr10 = {id(p): g["lr"] for g in groups10 for p in g["params"]}
    for name, p in fcn.named_parameters():
        assert by_id[id(p)] == 1e-5
        expected = 1e-4 if name.startswith("score") else 1e-5
        assert lr10[id(p)] == pytest.approx(expected), name
    dl = build_segmenter("deeplabv2", encoder="resnet18", num_classes=5)
    groups = make_segmenter_optimizer(dl, AdaptationConfig(lr=2.5e-4)).param_groups
    head = {id(p) for p in dl.classifier.parameters()}
    for g in groups:
        expected = 2.5e-3 if {id(p) for p in g["params"]} == head else 2.5e-4
        assert g["lr"] == pytest.approx(expected)
    assert len(groups) == 2


# ------------------------------------------------------------------------------------------------ --register
_ENCODER_MODULE = """
from torch import nn
from dyncore.segmentation import register_smp_encoder

CHANNELS = [3, 8, 8, 16, 16, 24]


def _stages():
    return [
        nn.Sequential(nn.Conv2d(a, b, 3, stride=2, padding=1), nn.BatchNorm2d(b), nn.ReLU())
        for a, b in zip(CHANNELS, CHANNELS[1:])
    ]


def register():
    register_smp_encoder("{name}", _stages, CHANNELS)
"""


def test_run_honours_register_with_an_encoder_from_another_module(tmp_path, capsys, offline_cache, monkeypatch):
    import segmentation_models_pytorch as smp

    name = "bdltest_tiny_run_encoder"
    assert name not in smp.encoders.encoders
    (tmp_path / "bdltest_encoders.py").write_text(_ENCODER_MODULE.format(name=name))
    monkeypatch.syspath_prepend(str(tmp_path))
    out = tmp_path / "run"
    args = ["run", *TINY_RUN, "--encoder", name, "--register", "bdltest_encoders:register", "--out", str(out)]
    try:
        assert _cli(args) == 0, capsys.readouterr().err
        final = torch.load(out / "final_model.pt", weights_only=True)["model"]
        assert final["encoder.stages.4.0.weight"].shape == (24, 16, 3, 3)  # the registered encoder's last stage
        assert json.loads((out / "config.json").read_text())["register"] == ["bdltest_encoders:register"]
    finally:
        smp.encoders.encoders.pop(name, None)


# ---------------------------------------------------------------------------- real data: sizes and scoring
def _png(path: Path, arr: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)


@pytest.mark.quick
def test_real_data_keeps_its_aspect_ratio_and_validation_labels_stay_full_resolution(tmp_path):
    from bdl.data import cityscapes, gta5, resized_shape

    assert resized_shape(1052, 1914, 1024) == (560, 1024)  # GTA5 at the thesis' long side 1024
    assert resized_shape(1024, 2048, 1024) == (512, 1024)  # Cityscapes
    _png(tmp_path / "gta" / "images" / "a.png", np.full((60, 100, 3), 90, np.uint8))
    _png(tmp_path / "gta" / "labels" / "a.png", np.full((60, 100), 7, np.uint8))
    x, y = gta5(tmp_path / "gta", size=50)[0]
    assert x.shape == (3, 32, 50) and y.shape == (32, 50)  # 60×100 → long side 50, short 30 → 32 (multiple of 8)
    cs = tmp_path / "cs"
    _png(cs / "leftImg8bit" / "val" / "c" / "c_1_leftImg8bit.png", np.full((64, 128, 3), 90, np.uint8))
    _png(cs / "gtFine" / "val" / "c" / "c_1_gtFine_labelIds.png", np.full((64, 128), 26, np.uint8))
    x, y = cityscapes(cs, "val", size=64, full_res_labels=True)[0]
    assert x.shape == (3, 32, 64) and y.shape == (64, 128) and int(y[0, 0]) == 13
    # the resize is part of the run identity: a run directory refuses to resume with another --source-size
    from bdl.pipeline import dataset_identity

    assert dataset_identity(gta5(tmp_path / "gta", size=50)) != dataset_identity(gta5(tmp_path / "gta", size=100))


def test_cli_gives_source_and_target_their_own_sizes(tmp_path):
    import argparse

    from bdl.cli import load_data

    for i in range(2):
        _png(tmp_path / "gta" / "images" / f"{i}.png", np.full((60, 100, 3), 90, np.uint8))
        _png(tmp_path / "gta" / "labels" / f"{i}.png", np.full((60, 100), 7, np.uint8))
    ns = argparse.Namespace(
        source="gta5", source_root=tmp_path / "gta", num_source=2, source_size=[50], target="scenes",
        target_root=None, num_target=2, num_val=2, target_split="train", val_split="val", target_size=[32, 64],
        size=None, cache=tmp_path / "cache",
    )  # fmt: skip
    src, tgt, val = load_data(ns)
    assert src[0][0].shape == (3, 32, 50) and tgt[0][0].shape == (3, 32, 64) and val[0][1].shape == (32, 64)
    ns.source_size = None  # per-dataset default: GTA5 at a long side of 1024, aspect kept
    src, _, _ = load_data(ns)
    assert src[0][0].shape == (3, 616, 1024)  # 60×100 → 614.4 → 616
    ns.size = [32, 64]
    ns.target = "cityscapes"
    from dyncore.cli import UsageError

    with pytest.raises(UsageError, match="--size sets the size of embedded scenes"):
        load_data(ns)


@pytest.mark.quick
def test_scores_are_computed_at_the_labels_own_resolution(tmp_path):
    from bdl.evaluation import evaluate
    from dyncore.training import ConfusionMatrix

    torch.manual_seed(0)
    model = nn.Conv2d(3, 4, 1)
    images = torch.randn(3, 3, 8, 16)
    labels = torch.randint(0, 4, (3, 16, 32))  # labels at twice the image resolution
    scores = evaluate(model, torch.utils.data.TensorDataset(images, labels), num_classes=4, batch_size=2)
    cm = ConfusionMatrix(4)
    with torch.no_grad():
        up = nn.functional.interpolate(model(images), size=(16, 32), mode="bilinear", align_corners=False)
    cm.update(up.argmax(1), labels)
    assert scores.miou19 == pytest.approx(cm.miou() * 100)
    from bdl.evaluation import save_qualitative

    png = save_qualitative(model, torch.utils.data.TensorDataset(images, labels), tmp_path / "q.png", indices=(0, 1))
    w, h = Image.open(png).size
    assert w == 4 * h  # 2 rows of 4 panels of 8×16 (the truth shown at the image's size, not the label's)
    wide = torch.utils.data.TensorDataset(images, torch.randint(0, 4, (3, 16, 16)))  # another field of view
    with pytest.raises(ValueError, match="different aspect ratios"):
        evaluate(model, wide, num_classes=4)


# --------------------------------------------------------------------------------------- run directory hygiene
def test_config_json_is_replaced_when_stale_and_kept_when_a_resume_is_refused(tmp_path, capsys, offline_cache):
    out = tmp_path / "run"
    out.mkdir()
    (out / "config.json").write_text('{"stale": true}')  # left by a run that failed before its first checkpoint
    (out / ".manifest.json.x1y2.tmp").write_text("{")  # a killed atomic write
    (out / "translated").mkdir()
    (out / "translated" / ".k1.ab12.tmp").mkdir()  # a killed atomic directory
    assert _cli(["run", *TINY_RUN, "--out", str(out)]) == 0, capsys.readouterr().err
    config = json.loads((out / "config.json").read_text())
    assert "stale" not in config and config["adaptation"]["lr"] == 1e-3
    assert not list(out.rglob("*.tmp"))
    before = (out / "config.json").read_bytes()
    assert _cli(["run", *TINY_RUN, "--lr", "5e-3", "--out", str(out)]) == 2
    assert "config differs" in capsys.readouterr().err
    assert (out / "config.json").read_bytes() == before


def test_train_seg_stale_config_is_replaced_after_the_resume_check(tmp_path, capsys, offline_cache):
    out = tmp_path / "seg"
    out.mkdir()
    (out / "config.json").write_text('{"stale": true}')
    argv = ["train-seg", "--size", "32", "64", "--num-source", "4", "--num-target", "4", "--num-val", "2",
            "--model", "unet", "--encoder", "tu-mobilenetv3_small_050", "--steps", "1", "--lr", "1e-3",
            "--out", str(out), "--device", "cpu"]  # fmt: skip
    assert _cli(argv) == 0
    assert json.loads((out / "config.json").read_text())["lr"] == 1e-3


def test_pretrained_is_the_initial_weights_flag_and_weights_its_alias(tmp_path, capsys, offline_cache):
    from bdl.models import build_segmenter

    torch.manual_seed(3)
    init = build_segmenter("unet", encoder="tu-mobilenetv3_small_050")
    torch.save(init.state_dict(), tmp_path / "init.pth")
    base = ["train-seg", "--size", "32", "64", "--num-source", "2", "--num-target", "2", "--num-val", "2",
            "--model", "unet", "--encoder", "tu-mobilenetv3_small_050", "--steps", "0", "--device", "cpu"]  # fmt: skip
    for flag in ("--pretrained", "--weights"):
        out = tmp_path / flag.strip("-")
        assert _cli([*base, flag, str(tmp_path / "init.pth"), "--out", str(out)]) == 0
        saved = torch.load(out / "model.pt", weights_only=True)["model"]
        assert all(torch.equal(saved[k], v) for k, v in init.state_dict().items())
    assert _cli(["train-seg", "--help"]) == 0
    assert "--pretrained PRETRAINED, --weights PRETRAINED" in capsys.readouterr().out


@pytest.mark.quick
def test_every_stage_kind_has_a_handler(tiny_scenes, tmp_path):
    src, tgt, val = tiny_scenes
    cfg = BDLConfig(K=1, N=1, segmenter="unet", encoder="tu-mobilenetv3_small_050", batch_size=2, translation_batch=2)
    pipeline = BDLPipeline(cfg, tmp_path / "r", source=src, target=tgt, val=val)
    assert set(pipeline.handlers) == {s.kind for s in algorithm2_stages(2, 2)}
    assert not (tmp_path / "r").exists()  # building (and validating) a pipeline writes nothing


def test_eval_refuses_a_checkpoint_with_non_finite_weights(tmp_path, capsys, offline_cache):
    from bdl.models import build_segmenter

    model = build_segmenter("unet", encoder="tu-mobilenetv3_small_050")
    state = model.state_dict()
    state["segmentation_head.0.weight"][0] = math.nan
    torch.save({"model": state}, tmp_path / "nan.pt")
    argv = ["eval", "--size", "32", "64", "--num-target", "2", "--num-val", "2", "--model", "unet",
            "--encoder", "tu-mobilenetv3_small_050", "--checkpoint", str(tmp_path / "nan.pt"),
            "--out", str(tmp_path / "ev"), "--device", "cpu"]  # fmt: skip
    assert _cli(argv) == 2
    err = capsys.readouterr().err
    assert "nan.pt: tensor 'segmentation_head.0.weight' holds NaN or infinite values" in err
    assert not (tmp_path / "ev" / "eval.json").exists()
