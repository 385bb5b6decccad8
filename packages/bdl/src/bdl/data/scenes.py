"""Embedded street-scene benchmark: a miniature of GTA5/SYNTHIA → Cityscapes (spec/data.md, "Street scenes").

A procedural generator draws label maps over the 19 Cityscapes train ids (horizon, road in perspective, sidewalks,
building blocks with walls, fences, poles with lights and signs, vegetation, terrain, sky, and vehicles/people at
depth-dependent scales) and renders them in two appearances:

- ``"synthetic"`` (source): flat or gradient per-class colours, sharp edges, uniform lighting;
- ``"real"`` (target): real scikit-image textures per class (gravel road, brick buildings, grass vegetation, photo
  sky, …), a lighting/colour shift, blur and noise, and a shifted layout distribution (lower horizon, more cars,
  narrower road, fewer large vehicles).

Every image is drawn from its own ``numpy.random.Generator`` seeded by (seed, domain, split, index), so the data are
bit-identical across runs and machines, and cached (dyncore.data.cache: ``$DYNCORE_CACHE``, content hash).
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from torch.utils.data import Dataset

from bdl.data.labels import CITYSCAPES_CLASSES, CITYSCAPES_PALETTE, NUM_CLASSES
from dyncore.data.cache import content_hash, load_or_build

Domain = Literal["synthetic", "real"]
Split = Literal["train", "val"]
DOMAINS: tuple[str, ...] = ("synthetic", "real")
SPLITS: tuple[str, ...] = ("train", "val")
_VERSION = 2

# class ids (Cityscapes train ids)
ROAD, SIDEWALK, BUILDING, WALL, FENCE, POLE, LIGHT, SIGN, VEGETATION, TERRAIN, SKY = range(11)
PERSON, RIDER, CAR, TRUCK, BUS, TRAIN, MOTORCYCLE, BICYCLE = range(11, 19)


@dataclass(frozen=True)
class LayoutStyle:
    """Distribution of a domain's scene layouts (fractions of the image height H / width W)."""

    horizon: tuple[float, float]  # horizon row / H
    road_width: tuple[float, float]  # road width at the bottom row / W
    sidewalk_width: tuple[float, float]  # each sidewalk's width at the bottom row / W
    cars: tuple[int, int]  # inclusive range of the number of cars
    persons: tuple[int, int]
    two_wheelers: tuple[int, int]  # rider on a bicycle or motorcycle
    poles: tuple[int, int]
    large_vehicle_prob: float  # chance of a truck, of a bus, and (halved) of a train
    tree_prob: float  # chance that a building block has a tree in front of it
    wall_prob: float
    fence_prob: float


SYNTHETIC_LAYOUT = LayoutStyle(
    horizon=(0.34, 0.46),
    road_width=(0.55, 0.9),
    sidewalk_width=(0.12, 0.25),
    cars=(1, 4),
    persons=(0, 3),
    two_wheelers=(0, 1),
    poles=(1, 4),
    large_vehicle_prob=0.35,
    tree_prob=0.35,
    wall_prob=0.3,
    fence_prob=0.3,
)
REAL_LAYOUT = LayoutStyle(
    horizon=(0.42, 0.56),
    road_width=(0.45, 0.75),
    sidewalk_width=(0.1, 0.2),
    cars=(2, 7),
    persons=(1, 4),
    two_wheelers=(0, 2),
    poles=(2, 5),
    large_vehicle_prob=0.2,
    tree_prob=0.5,
    wall_prob=0.2,
    fence_prob=0.4,
)
LAYOUTS: dict[str, LayoutStyle] = {"synthetic": SYNTHETIC_LAYOUT, "real": REAL_LAYOUT}


# ----------------------------------------------------------------------------------------------------------- layout
def _rect(lab: np.ndarray, y0: float, y1: float, x0: float, x1: float, cls: int) -> None:
    """Fill rows [y0, y1) × cols [x0, x1) (floats, clipped, at least one pixel wide/high) with ``cls``."""
    h, w = lab.shape
    iy0, ix0 = int(np.floor(y0)), int(np.floor(x0))
    iy1, ix1 = max(int(np.ceil(y1)), iy0 + 1), max(int(np.ceil(x1)), ix0 + 1)
    iy0, iy1, ix0, ix1 = max(iy0, 0), min(iy1, h), max(ix0, 0), min(ix1, w)
    if iy0 < iy1 and ix0 < ix1:
        lab[iy0:iy1, ix0:ix1] = cls


def _ellipse(lab: np.ndarray, cy: float, cx: float, ry: float, rx: float, cls: int) -> None:
    h, w = lab.shape
    ry, rx = max(ry, 0.6), max(rx, 0.6)
    y0, y1 = max(int(cy - ry), 0), min(int(cy + ry) + 2, h)
    x0, x1 = max(int(cx - rx), 0), min(int(cx + rx) + 2, w)
    if y0 >= y1 or x0 >= x1:
        return
    yy, xx = np.mgrid[y0:y1, x0:x1]
    mask = ((yy + 0.5 - cy) / ry) ** 2 + ((xx + 0.5 - cx) / rx) ** 2 <= 1.0
    lab[y0:y1, x0:x1][mask] = cls


def generate_layout(rng: np.random.Generator, height: int, width: int, style: LayoutStyle) -> np.ndarray:
    """Draw one (H, W) uint8 label map of Cityscapes train ids from ``style`` (painter's order, far to near)."""
    H, W = height, width
    lab = np.full((H, W), SKY, dtype=np.uint8)
    yh = rng.uniform(*style.horizon) * H
    vx = W * (0.5 + rng.uniform(-0.15, 0.15))  # vanishing point
    cxb = W * (0.5 + rng.uniform(-0.12, 0.12))  # road centre at the bottom row
    road_half = rng.uniform(*style.road_width) * W / 2
    side_w = rng.uniform(*style.sidewalk_width) * W
    terrain_w = rng.uniform(0.05, 0.3) * W
    yy, xx = np.mgrid[0:H, 0:W].astype(np.float32) + 0.5
    t = np.clip((yy - yh) / (H - yh), 0.0, None)  # depth coordinate: 0 at the horizon, 1 at the bottom row
    centre = vx + (cxb - vx) * t
    d = np.abs(xx - centre)
    ground = yy >= yh
    # ground beyond the sidewalks: terrain strip then vegetation
    lab[ground] = VEGETATION
    lab[ground & (d < t * (road_half + side_w + terrain_w))] = TERRAIN
    # building blocks along both sides, their foot on a line descending from the vanishing point
    slope = (H - yh) / max(W * 0.5, 1.0) * rng.uniform(0.5, 0.9)
    foot = yh + slope * np.abs(np.arange(W) + 0.5 - vx)
    for side in (-1, 1):
        x = vx + side * rng.uniform(0.0, 0.08) * W
        while 0 <= x <= W:
            bw = rng.uniform(0.08, 0.3) * W
            x_next = x + side * bw
            top = yh - rng.uniform(0.1, 0.9) * yh
            x0, x1 = sorted((x, x_next))
            cols = np.arange(max(int(x0), 0), min(int(np.ceil(x1)), W))
            for c in cols:
                lab[int(max(top, 0)) : int(foot[c]), c] = BUILDING
            if cols.size:
                fmin = float(foot[cols].min())
                if rng.random() < style.wall_prob:
                    wall_h = rng.uniform(0.03, 0.1) * H
                    for c in cols:
                        lab[int(max(foot[c] - wall_h, 0)) : int(foot[c]), c] = WALL
                if rng.random() < style.tree_prob:
                    r = rng.uniform(0.06, 0.18) * H
                    _ellipse(lab, fmin - 1.2 * r, (x0 + x1) / 2, r, r * rng.uniform(0.8, 1.4), VEGETATION)
                    _rect(lab, fmin - 0.4 * r, fmin, (x0 + x1) / 2 - 0.5, (x0 + x1) / 2 + 0.8, POLE)
            x = x_next
    # fence along the outer edge of a sidewalk
    if rng.random() < style.fence_prob:
        fence_h = rng.uniform(0.03, 0.07) * H
        band = ground & (d >= t * (road_half + side_w)) & (d < t * (road_half + side_w) + 1.5 + t * 0.02 * W)
        band &= (yy > yh + (H - yh) * 0.05) & (lab != BUILDING) & (lab != WALL)
        rows, cols = np.nonzero(band)
        for row, col in zip(rows, cols):
            lab[int(max(row - fence_h * t[row, col] * 3, 0)) : row + 1, col] = FENCE
    # road and sidewalks are nearest: drawn over everything on the ground
    lab[ground & (d < t * (road_half + side_w))] = SIDEWALK
    lab[ground & (d < t * road_half)] = ROAD

    objects: list[tuple[float, str, float]] = []  # (depth, kind, lateral position in [-1, 1])
    for _ in range(rng.integers(style.cars[0], style.cars[1] + 1)):
        objects.append((rng.uniform(0.08, 1.0), "car", rng.uniform(-0.8, 0.8)))
    for kind in ("truck", "bus"):
        if rng.random() < style.large_vehicle_prob:
            objects.append((rng.uniform(0.1, 0.7), kind, rng.uniform(-0.6, 0.6)))
    if rng.random() < style.large_vehicle_prob / 2:
        objects.append((rng.uniform(0.05, 0.25), "train", rng.uniform(-0.3, 0.3)))
    for _ in range(rng.integers(style.persons[0], style.persons[1] + 1)):
        objects.append((rng.uniform(0.1, 1.0), "person", float(rng.choice([-1.0, 1.0])) * rng.uniform(1.05, 1.3)))
    for _ in range(rng.integers(style.two_wheelers[0], style.two_wheelers[1] + 1)):
        kind = "motorcycle" if rng.random() < 0.5 else "bicycle"
        objects.append((rng.uniform(0.15, 1.0), kind, rng.uniform(-0.9, 0.9)))
    for _ in range(rng.integers(style.poles[0], style.poles[1] + 1)):
        objects.append((rng.uniform(0.1, 0.9), "pole", float(rng.choice([-1.0, 1.0])) * rng.uniform(1.1, 1.4)))
    objects.sort(key=lambda o: o[0])
    for depth, kind, lat in objects:
        yb = yh + depth * (H - yh)  # base row
        cx = vx + (cxb - vx) * depth + lat * depth * road_half
        s = depth * H  # apparent scale in pixels
        if kind == "car":
            w, h = 0.5 * s, 0.22 * s
            _rect(lab, yb - 0.6 * h, yb, cx - w / 2, cx + w / 2, CAR)
            _rect(lab, yb - h, yb - 0.55 * h, cx - 0.32 * w, cx + 0.3 * w, CAR)
        elif kind == "truck":
            w, h = 0.6 * s, 0.42 * s
            _rect(lab, yb - h, yb, cx - w / 2, cx + w / 6, TRUCK)
            _rect(lab, yb - 0.65 * h, yb, cx + w / 6, cx + w / 2, TRUCK)
        elif kind == "bus":
            w, h = 0.95 * s, 0.45 * s
            _rect(lab, yb - h, yb, cx - w / 2, cx + w / 2, BUS)
        elif kind == "train":
            w, h = 2.0 * s, 0.5 * s
            _rect(lab, yb - h, yb, cx - w / 2, cx + w / 2, TRAIN)
        elif kind == "person":
            h, w = 0.38 * s, 0.1 * s
            _rect(lab, yb - 0.85 * h, yb, cx - w / 2, cx + w / 2, PERSON)
            _ellipse(lab, yb - 0.9 * h, cx, 0.1 * h, 0.6 * w, PERSON)
        elif kind in ("motorcycle", "bicycle"):
            h, w = 0.2 * s, 0.3 * s
            vehicle = MOTORCYCLE if kind == "motorcycle" else BICYCLE
            _rect(lab, yb - h, yb, cx - w / 2, cx + w / 2, vehicle)
            _rect(lab, yb - 2.4 * h, yb - 0.7 * h, cx - 0.15 * w, cx + 0.15 * w, RIDER)
            _ellipse(lab, yb - 2.5 * h, cx, 0.2 * h, 0.12 * w, RIDER)
        else:  # pole with a traffic light or sign on top
            h, w = 0.55 * s, max(0.02 * s, 0.8)
            _rect(lab, yb - h, yb, cx - w / 2, cx + w / 2, POLE)
            top = LIGHT if rng.random() < 0.5 else SIGN
            _rect(lab, yb - h - 0.12 * s, yb - h + 0.02 * s, cx - 2.5 * w, cx + 2.5 * w, top)
    return lab


# ----------------------------------------------------------------------------------------------------------- render
def render_synthetic(rng: np.random.Generator, label: np.ndarray) -> np.ndarray:
    """Source appearance: flat per-class colours (small per-image jitter), vertical gradients on sky and road."""
    H, W = label.shape
    colours = CITYSCAPES_PALETTE.astype(np.float32) + rng.uniform(-12, 12, size=(NUM_CLASSES, 3)).astype(np.float32)
    img = colours[np.minimum(label, NUM_CLASSES - 1)]
    ramp = np.linspace(-1.0, 1.0, H, dtype=np.float32)[:, None, None]
    for cls, amp in ((10, 30.0), (0, 18.0)):
        m = label == cls
        img[m] += (ramp * amp * np.ones((1, W, 1), np.float32))[m]
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


_TEXTURE_RECIPE: dict[int, tuple[str, tuple[float, float, float]]] = {
    # class → (skimage.data image, tint); grey textures are tinted, colour photos are mixed with the tint
    0: ("gravel", (0.48, 0.46, 0.5)),
    1: ("moon", (0.8, 0.72, 0.72)),
    2: ("brick", (0.72, 0.52, 0.42)),
    3: ("brick_t", (0.62, 0.62, 0.66)),
    4: ("text", (0.65, 0.55, 0.45)),
    5: ("camera", (0.6, 0.6, 0.6)),
    6: ("coffee", (0.9, 0.65, 0.2)),
    7: ("page", (0.9, 0.85, 0.2)),
    8: ("grass", (0.3, 0.55, 0.2)),
    9: ("grass_t", (0.6, 0.62, 0.35)),
    10: ("sky", (0.75, 0.85, 1.0)),
    11: ("astronaut", (0.8, 0.2, 0.25)),
    12: ("chelsea", (0.9, 0.3, 0.2)),
    13: ("coffee", (0.25, 0.3, 0.6)),
    14: ("rocket", (0.2, 0.25, 0.4)),
    15: ("immunohistochemistry", (0.2, 0.4, 0.5)),
    16: ("hubble_deep_field", (0.25, 0.4, 0.45)),
    17: ("cat", (0.3, 0.3, 0.85)),
    18: ("colorwheel", (0.6, 0.15, 0.25)),
}


def _load_source_image(name: str) -> np.ndarray:
    """A float (h, w, 3) image in [0, 1] from skimage.data (only images that ship with the wheel)."""
    import skimage.data as skd

    if name == "sky":  # the sky above the launch pad in the "rocket" photo
        img = skd.rocket()[:110, 20:620]
    elif name.endswith("_t"):
        img = np.ascontiguousarray(getattr(skd, name[:-2])().T if name[:-2] != "grass" else skd.grass()[::-1].T)
    else:
        img = getattr(skd, name)()
    img = np.asarray(img)
    if img.ndim == 2:
        img = np.repeat(img[..., None], 3, axis=2)
    img = img[..., :3].astype(np.float32)
    return img / 255.0


@functools.lru_cache(maxsize=4)
def texture_bank(height: int, width: int) -> np.ndarray:
    """(19, 2H, 2W, 3) float32 per-class textures at the scene's scale (deterministic)."""
    from skimage.transform import resize

    out = np.empty((NUM_CLASSES, 2 * height, 2 * width, 3), dtype=np.float32)
    for cls, (name, tint) in _TEXTURE_RECIPE.items():
        src = _load_source_image(name)
        tex = resize(src, (2 * height, 2 * width, 3), order=1, anti_aliasing=True, preserve_range=True)
        # the class colour is a blend of the synthetic palette and a "real" tint: colour carries over partly
        # between domains (as between GTA5 and Cityscapes), texture and lighting do not
        tint_a = 0.55 * CITYSCAPES_PALETTE[cls].astype(np.float32) / 255.0 + 0.45 * np.asarray(tint, np.float32)
        grey = bool(np.allclose(src[..., 0], src[..., 1]) and np.allclose(src[..., 1], src[..., 2]))
        if grey:
            tex = tint_a * (1.0 + 1.1 * (tex - tex.mean()))
        else:
            tex = 0.4 * tex + 0.6 * tint_a
        out[cls] = np.clip(tex, 0.0, 1.0)
    return out


def _gaussian_blur(img: np.ndarray, sigma: float) -> np.ndarray:
    from scipy.ndimage import gaussian_filter

    return gaussian_filter(img, sigma=(sigma, sigma, 0), mode="reflect")


def render_real(rng: np.random.Generator, label: np.ndarray) -> np.ndarray:
    """Target appearance: per-class skimage textures, lighting/colour shift, gamma, vignetting, blur and noise."""
    H, W = label.shape
    bank = texture_bank(H, W)
    img = np.zeros((H, W, 3), dtype=np.float32)
    for cls in np.unique(label):
        if cls >= NUM_CLASSES:
            continue
        oy, ox = int(rng.integers(0, H + 1)), int(rng.integers(0, W + 1))
        crop = bank[cls, oy : oy + H, ox : ox + W]
        m = label == cls
        img[m] = crop[m]
    gain = rng.uniform(0.7, 1.15)
    cast = rng.uniform(0.85, 1.15, size=3).astype(np.float32)
    gamma = rng.uniform(0.8, 1.25)
    ys = np.linspace(-1.0, 1.0, H, dtype=np.float32)[:, None]
    xs = np.linspace(-1.0, 1.0, W, dtype=np.float32)[None, :]
    vignette = 1.0 - 0.25 * (xs**2 + ys**2) / 2 + rng.uniform(-0.1, 0.1) * ys
    img = np.clip(img * gain * cast * vignette[..., None], 0.0, 1.0) ** gamma
    img = _gaussian_blur(img, rng.uniform(0.3, 0.9))
    img = img + rng.normal(0.0, rng.uniform(0.01, 0.04), size=img.shape).astype(np.float32)
    return np.clip(np.rint(img * 255.0), 0, 255).astype(np.uint8)


def scene_rng(seed: int, domain: str, split: str, index: int) -> np.random.Generator:
    """The generator that draws image ``index`` of (domain, split): independent streams per item."""
    return np.random.default_rng(np.random.SeedSequence([seed, DOMAINS.index(domain), SPLITS.index(split), index]))


def generate_scenes(
    domain: str, split: str, num_images: int, *, height: int, width: int, seed: int = 0
) -> dict[str, np.ndarray]:
    """Generate ``num_images`` scenes: ``{"images": (N, H, W, 3) uint8, "labels": (N, H, W) uint8}``."""
    if domain not in DOMAINS:
        raise ValueError(f"domain must be one of {DOMAINS}, got {domain!r}")
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    if height < 16 or width < 16:
        raise ValueError(f"scene size must be at least 16×16, got height={height}, width={width}")
    style = LAYOUTS[domain]
    render = render_synthetic if domain == "synthetic" else render_real
    images = np.empty((num_images, height, width, 3), dtype=np.uint8)
    labels = np.empty((num_images, height, width), dtype=np.uint8)
    for i in range(num_images):
        rng = scene_rng(seed, domain, split, i)
        labels[i] = generate_layout(rng, height, width, style)
        images[i] = render(rng, labels[i])
    return {"images": images, "labels": labels}


def normalize_image(image: torch.Tensor) -> torch.Tensor:
    """uint8 (…, 3, H, W) → float in [-1, 1] (mean 0.5 / std 0.5: the range of the CycleGAN tanh output)."""
    return image.float().div(127.5).sub(1.0)


def denormalize_image(image: torch.Tensor) -> torch.Tensor:
    """float [-1, 1] (…, 3, H, W) → uint8."""
    return image.add(1.0).mul(127.5).round().clamp(0, 255).to(torch.uint8)


class SegmentationDataset(Dataset):
    """Base for (image, label) segmentation sets: ``__getitem__`` → (float (3, H, W) in [-1, 1], int64 (H, W)).

    Subclasses provide ``names`` (one stable identifier per item, used to match pseudo-label folders),
    ``num_classes`` and ``size`` (H, W).
    """

    names: list[str]
    num_classes: int = NUM_CLASSES
    classes: tuple[str, ...] = CITYSCAPES_CLASSES


class StreetScenes(SegmentationDataset):
    """One domain/split of the embedded street-scene benchmark, generated once and cached.

    Args:
        domain: ``"synthetic"`` (source, GTA5/SYNTHIA stand-in) or ``"real"`` (target, Cityscapes stand-in).
        split: ``"train"`` or ``"val"`` (independent seeds; target labels are for evaluation only).
        num_images: number of scenes (default 300 train / 100 val).
        size: (H, W), default (64, 128).
        seed: base seed; the data are bit-identical for equal (domain, split, num_images, size, seed).
        root: cache directory (default ``$DYNCORE_CACHE``); ``cache=False`` keeps everything in memory.

    Attributes: ``images`` uint8 (N, 3, H, W), ``labels`` uint8 (N, H, W), ``names``, ``content_hash``.
    """

    def __init__(
        self,
        domain: Domain = "synthetic",
        split: Split = "train",
        *,
        num_images: int | None = None,
        size: tuple[int, int] = (64, 128),
        seed: int = 0,
        root: str | os.PathLike[str] | None = None,
        cache: bool = True,
    ) -> None:
        n = num_images if num_images is not None else (300 if split == "train" else 100)
        if n <= 0:
            raise ValueError(f"num_images must be positive, got {n}")
        height, width = size

        def build() -> dict[str, np.ndarray]:
            return generate_scenes(domain, split, n, height=height, width=width, seed=seed)

        if cache:
            params = {"domain": domain, "split": split, "n": n, "size": [height, width], "seed": seed, "v": _VERSION}
            arrays, digest = load_or_build("bdl_street_scenes", params, build, root=root)
        else:
            arrays = build()
            digest = content_hash(arrays)
        self.domain, self.split, self.size, self.seed = domain, split, (height, width), seed
        self.images = torch.from_numpy(arrays["images"]).permute(0, 3, 1, 2).contiguous()
        self.labels = torch.from_numpy(arrays["labels"])
        self.content_hash = digest
        self.names = [f"{domain}_{split}_{i:05d}" for i in range(n)]

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return normalize_image(self.images[index]), self.labels[index].long()

    def __repr__(self) -> str:
        h, w = self.size
        return f"StreetScenes(domain={self.domain!r}, split={self.split!r}, n={len(self)}, size={h}x{w})"


def street_scenes(
    *,
    size: tuple[int, int] = (64, 128),
    num_source: int = 300,
    num_target: int = 300,
    num_val: int = 100,
    seed: int = 0,
    root: str | os.PathLike[str] | None = None,
) -> tuple[StreetScenes, StreetScenes, StreetScenes]:
    """The benchmark's three sets: (source train with labels, target train (labels unused), target val)."""
    kw = {"size": size, "seed": seed, "root": root}
    return (
        StreetScenes("synthetic", "train", num_images=num_source, **kw),  # type: ignore[arg-type]
        StreetScenes("real", "train", num_images=num_target, **kw),  # type: ignore[arg-type]
        StreetScenes("real", "val", num_images=num_val, **kw),  # type: ignore[arg-type]
    )
