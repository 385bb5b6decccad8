"""Rendering helpers shared by the embedded generators: fonts, offline photos, colours, glyph masks, distortions.

Everything takes an explicit ``numpy.random.Generator`` and uses PIL for geometry, so output is bit-identical for a
seed. Fonts come from matplotlib's bundled TrueType files (same on every machine with the same matplotlib), with the
system DejaVu folder as a fallback.
"""

from __future__ import annotations

import functools
import io
import math
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont

from dyncore._optional import require

__all__ = [
    "OFFLINE_PHOTOS",
    "affine_mask",
    "contrasting_colours",
    "font_paths",
    "gaussian_blur",
    "gradient_background",
    "jpeg",
    "load_font",
    "photo",
    "photo_patch",
    "resize",
    "text_mask",
]

#: skimage.data images that ship inside the wheel (no download). Never add: brain, cells3d, eagle, human_mitosis,
#: kidney, lily, nickel_solidification, palisades_of_vogt, protein_transport, skin, vortex (those download).
OFFLINE_PHOTOS: tuple[str, ...] = (
    "astronaut", "camera", "coffee", "chelsea", "rocket", "brick", "grass", "gravel", "cat", "clock", "coins",
    "colorwheel", "hubble_deep_field", "immunohistochemistry", "moon", "page", "text", "retina", "stereo_motorcycle",
)  # fmt: skip

_FONT_FILES: dict[str, tuple[str, ...]] = {
    "sans": ("DejaVuSans.ttf", "DejaVuSans-Bold.ttf", "DejaVuSans-Oblique.ttf", "DejaVuSans-BoldOblique.ttf"),
    "mono": ("DejaVuSansMono.ttf", "DejaVuSansMono-Bold.ttf", "DejaVuSansMono-Oblique.ttf"),
    "serif": ("DejaVuSerif.ttf", "DejaVuSerif-Bold.ttf", "DejaVuSerif-Italic.ttf", "DejaVuSerif-BoldItalic.ttf"),
    "stix": ("STIXGeneral.ttf", "STIXGeneralBol.ttf", "STIXGeneralItalic.ttf", "STIXGeneralBolIta.ttf"),
    "bold": ("DejaVuSans-Bold.ttf", "DejaVuSansMono-Bold.ttf", "DejaVuSerif-Bold.ttf", "STIXGeneralBol.ttf"),
}


@functools.cache
def _font_dirs() -> tuple[Path, ...]:
    dirs: list[Path] = []
    try:
        import matplotlib

        dirs.append(Path(matplotlib.get_data_path()) / "fonts" / "ttf")
    except ImportError:  # the system fonts below may do; font_paths names the extra when none is found
        pass
    dirs.append(Path("/usr/share/fonts/truetype/dejavu"))
    return tuple(d for d in dirs if d.is_dir())


def font_paths(*families: str) -> list[str]:
    """Font files for ``families`` (keys: sans, mono, serif, stix, bold) that exist on this machine."""
    found: list[str] = []
    for fam in families:
        if fam not in _FONT_FILES:
            raise ValueError(f"unknown font family {fam!r}; valid: {sorted(_FONT_FILES)}")
        for fname in _FONT_FILES[fam]:
            for d in _font_dirs():
                if (d / fname).is_file():
                    found.append(str(d / fname))
                    break
    if not found:
        raise FileNotFoundError(
            f"no TrueType font of {families} found in {[str(d) for d in _font_dirs()]}; the embedded datasets use "
            "matplotlib's bundled fonts: pip install 'dyncore[data]'"
        )
    return found


@functools.cache
def load_font(path: str, size: int) -> ImageFont.FreeTypeFont:
    return ImageFont.truetype(path, size)


@functools.cache
def photo(name: str) -> np.ndarray:
    """An offline skimage photo/texture as uint8 (H, W, 3)."""
    if name not in OFFLINE_PHOTOS:
        raise ValueError(f"unknown offline photo {name!r}; valid: {list(OFFLINE_PHOTOS)}")
    a = getattr(require("skimage.data", "the embedded photos and textures"), name)()
    if isinstance(a, tuple):
        a = a[0]
    a = np.asarray(a)
    if a.dtype == bool:
        a = a.astype(np.uint8) * 255
    elif a.dtype != np.uint8:
        a = np.clip(a * 255.0 if a.max() <= 1.0 else a, 0, 255).astype(np.uint8)
    if a.ndim == 2:
        a = np.repeat(a[:, :, None], 3, axis=2)
    a = a[:, :, :3]
    a.setflags(write=False)
    return a


def resize(
    img: np.ndarray, size: tuple[int, int], resample: Image.Resampling = Image.Resampling.BILINEAR
) -> np.ndarray:
    """Resize uint8 (H, W[, 3]) to (h, w) = ``size`` with PIL."""
    return np.asarray(Image.fromarray(img).resize((size[1], size[0]), resample))


def photo_patch(
    rng: np.random.Generator,
    size: int,
    *,
    names: tuple[str, ...] = OFFLINE_PHOTOS,
    scale: tuple[float, float] = (1.0, 4.0),
    box: tuple[float, float, float, float] = (0.0, 0.0, 1.0, 1.0),
) -> np.ndarray:
    """A random square crop of side ``size·U(scale)`` from a random photo, resized to uint8 (size, size, 3).

    ``box`` = (y0, x0, y1, x1) in relative coordinates restricts where the crop may lie (disjoint train/test regions).
    """
    img = photo(names[int(rng.integers(len(names)))])
    h, w = img.shape[:2]
    y0, x0, y1, x1 = int(box[0] * h), int(box[1] * w), int(box[2] * h), int(box[3] * w)
    side = min(round(size * float(rng.uniform(*scale))), y1 - y0, x1 - x0)
    top = y0 + int(rng.integers(0, y1 - y0 - side + 1))
    left = x0 + int(rng.integers(0, x1 - x0 - side + 1))
    crop = img[top : top + side, left : left + side]
    if rng.random() < 0.5:
        crop = crop[:, ::-1]
    return resize(
        np.ascontiguousarray(crop), (size, size), Image.Resampling.BOX if side > size else Image.Resampling.BILINEAR
    )


def _luma(c: np.ndarray) -> float:
    return float(0.299 * c[0] + 0.587 * c[1] + 0.114 * c[2])


def contrasting_colours(rng: np.random.Generator, min_contrast: float = 70.0) -> tuple[np.ndarray, np.ndarray]:
    """Two random RGB colours (float, 0–255) whose luma differs by at least ``min_contrast``."""
    while True:
        a, b = rng.uniform(0, 255, size=3), rng.uniform(0, 255, size=3)
        if abs(_luma(a) - _luma(b)) >= min_contrast:
            return a, b


def contrasting_colour(rng: np.random.Generator, background: np.ndarray, min_contrast: float = 70.0) -> np.ndarray:
    """A random RGB colour whose luma differs from ``background``'s (RGB) luma by at least ``min_contrast``."""
    bl = _luma(background)
    for _ in range(100):
        c = rng.uniform(0, 255, size=3)
        if abs(_luma(c) - bl) >= min_contrast:
            return c
    return np.full(3, 0.0 if bl > 127 else 255.0)


def gradient_background(rng: np.random.Generator, size: int, c0: np.ndarray, c1: np.ndarray) -> np.ndarray:
    """Linear gradient from ``c0`` to ``c1`` in a random direction: float (size, size, 3)."""
    phi = rng.uniform(0, 2 * math.pi)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64) / max(size - 1, 1) - 0.5
    t = np.clip(xx * math.cos(phi) + yy * math.sin(phi) + 0.5, 0, 1)[:, :, None]
    return (1 - t) * c0[None, None, :] + t * c1[None, None, :]


def text_mask(text: str, centre: int, font_path: str, font_size: int, canvas: int) -> Image.Image:
    """Render ``text`` as an 'L' mask on a (canvas, canvas) image with character ``text[centre]`` centred."""
    font = load_font(font_path, font_size)
    offset = font.getlength(text[:centre])
    x0, y0, x1, y1 = font.getbbox(text[centre])
    cx, cy = offset + (x0 + x1) / 2, (y0 + y1) / 2
    img = Image.new("L", (canvas, canvas), 0)
    ImageDraw.Draw(img).text((canvas / 2 - cx, canvas / 2 - cy), text, fill=255, font=font)
    return img


def affine_mask(
    mask: Image.Image, *, angle_deg: float, scale: float, shift: tuple[float, float], shear: float = 0.0
) -> Image.Image:
    """Rotate by ``angle_deg``, scale by ``scale``, shear and translate by ``shift`` (px) about the centre."""
    w, h = mask.size
    cx, cy = w / 2, h / 2
    th = math.radians(angle_deg)
    # forward map A = s·R(θ)·[[1, shear], [0, 1]]; PIL wants the inverse (output → input).
    a11, a12 = scale * math.cos(th), scale * (math.cos(th) * shear - math.sin(th))
    a21, a22 = scale * math.sin(th), scale * (math.sin(th) * shear + math.cos(th))
    det = a11 * a22 - a12 * a21
    i11, i12, i21, i22 = a22 / det, -a12 / det, -a21 / det, a11 / det
    tx, ty = cx + shift[0], cy + shift[1]
    data = (i11, i12, cx - i11 * tx - i12 * ty, i21, i22, cy - i21 * tx - i22 * ty)
    return mask.transform((w, h), Image.Transform.AFFINE, data, resample=Image.Resampling.BICUBIC)


def perspective_mask(mask: Image.Image, rng: np.random.Generator, amount: float) -> Image.Image:
    """Random perspective warp: each corner moves by up to ``amount``·size."""
    w, h = mask.size
    dst = np.array([[0, 0], [w, 0], [w, h], [0, h]], dtype=np.float64)
    src = dst + rng.uniform(-amount, amount, size=(4, 2)) * np.array([w, h])
    # solve for the 8 coefficients mapping output (dst) → input (src)
    rows, rhs = [], []
    for (x, y), (u, v) in zip(dst, src):
        rows.append([x, y, 1, 0, 0, 0, -u * x, -u * y])
        rows.append([0, 0, 0, x, y, 1, -v * x, -v * y])
        rhs += [u, v]
    coeffs = np.linalg.solve(np.array(rows), np.array(rhs))
    return mask.transform((w, h), Image.Transform.PERSPECTIVE, tuple(coeffs.tolist()), Image.Resampling.BICUBIC)


def gaussian_blur(img: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian blur of uint8 (H, W[, 3]) with standard deviation ``sigma`` px (PIL)."""
    if sigma <= 0.05:
        return img
    return np.asarray(Image.fromarray(img).filter(ImageFilter.GaussianBlur(radius=sigma)))


def jpeg(img: np.ndarray, quality: int) -> np.ndarray:
    """JPEG round trip of uint8 (H, W, 3) at ``quality`` (compression noise)."""
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="JPEG", quality=int(quality))
    buf.seek(0)
    return np.asarray(Image.open(buf).convert("RGB"))


def composite(background: np.ndarray, mask: np.ndarray, colour: np.ndarray) -> np.ndarray:
    """Alpha-blend ``colour`` over float ``background`` (H, W, 3) with float ``mask`` (H, W) in [0, 1]."""
    m = mask[:, :, None]
    return background * (1 - m) + colour[None, None, :] * m


def to_uint8(img: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)
