"""MicroNet and DCD-ResNet registered as segmentation-models-pytorch encoders and used as BDL's segmentation model M
for one adaptation step (Eq. 5.3: source segmentation + target pseudo labels + output-space adversarial loss) on the
embedded street scenes."""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest
import torch
from torch import nn

from bdl.adaptation import AdaptationConfig, OutputDiscriminator, adaptation_step, make_segmenter_optimizer
from bdl.data import IGNORE_INDEX, NUM_CLASSES, StreetScenes
from bdl.models import build_segmenter
from bdl.pseudo import PseudoLabeledTarget, generate_pseudo_labels
from dcd.segmentation import register_smp_encoders as register_dcd
from dyncore.training import seed_everything
from micronet.segmentation import register_smp_encoders as register_micronet

SIZE = (64, 128)


@pytest.fixture(scope="module")
def scenes() -> tuple[StreetScenes, StreetScenes]:
    """4 labelled synthetic (source) scenes and 4 real (target) scenes, cached under $DYNCORE_CACHE."""
    register_micronet()
    register_dcd()
    source = StreetScenes("synthetic", "train", num_images=4, size=SIZE, seed=0)
    target = StreetScenes("real", "train", num_images=4, size=SIZE, seed=0)
    return source, target


def _batch(ds: StreetScenes) -> tuple[torch.Tensor, torch.Tensor]:
    items = [ds[i] for i in range(len(ds))]
    return torch.stack([x for x, _ in items]), torch.stack([y for _, y in items])


def _snapshot(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.named_parameters()}


@pytest.mark.parametrize(
    ("segmenter", "encoder"),
    [
        ("deeplabv3plus", "micronet_m0"),
        ("deeplabv2", "dcd_resnet18"),  # BDL's own DeepLab-V2 head at output stride 8: dilated DCD layers
    ],
)
def test_one_bdl_adaptation_step_with_a_dynamic_encoder(
    segmenter: str, encoder: str, scenes: tuple[StreetScenes, StreetScenes], tmp_path: Path
) -> None:
    source, target = scenes
    seed_everything(0)
    model = build_segmenter(segmenter, encoder=encoder, num_classes=NUM_CLASSES)
    assert type(model.encoder).__name__ == f"{encoder}_encoder"
    x_s, y_s = _batch(source)
    assert model(x_s).shape == (4, NUM_CLASSES, *SIZE)

    # Self-training labels Ŷ_T for the target (Section 5.4.3), written and read back through BDL's dataset. An untrained
    # M is barely more confident than chance, so the threshold is 1/C (not the paper's 0.9).
    result = generate_pseudo_labels(model, target, tmp_path / "pseudo", threshold=1 / NUM_CLASSES, batch_size=4)
    assert 0.0 < result.pixel_ratio <= 1.0
    pseudo = PseudoLabeledTarget(target, result.folder)
    x_t, y_t = _batch(pseudo)  # type: ignore[arg-type]
    assert torch.equal(x_t, _batch(target)[0])
    assert ((y_t == IGNORE_INDEX) | ((y_t >= 0) & (y_t < NUM_CLASSES))).all()

    model.train()
    cfg = AdaptationConfig(lr=1e-3, ndf=8)
    disc = OutputDiscriminator(NUM_CLASSES, ndf=cfg.ndf)
    opt_m = make_segmenter_optimizer(model, cfg)
    opt_d = torch.optim.Adam(disc.parameters(), lr=cfg.d_lr, betas=cfg.d_betas)
    before_m, before_d = _snapshot(model.encoder), _snapshot(disc)

    losses = adaptation_step(model, disc, opt_m, opt_d, (x_s, y_s), (x_t, y_t), cfg)

    assert set(losses) == {"seg", "seg_pseudo", "adv", "d", "loss"}
    assert all(math.isfinite(v) for v in losses.values()), losses
    assert losses["seg"] > 0 and losses["d"] > 0
    # Eq. 5.3: ℓ_M = ℓ_seg(S') + ℓ_seg(T_st) + λ_adv·ℓ_adv
    assert losses["loss"] == pytest.approx(losses["seg"] + losses["seg_pseudo"] + cfg.lambda_adv * losses["adv"])
    after_m = dict(model.encoder.named_parameters())
    changed = [k for k, v in before_m.items() if not torch.equal(v, after_m[k].detach())]
    # DCD ResNets start each block's last BN at γ = 0 (zero_init_last, see dcd's README): at the first step nothing
    # upstream of it inside a residual branch gets a gradient (only weight decay moves those weights). Everything
    # else must move.
    branch = re.compile(r"stages\.\d(\.\d+)+\.(conv1\.|conv2\.conv\.)") if encoder.startswith("dcd_resnet") else None
    expected = [k for k in before_m if branch is None or not branch.match(k)]
    moved = [k for k in expected if k in changed]
    assert len(moved) >= 0.9 * len(expected), f"only {len(moved)}/{len(expected)} encoder tensors moved"
    for stage in range(5):
        assert any(k.startswith(f"stages.{stage}.") for k in changed), f"encoder stage {stage} did not move"
    after_d = dict(disc.named_parameters())
    assert all(not torch.equal(v, after_d[k].detach()) for k, v in before_d.items())
