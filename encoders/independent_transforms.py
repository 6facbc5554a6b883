"""Pixel-level and spatial transforms of the independent edit suite (``encoders.independent_edits``).

They run on albumentations (seeded per call from the benchmark's generator) or plain OpenCV and
numpy, at the strengths users apply; none of their parameters was copied from
``encoders.augment``, so validation on them cannot flatter the training suite. Every transform is
``fn(rgb, rng, others) -> rgb`` on uint8 (H, W, 3) arrays; ``others`` is unused here and kept so
all families share one signature.
"""
from __future__ import annotations

import albumentations as A
import cv2
import numpy as np


def _alb(transform: A.BasicTransform, img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Run one albumentations transform, seeded from ``rng`` so a benchmark is reproducible."""
    pipe = A.Compose([transform], seed=int(rng.integers(0, 2**31 - 1)))
    return pipe(image=img)["image"]


def uniform(rng: np.random.Generator, lo: float, hi: float) -> float:
    """One draw in [lo, hi) as a plain float (the suite's strengths are all drawn this way)."""
    return float(rng.uniform(lo, hi))


def random_colour(rng: np.random.Generator) -> tuple[int, int, int]:
    """A random RGB colour, for borders, ink and stickers."""
    return tuple(int(c) for c in rng.integers(0, 256, 3))


# ---------------------------------------------------------------- pixel edits (albumentations)
def jpeg(img, rng, others=()):
    """JPEG re-encode at quality 5-20."""
    return _alb(A.ImageCompression(quality_range=(5, 20), p=1), img, rng)


def downscale(img, rng, others=()):
    """Shrink to 18-35% of each side (stored small, as a thumbnail)."""
    s = uniform(rng, 0.18, 0.35)
    h, w = img.shape[:2]
    return cv2.resize(img, (max(8, int(w * s)), max(8, int(h * s))), interpolation=cv2.INTER_AREA)


def blur(img, rng, others=()):
    """Gaussian blur, sigma 1.5-4 pixels."""
    return _alb(A.GaussianBlur(sigma_limit=(1.5, 4.0), p=1), img, rng)


def noise(img, rng, others=()):
    """Additive Gaussian noise, 5-15% of the range."""
    return _alb(A.GaussNoise(std_range=(0.05, 0.15), p=1), img, rng)


def sharpen(img, rng, others=()):
    """Strong unsharp-style sharpening."""
    return _alb(A.Sharpen(alpha=(0.6, 1.0), lightness=(0.8, 1.2), p=1), img, rng)


def pixelize(img, rng, others=()):
    """Blocky pixels: down to 8-20% with nearest-neighbour, back up."""
    s = uniform(rng, 0.08, 0.2)
    nearest = {"downscale": cv2.INTER_NEAREST, "upscale": cv2.INTER_NEAREST}
    return _alb(A.Downscale(scale_range=(s, s), interpolation_pair=nearest, p=1), img, rng)


def brightness_contrast(img, rng, others=()):
    """Brightness x0.4-1.8 and contrast x0.3-1.8 together (either side of 1)."""
    b = uniform(rng, 0.4, 0.7) if rng.random() < 0.5 else uniform(rng, 1.4, 1.8)
    c = uniform(rng, 0.3, 0.6) if rng.random() < 0.5 else uniform(rng, 1.4, 1.8)
    return _alb(A.ColorJitter(brightness=(b, b), contrast=(c, c), saturation=(1, 1), hue=(0, 0), p=1),
                img, rng)


def gamma(img, rng, others=()):
    """Gamma 0.4-0.6 or 1.7-2.5."""
    g = uniform(rng, 40, 60) if rng.random() < 0.5 else uniform(rng, 170, 250)
    return _alb(A.RandomGamma(gamma_limit=(g, g), p=1), img, rng)


def saturation(img, rng, others=()):
    """Saturation x0-0.3 or x1.8-2.5."""
    s = uniform(rng, 0.0, 0.3) if rng.random() < 0.5 else uniform(rng, 1.8, 2.5)
    return _alb(A.ColorJitter(brightness=(1, 1), contrast=(1, 1), saturation=(s, s), hue=(0, 0), p=1),
                img, rng)


def colour_jitter(img, rng, others=()):
    """Hue, saturation and value shifted together."""
    return _alb(A.HueSaturationValue(hue_shift_limit=(-60, 60), sat_shift_limit=(-50, 50),
                                     val_shift_limit=(-40, 40), p=1), img, rng)


def grayscale(img, rng, others=()):
    """Colour dropped."""
    return _alb(A.ToGray(num_output_channels=3, p=1), img, rng)


def fade(img, rng, others=()):
    """Low opacity: blended 40-70% toward white (or black)."""
    a = uniform(rng, 0.4, 0.7)
    target = 255.0 if rng.random() < 0.7 else 0.0
    return np.clip(img.astype(np.float32) * (1 - a) + target * a, 0, 255).astype(np.uint8)


# ---------------------------------------------------------------- geometry
def hflip(img, rng, others=()):
    """Mirror left-right."""
    return _alb(A.HorizontalFlip(p=1), img, rng)


def vflip(img, rng, others=()):
    """Mirror top-bottom."""
    return _alb(A.VerticalFlip(p=1), img, rng)


def rot90(img, rng, others=()):
    """A quarter turn either way."""
    return np.ascontiguousarray(np.rot90(img, 1 if rng.random() < 0.5 else 3))


def rot180(img, rng, others=()):
    """Upside down."""
    return np.ascontiguousarray(img[::-1, ::-1])


def rotate(img, rng, others=()):
    """Turned by 8-45 degrees either way, corners filled black or by reflection."""
    deg = uniform(rng, 8, 45) * (1 if rng.random() < 0.5 else -1)
    border = cv2.BORDER_CONSTANT if rng.random() < 0.6 else cv2.BORDER_REFLECT_101
    return _alb(A.Rotate(limit=(deg, deg), border_mode=border, fill=0, p=1), img, rng)


def skew(img, rng, others=()):
    """Sheared by 12-25 degrees along one axis."""
    s = uniform(rng, 12, 25) * (1 if rng.random() < 0.5 else -1)
    shear = {"x": (s, s), "y": (0, 0)} if rng.random() < 0.5 else {"x": (0, 0), "y": (s, s)}
    return _alb(A.Affine(shear=shear, fit_output=True, border_mode=cv2.BORDER_CONSTANT, fill=0, p=1),
                img, rng)


def perspective(img, rng, others=()):
    """A photo of the photo: projective warp of 6-14% per corner."""
    return _alb(A.Perspective(scale=(0.06, 0.14), fit_output=True, fill=0, p=1), img, rng)


def aspect(img, rng, others=()):
    """One axis stretched x1.4-2 or squeezed x0.5-0.7."""
    f = uniform(rng, 1.4, 2.0) if rng.random() < 0.5 else uniform(rng, 0.5, 0.7)
    h, w = img.shape[:2]
    size = (max(8, int(w * f)), h) if rng.random() < 0.5 else (w, max(8, int(h * f)))
    return cv2.resize(img, size, interpolation=cv2.INTER_LINEAR)


def center_crop(img, rng, others=()):
    """The central 55-75% of each side."""
    s = uniform(rng, 0.55, 0.75)
    h, w = img.shape[:2]
    return _alb(A.CenterCrop(height=max(8, int(h * s)), width=max(8, int(w * s)), p=1), img, rng)


def crop(img, rng, others=()):
    """A window of 50-70% of each side, anywhere in the photo."""
    h, w = img.shape[:2]
    ch, cw = max(8, int(h * uniform(rng, 0.5, 0.7))), max(8, int(w * uniform(rng, 0.5, 0.7)))
    return _alb(A.RandomCrop(height=ch, width=cw, p=1), img, rng)


def pad(img, rng, others=()):
    """A plain border of 8-30% of each side (uneven), any colour."""
    h, w = img.shape[:2]
    t, b = (int(h * uniform(rng, 0.0, 0.3)) for _ in range(2))
    left, right = (int(w * uniform(rng, 0.0, 0.3)) for _ in range(2))
    t = max(t, int(h * 0.08))
    return cv2.copyMakeBorder(img, t, b, left, right, cv2.BORDER_CONSTANT, value=random_colour(rng))
