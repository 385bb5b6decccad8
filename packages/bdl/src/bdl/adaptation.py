"""Segmentation adaptation model training: output-space adversarial learning + self-training (Eqs. 5.1, 5.3, 5.7–5.9).

ℓ_M = λ_adv·ℓ_adv(M(S'), M(T)) + ℓ_seg(M(S'), Y_S) + ℓ_seg(M(T_st), Ŷ_T)                          (Eq. 5.3)

- D_M (:class:`OutputDiscriminator`) sees softmax(M(x)) at full resolution; as in the released code, source is label 0
  and target label 1 under BCE-with-logits (Eq. 5.7). The segmentation step pushes D(softmax(M(T))) towards the source
  label; the D step trains on detached predictions: ½BCE(D(S'), 0) + ½BCE(D(T), 1).
- ℓ_seg: pixel cross-entropy with ignore label 255 (Eq. 5.8); on pseudo labels the unselected pixels are 255 (m_T = 0
  in Eq. 5.9).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from bdl.data.labels import IGNORE_INDEX

SOURCE_LABEL = 0.0
TARGET_LABEL = 1.0


class OutputDiscriminator(nn.Module):
    """D_M: five 4×4 stride-2 convs C→64→128→256→512→1, LeakyReLU(0.2) after the first four, no normalisation.

    (B, C, H, W) class probabilities → (B, 1, H/32, W/32) logits (source = 0, target = 1).
    """

    def __init__(self, num_classes: int, *, ndf: int = 64) -> None:
        super().__init__()
        chans = [num_classes, ndf, ndf * 2, ndf * 4, ndf * 8]
        layers: list[nn.Module] = []
        for cin, cout in itertools.pairwise(chans):
            layers += [nn.Conv2d(cin, cout, 4, stride=2, padding=1), nn.LeakyReLU(0.2, inplace=True)]
        layers.append(nn.Conv2d(chans[-1], 1, 4, stride=2, padding=1))
        self.model = nn.Sequential(*layers)
        self.num_classes = num_classes

    def forward(self, prob: torch.Tensor) -> torch.Tensor:
        if prob.ndim != 4 or prob.shape[1] != self.num_classes:
            raise ValueError(
                f"OutputDiscriminator expects (B, {self.num_classes}, H, W) probabilities, got {tuple(prob.shape)}"
            )
        return self.model(prob)


def adversarial_loss(logits: torch.Tensor, domain_label: float) -> torch.Tensor:
    """Eq. 5.7 as BCE-with-logits against a constant domain label (SOURCE_LABEL = 0, TARGET_LABEL = 1)."""
    return F.binary_cross_entropy_with_logits(logits, torch.full_like(logits, domain_label))


def segmentation_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """ℓ_seg (Eq. 5.8): pixel cross-entropy, label 255 ignored.  logits (B, C, H, W), labels (B, H, W) int64."""
    check_logits_labels(logits, labels)
    return F.cross_entropy(logits, labels, ignore_index=IGNORE_INDEX)


def pseudo_label_loss(
    logits: torch.Tensor, pseudo: torch.Tensor, *, normalize: Literal["selected", "all"] = "selected"
) -> torch.Tensor:
    """ℓ_seg(M(T_st), Ŷ_T) (Eq. 5.9): cross-entropy on selected pixels (Ŷ_T ≠ 255, i.e. m_T = 1).

    ``normalize="all"`` divides by H·W as Eq. 5.9 is written; ``"selected"`` (default) averages over selected pixels
    like the released code (CrossEntropy with ignore 255). With no selected pixel the loss is 0 (with a gradient path).
    """
    check_logits_labels(logits, pseudo)
    per_pixel = F.cross_entropy(logits, pseudo, ignore_index=IGNORE_INDEX, reduction="none")
    mask = pseudo != IGNORE_INDEX
    if normalize == "all":
        return per_pixel.sum() / pseudo.numel()
    if normalize != "selected":
        raise ValueError(f"normalize must be 'selected' or 'all', got {normalize!r}")
    return per_pixel.sum() / mask.sum().clamp_min(1)


def check_logits_labels(logits: torch.Tensor, labels: torch.Tensor) -> None:
    """Clear errors for a class-count or size mismatch between M's output and the label maps."""
    if logits.ndim != 4 or labels.ndim != 3:
        raise ValueError(
            f"expected logits (B, C, H, W) and labels (B, H, W), got {tuple(logits.shape)} and {tuple(labels.shape)}"
        )
    if logits.shape[-2:] != labels.shape[-2:] or logits.shape[0] != labels.shape[0]:
        raise ValueError(
            f"image/label size mismatch: model output {tuple(logits.shape)} vs labels {tuple(labels.shape)}"
        )
    valid = labels[labels != IGNORE_INDEX]
    if valid.numel() and (int(valid.max()) >= logits.shape[1] or int(valid.min()) < 0):
        raise ValueError(
            f"class-count mismatch: labels hold class id {int(valid.max())} but the model predicts "
            f"{logits.shape[1]} classes"
        )


@dataclass
class AdaptationConfig:
    """Optimisation of M and D_M (paper values for DeepLab-V2 ResNet-101 as defaults)."""

    lr: float = 2.5e-4
    # lr multiplier of the head (layers new to M); None: the model's own default (DeepLab-V2 ×10 on the ASPP
    # classifier as released; FCN-8s ×1: fc6/fc7 come from VGG16 and the released FCN-8s optimiser has one lr)
    head_lr_mult: float | None = None
    momentum: float = 0.9
    weight_decay: float = 5e-4
    poly_power: float = 0.9
    lr_policy: Literal["poly", "step"] = "poly"  # "step": ×step_gamma every step_size steps (FCN-8s setting)
    step_size: int = 5000
    step_gamma: float = 0.1
    optimizer: Literal["sgd", "adam"] = "sgd"
    lambda_adv: float = 1e-3
    d_lr: float = 1e-4
    d_betas: tuple[float, float] = (0.9, 0.99)
    ndf: int = 64
    pseudo_normalize: Literal["selected", "all"] = "selected"

    def __post_init__(self) -> None:
        from bdl.checks import check_choice, check_number

        self.d_betas = (float(self.d_betas[0]), float(self.d_betas[1]))  # a list after a JSON round trip
        check_number(self.lr, "lr", "--lr", low=0, low_open=True)
        if self.head_lr_mult is not None:
            check_number(self.head_lr_mult, "head_lr_mult", "--head-lr-mult", low=0, low_open=True)
        check_number(self.momentum, "momentum", None, low=0, high=1, high_open=True)
        check_number(self.weight_decay, "weight_decay", "--weight-decay", low=0)
        check_number(self.poly_power, "poly_power", None, low=0, low_open=True)
        check_choice(self.lr_policy, "lr_policy", "--lr-policy", ("poly", "step"))
        check_number(self.step_size, "step_size", None, low=1, integer=True)
        check_number(self.step_gamma, "step_gamma", None, low=0, high=1, low_open=True)
        check_choice(self.optimizer, "optimizer", "--optimizer", ("sgd", "adam"))
        check_number(self.lambda_adv, "lambda_adv", "--lambda-adv", low=0)
        check_number(self.d_lr, "d_lr", "--d-lr", low=0, low_open=True)
        for b in self.d_betas:
            check_number(b, "d_betas", None, low=0, high=1, high_open=True)
        check_number(self.ndf, "ndf", None, low=1, integer=True)
        check_choice(self.pseudo_normalize, "pseudo_normalize", None, ("selected", "all"))


def _head_parameters(model: nn.Module) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    """(backbone, head) parameters. The backbone is what ImageNet initialises: names starting with one of the model's
    ``backbone_prefixes`` (default ``("encoder.",)``: smp models and DeepLab-V2; FCN-8s: its VGG16 layers incl.
    fc6/fc7); the rest (decoder, classifier, score layers) is the head."""
    prefixes = tuple(getattr(model, "backbone_prefixes", ("encoder.",)))
    backbone: list[nn.Parameter] = []
    head: list[nn.Parameter] = []
    for name, p in model.named_parameters():
        (backbone if name.startswith(prefixes) else head).append(p)
    return backbone, head


def resolve_head_lr_mult(model: nn.Module, cfg: AdaptationConfig) -> float:
    """``cfg.head_lr_mult``, or the model's ``default_head_lr_mult`` (10, DeepLab's, when it declares none)."""
    if cfg.head_lr_mult is not None:
        return float(cfg.head_lr_mult)
    return float(getattr(model, "default_head_lr_mult", 10.0))


def make_segmenter_optimizer(model: nn.Module, cfg: AdaptationConfig) -> torch.optim.Optimizer:
    """SGD (momentum 0.9, wd 5e-4; head lr ×10 for DeepLab) or Adam (β (0.9, 0.99), FCN-8s setting) for M.

    Two parameter groups: backbone at ``cfg.lr`` and head at ``cfg.lr·head_lr_mult`` (see :func:`resolve_head_lr_mult`).
    """
    backbone, head = _head_parameters(model)
    mult = resolve_head_lr_mult(model, cfg)
    groups = [{"params": backbone, "lr": cfg.lr}, {"params": head, "lr": cfg.lr * mult}]
    groups = [g for g in groups if g["params"]]
    for g in groups:
        g["initial_lr"] = g["lr"]
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "adam":
        return torch.optim.Adam(groups, lr=cfg.lr, betas=(0.9, 0.99), weight_decay=cfg.weight_decay)
    raise ValueError(f"optimizer must be 'sgd' or 'adam', got {cfg.optimizer!r}")


def set_lr(optimizer: torch.optim.Optimizer, step: int, total: int, cfg: AdaptationConfig) -> None:
    """Learning-rate policy of M: DeepLab 'poly' (power 0.9) or FCN-8s 'step' (×0.1 every 5000 steps)."""
    if cfg.lr_policy == "poly":
        poly_lr(optimizer, step, total, cfg.poly_power)
    elif cfg.lr_policy == "step":
        for g in optimizer.param_groups:
            g["lr"] = g["initial_lr"] * cfg.step_gamma ** (step // max(cfg.step_size, 1))
    else:
        raise ValueError(f"lr_policy must be 'poly' or 'step', got {cfg.lr_policy!r}")


def poly_lr(optimizer: torch.optim.Optimizer, step: int, total: int, power: float = 0.9) -> None:
    """Set every group's lr to initial_lr·(1 − step/total)^power (DeepLab 'poly')."""
    factor = (1.0 - min(step, total) / max(total, 1)) ** power
    for g in optimizer.param_groups:
        g["lr"] = g["initial_lr"] * factor


def adaptation_step(
    model: nn.Module,
    discriminator: OutputDiscriminator | None,
    opt_m: torch.optim.Optimizer,
    opt_d: torch.optim.Optimizer | None,
    source: tuple[torch.Tensor, torch.Tensor],
    target: tuple[torch.Tensor, torch.Tensor | None] | None,
    cfg: AdaptationConfig,
) -> dict[str, float]:
    """One step of Eq. 5.3 (Eq. 5.1 when the target pseudo labels are ``None``; source-only when ``target`` is None).

    Args:
        source: (translated source images S' (B, 3, H, W), labels Y_S (B, H, W)).
        target: (target images T (B, 3, H, W), pseudo labels Ŷ_T (B, H, W) with 255 = unselected, or None).
    """
    x_s, y_s = source
    opt_m.zero_grad(set_to_none=True)
    use_adv = discriminator is not None and target is not None and cfg.lambda_adv > 0
    if discriminator is not None:
        for p in discriminator.parameters():
            p.requires_grad_(False)
    logits_s = model(x_s)
    loss_seg = segmentation_loss(logits_s, y_s)
    total = loss_seg
    out = {"seg": float(loss_seg.detach())}
    logits_t = None
    if target is not None:
        x_t, y_t = target
        logits_t = model(x_t)
        if y_t is not None:
            loss_st = pseudo_label_loss(logits_t, y_t, normalize=cfg.pseudo_normalize)
            total = total + loss_st
            out["seg_pseudo"] = float(loss_st.detach())
        if use_adv:
            assert discriminator is not None
            loss_adv = adversarial_loss(discriminator(F.softmax(logits_t, dim=1)), SOURCE_LABEL)
            total = total + cfg.lambda_adv * loss_adv
            out["adv"] = float(loss_adv.detach())
    total.backward()
    opt_m.step()
    if use_adv and discriminator is not None and opt_d is not None and logits_t is not None:
        for p in discriminator.parameters():
            p.requires_grad_(True)
        opt_d.zero_grad(set_to_none=True)
        d_s = discriminator(F.softmax(logits_s.detach(), dim=1))
        d_t = discriminator(F.softmax(logits_t.detach(), dim=1))
        loss_d = 0.5 * adversarial_loss(d_s, SOURCE_LABEL) + 0.5 * adversarial_loss(d_t, TARGET_LABEL)
        loss_d.backward()
        opt_d.step()
        out["d"] = float(loss_d.detach())
    out["loss"] = float(total.detach())
    return out
