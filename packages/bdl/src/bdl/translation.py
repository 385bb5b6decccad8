"""Image translation model F: S → T and F⁻¹: T → S (CycleGAN, Zhu et al. 2017) with BDL's perceptual loss.

Thesis Section 5.3.3, Eqs. 5.2 and 5.4–5.6; spec/bdl.md "Models" and "Losses":

- generators: ResNet generator (7×7 conv, two stride-2 downsamplings, ``n_blocks`` residual blocks (9), two
  transposed-conv upsamplings, 7×7 conv, tanh), instance norm without affine, reflection padding, ngf 64;
- discriminators: 70×70 PatchGAN with 3 layers (ndf 64), LSGAN (MSE) objective, image pool of 50 (Shrivastava et al.);
- ℓ_F = λ_GAN[ℓ_GAN(S', T) + ℓ_GAN(S, T')] + λ_recon[‖F⁻¹(F(S)) − S‖₁ + ‖F(F⁻¹(T)) − T‖₁]
  + λ_idt·[‖F(T) − T‖₁ + ‖F⁻¹(S) − S‖₁] + ℓ_per(M(S), M(S')) + ℓ_per(M(T), M(T'))            (Eq. 5.2)
- ℓ_per(M(S), M(S')) = λ_per·d(M(S), M(F(S))) + λ_per_recon·d(M(F⁻¹(F(S))), M(S)), symmetric for T    (Eq. 5.6)
  with d = MSE between instance-normalised (no affine) logits of the frozen M (eval mode) at 1/8 resolution, as in
  the released code (the thesis writes an L1 norm).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


# ------------------------------------------------------------------------------------------------------ networks
class ResnetBlock(nn.Module):
    """x + [ReflPad → Conv3×3 → IN → ReLU → ReflPad → Conv3×3 → IN](x).  (B, C, H, W) → (B, C, H, W)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.ReflectionPad2d(1),
            nn.Conv2d(channels, channels, 3),
            nn.InstanceNorm2d(channels),
            nn.ReLU(inplace=True),
            nn.ReflectionPad2d(1),
            nn.Conv2d(channels, channels, 3),
            nn.InstanceNorm2d(channels),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class ResnetGenerator(nn.Module):
    """CycleGAN ResNet generator.  (B, 3, H, W) in [-1, 1] → (B, 3, H, W) in [-1, 1]; H, W divisible by 4.

    Args:
        ngf: filters of the first layer (64 in the paper).
        n_blocks: residual blocks at 1/4 resolution (9 in the paper).
    """

    def __init__(self, in_channels: int = 3, out_channels: int = 3, *, ngf: int = 64, n_blocks: int = 9) -> None:
        super().__init__()
        layers: list[nn.Module] = [
            nn.ReflectionPad2d(3),
            nn.Conv2d(in_channels, ngf, 7),
            nn.InstanceNorm2d(ngf),
            nn.ReLU(inplace=True),
        ]
        ch = ngf
        for _ in range(2):
            layers += [nn.Conv2d(ch, ch * 2, 3, stride=2, padding=1), nn.InstanceNorm2d(ch * 2), nn.ReLU(inplace=True)]
            ch *= 2
        layers += [ResnetBlock(ch) for _ in range(n_blocks)]
        for _ in range(2):
            layers += [
                nn.ConvTranspose2d(ch, ch // 2, 3, stride=2, padding=1, output_padding=1),
                nn.InstanceNorm2d(ch // 2),
                nn.ReLU(inplace=True),
            ]
            ch //= 2
        layers += [nn.ReflectionPad2d(3), nn.Conv2d(ch, out_channels, 7), nn.Tanh()]
        self.model = nn.Sequential(*layers)
        for m in self.modules():  # CycleGAN init: N(0, 0.02)
            if isinstance(m, nn.Conv2d | nn.ConvTranspose2d):
                nn.init.normal_(m.weight, 0.0, 0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-2] % 4 or x.shape[-1] % 4:
            raise ValueError(f"ResnetGenerator: input height/width must be divisible by 4, got {tuple(x.shape)}")
        return self.model(x)


class PatchDiscriminator(nn.Module):
    """PatchGAN: Conv4×4 s2 → LReLU, (n_layers−1)× [Conv4×4 s2 → IN → LReLU], Conv4×4 s1 → IN → LReLU, Conv4×4 s1.

    (B, 3, H, W) → (B, 1, h, w) patch logits (LSGAN: compared with 1/0 by MSE).
    """

    def __init__(self, in_channels: int = 3, *, ndf: int = 64, n_layers: int = 3) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(in_channels, ndf, 4, stride=2, padding=1), nn.LeakyReLU(0.2, True)]
        mult = 1
        for n in range(1, n_layers):
            prev, mult = mult, min(2**n, 8)
            layers += [
                nn.Conv2d(ndf * prev, ndf * mult, 4, stride=2, padding=1),
                nn.InstanceNorm2d(ndf * mult),
                nn.LeakyReLU(0.2, True),
            ]
        prev, mult = mult, min(2**n_layers, 8)
        layers += [
            nn.Conv2d(ndf * prev, ndf * mult, 4, stride=1, padding=1),
            nn.InstanceNorm2d(ndf * mult),
            nn.LeakyReLU(0.2, True),
            nn.Conv2d(ndf * mult, 1, 4, stride=1, padding=1),
        ]
        self.model = nn.Sequential(*layers)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, 0.0, 0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


class ImagePool:
    """History of generated images (Shrivastava et al. 2017): the discriminator sees old fakes half of the time.

    ``state()`` / ``load_state(t)`` save and restore the pool (a checkpoint ``extra``); sampling uses the global torch
    RNG, which dyncore's Checkpointer restores, so a resumed run draws the same mix.
    """

    def __init__(self, size: int = 50) -> None:
        self.size = size
        self.images: list[torch.Tensor] = []

    def state(self) -> torch.Tensor:
        return torch.stack(self.images) if self.images else torch.empty(0)

    def load_state(self, images: torch.Tensor) -> None:
        self.images = [img.clone() for img in images] if images.numel() else []

    @torch.no_grad()
    def query(self, images: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) fresh fakes → (B, C, H, W) mix of fresh and pooled fakes (detached)."""
        if self.size == 0:
            return images.detach()
        out = []
        for img in images.detach():
            if len(self.images) < self.size:
                self.images.append(img.clone())
                out.append(img)
            elif float(torch.rand(())) > 0.5:
                j = int(torch.randint(0, self.size, ()))
                out.append(self.images[j].to(img.device, copy=True))
                self.images[j] = img.clone()
            else:
                out.append(img)
        return torch.stack(out)


# --------------------------------------------------------------------------------------------------------- losses
def lsgan_loss(logits: torch.Tensor, target_is_real: bool) -> torch.Tensor:
    """LSGAN: MSE between patch outputs and 1 (real) or 0 (fake)."""
    target = torch.ones_like(logits) if target_is_real else torch.zeros_like(logits)
    return F.mse_loss(logits, target)


class PerceptualLoss(nn.Module):
    """BDL's perceptual loss (Eq. 5.6) with the segmentation model M frozen in eval mode.

    features φ(x) = InstanceNorm(no affine)(M(x) downsampled to 1/8), compared with MSE:
    ℓ_per = λ_per·MSE(φ(I), φ(I')) + λ_per_recon·MSE(φ(F⁻¹(I')), φ(I)), for I ∈ S (I' = F(I)) and symmetrically T.

    Args:
        segmenter: M; its parameters are frozen here and it is kept in eval mode (``train()`` does not change it).
    """

    def __init__(self, segmenter: nn.Module, *, lambda_per: float = 0.1, lambda_per_recon: float = 10.0) -> None:
        super().__init__()
        self.segmenter = segmenter
        self.segmenter.eval()
        for p in self.segmenter.parameters():
            p.requires_grad_(False)
        self.lambda_per, self.lambda_per_recon = lambda_per, lambda_per_recon

    def train(self, mode: bool = True) -> PerceptualLoss:
        super().train(mode)
        self.segmenter.eval()  # M stays frozen in eval mode
        return self

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) → (B, C, H/8, W/8) instance-normalised logits of M."""
        logits = self.segmenter(x)
        h, w = max(x.shape[-2] // 8, 1), max(x.shape[-1] // 8, 1)
        logits = F.interpolate(logits, size=(h, w), mode="bilinear", align_corners=False)
        return F.instance_norm(logits)

    def forward(self, real: torch.Tensor, translated: torch.Tensor, reconstructed: torch.Tensor) -> torch.Tensor:
        """Eq. 5.6 for one direction: ``real`` I, ``translated`` I' = F(I), ``reconstructed`` F⁻¹(I')."""
        with torch.no_grad():
            target = self.features(real)
        return self.lambda_per * F.mse_loss(self.features(translated), target) + self.lambda_per_recon * F.mse_loss(
            self.features(reconstructed), target
        )


# -------------------------------------------------------------------------------------------------------- CycleGAN
@dataclass
class CycleGANConfig:
    """CycleGAN/BDL translation hyper-parameters (paper values as defaults)."""

    ngf: int = 64
    ndf: int = 64
    n_blocks: int = 9
    n_layers_d: int = 3
    pool_size: int = 50
    lambda_gan: float = 1.0
    lambda_recon: float = 10.0
    lambda_identity: float = 5.0  # 10 · 0.5, CycleGAN's identity weight relative to λ_recon
    lambda_per: float = 0.1
    lambda_per_recon: float = 10.0
    lr: float = 2e-4
    beta1: float = 0.5

    def __post_init__(self) -> None:
        from bdl.checks import check_number

        for name in ("ngf", "ndf", "n_layers_d"):
            check_number(getattr(self, name), name, f"--{name.replace('_', '-')}", low=1, integer=True)
        check_number(self.n_blocks, "n_blocks", "--n-blocks", low=0, integer=True)
        check_number(self.pool_size, "pool_size", None, low=0, integer=True)
        for name in ("lambda_gan", "lambda_recon", "lambda_identity", "lambda_per", "lambda_per_recon"):
            check_number(getattr(self, name), name, None, low=0)
        check_number(self.lr, "lr", "--translation-lr", low=0, low_open=True)
        check_number(self.beta1, "beta1", None, low=0, high=1, high_open=True)

    @property
    def min_size(self) -> int:
        """Smallest image/crop side F accepts: a multiple of 4 (the generators' two stride-2 convs) for which the
        PatchGAN still outputs at least one patch."""
        side = 4
        while not _patchgan_fits(side, self.n_layers_d):
            side += 4
        return side


def _patchgan_fits(side: int, n_layers: int) -> bool:
    """Whether a ``side``² image leaves a non-empty PatchGAN output (4×4, pad 1: stride 2 → ⌊s/2⌋, stride 1 → s−1)."""
    for _ in range(n_layers):
        side //= 2
    return side - 2 >= 1


class CycleGAN(nn.Module):
    """F (``g_st``: S → T), F⁻¹ (``g_ts``: T → S), D_T (``d_t``), D_S (``d_s``) and the two image pools.

    Use :meth:`generator_loss` and :meth:`discriminator_loss` in alternating steps (see :func:`translation_step`).
    """

    def __init__(self, config: CycleGANConfig | None = None) -> None:
        super().__init__()
        c = self.config = config or CycleGANConfig()
        self.g_st = ResnetGenerator(ngf=c.ngf, n_blocks=c.n_blocks)
        self.g_ts = ResnetGenerator(ngf=c.ngf, n_blocks=c.n_blocks)
        self.d_t = PatchDiscriminator(ndf=c.ndf, n_layers=c.n_layers_d)
        self.d_s = PatchDiscriminator(ndf=c.ndf, n_layers=c.n_layers_d)
        self.pool_t = ImagePool(c.pool_size)  # fakes of T, i.e. F(S)
        self.pool_s = ImagePool(c.pool_size)  # fakes of S, i.e. F⁻¹(T)

    def generators(self) -> list[nn.Parameter]:
        return [*self.g_st.parameters(), *self.g_ts.parameters()]

    def discriminators(self) -> list[nn.Parameter]:
        return [*self.d_t.parameters(), *self.d_s.parameters()]

    def translate(self, source: torch.Tensor) -> torch.Tensor:
        """S → S' = F(S)."""
        return self.g_st(source)

    def generator_loss(
        self, real_s: torch.Tensor, real_t: torch.Tensor, perceptual: PerceptualLoss | None = None
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """ℓ_F of Eq. 5.2 (+ identity loss) for a batch of source and target images (B, 3, H, W) in [-1, 1].

        Returns (total, terms) where terms also holds the fakes ``fake_t`` = F(S) and ``fake_s`` = F⁻¹(T) (for the D
        step).
        """
        c = self.config
        fake_t = self.g_st(real_s)  # S'
        fake_s = self.g_ts(real_t)  # T'
        rec_s = self.g_ts(fake_t)  # F⁻¹(S')
        rec_t = self.g_st(fake_s)  # F(T')
        gan = lsgan_loss(self.d_t(fake_t), True) + lsgan_loss(self.d_s(fake_s), True)
        recon = F.l1_loss(rec_s, real_s) + F.l1_loss(rec_t, real_t)
        terms: dict[str, torch.Tensor] = {"gan": gan, "recon": recon}
        total = c.lambda_gan * gan + c.lambda_recon * recon
        if c.lambda_identity > 0:
            idt = F.l1_loss(self.g_st(real_t), real_t) + F.l1_loss(self.g_ts(real_s), real_s)
            terms["identity"] = idt
            total = total + c.lambda_identity * idt
        if perceptual is not None:
            per = perceptual(real_s, fake_t, rec_s) + perceptual(real_t, fake_s, rec_t)
            terms["perceptual"] = per
            total = total + per
        terms["fake_t"], terms["fake_s"] = fake_t, fake_s
        return total, terms

    def discriminator_loss(
        self, real_s: torch.Tensor, real_t: torch.Tensor, fake_s: torch.Tensor, fake_t: torch.Tensor
    ) -> torch.Tensor:
        """LSGAN discriminator loss ½[(D(real)−1)² + D(pooled fake)²] for D_T and D_S."""
        pooled_t, pooled_s = self.pool_t.query(fake_t), self.pool_s.query(fake_s)
        loss_t = 0.5 * (lsgan_loss(self.d_t(real_t), True) + lsgan_loss(self.d_t(pooled_t), False))
        loss_s = 0.5 * (lsgan_loss(self.d_s(real_s), True) + lsgan_loss(self.d_s(pooled_s), False))
        return loss_t + loss_s


def make_translation_optimizers(model: CycleGAN) -> tuple[torch.optim.Adam, torch.optim.Adam]:
    """Adam(lr 2e-4, β (0.5, 0.999)) for the generators and for the discriminators."""
    c = model.config
    return (
        torch.optim.Adam(model.generators(), lr=c.lr, betas=(c.beta1, 0.999)),
        torch.optim.Adam(model.discriminators(), lr=c.lr, betas=(c.beta1, 0.999)),
    )


def linear_decay(step: int, total: int) -> float:
    """CycleGAN schedule as an LR factor: constant for the first half of ``total`` steps, then linear to 0."""
    half = total // 2
    if step < half:
        return 1.0
    return max(0.0, 1.0 - (step - half) / max(total - half, 1))


def translation_step(
    model: CycleGAN,
    opt_g: torch.optim.Optimizer,
    opt_d: torch.optim.Optimizer,
    real_s: torch.Tensor,
    real_t: torch.Tensor,
    perceptual: PerceptualLoss | None = None,
) -> dict[str, float]:
    """One CycleGAN iteration: generator step (D frozen), then discriminator step on pooled fakes."""
    for p in model.discriminators():
        p.requires_grad_(False)
    opt_g.zero_grad(set_to_none=True)
    loss_g, terms = model.generator_loss(real_s, real_t, perceptual)
    loss_g.backward()
    opt_g.step()
    for p in model.discriminators():
        p.requires_grad_(True)
    opt_d.zero_grad(set_to_none=True)
    loss_d = model.discriminator_loss(real_s, real_t, terms["fake_s"].detach(), terms["fake_t"].detach())
    loss_d.backward()
    opt_d.step()
    out = {k: float(v.detach()) for k, v in terms.items() if k not in ("fake_s", "fake_t")}
    out.update(loss_g=float(loss_g.detach()), loss_d=float(loss_d.detach()))
    return out
