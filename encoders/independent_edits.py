"""The independent edit suite: copies made the way users and the DISC21 queries make them,
written apart from the training suite (``encoders.augment``) so validation cannot flatter it.

Pixel and geometric edits come from albumentations; composites (text, emoji, stripes, memes, a
social-media post, a photo pasted into another) are drawn with OpenCV. Training never imports
this module (a test checks), and no parameter here was copied from ``encoders.augment``: the
strengths follow what users do (fades to 40-70% opacity, crops to half of each side, turns up
to 45 degrees, chains of 2-4 edits).

Every family is ``fn(rgb, rng, others) -> rgb`` on uint8 (H, W, 3) arrays; ``others`` are photos
that are not in the index, used as backgrounds and as pasted-over content. The single edits live in
``encoders.independent_transforms`` (pixel and geometric) and ``encoders.independent_composites``;
this module names them, adds the fixed compound recipes and random chains, and applies a family.
"""
from __future__ import annotations

from typing import Callable, Sequence

import cv2
import numpy as np

from encoders.independent_composites import emoji, meme, overlay, paste_into, social_screenshot, stripes, text
from encoders.independent_transforms import (
    aspect, blur, brightness_contrast, center_crop, colour_jitter, crop, downscale, fade, gamma, grayscale,
    hflip, jpeg, noise, pad, perspective, pixelize, rot90, rot180, rotate, saturation, sharpen, skew, vflip)

Edit = Callable[[np.ndarray, np.random.Generator, Sequence[np.ndarray]], np.ndarray]

SINGLES: dict[str, Edit] = {
    "jpeg": jpeg, "downscale": downscale, "blur": blur, "noise": noise, "sharpen": sharpen,
    "pixelize": pixelize, "brightness_contrast": brightness_contrast, "gamma": gamma,
    "saturation": saturation, "colour_jitter": colour_jitter, "grayscale": grayscale, "fade": fade,
    "hflip": hflip, "vflip": vflip, "rot90": rot90, "rot180": rot180, "rotate": rotate, "skew": skew,
    "perspective": perspective, "aspect": aspect, "center_crop": center_crop, "crop": crop,
    "pad": pad, "text": text, "emoji": emoji, "stripes": stripes, "meme": meme,
    "social_screenshot": social_screenshot, "paste_into": paste_into, "overlay": overlay,
}

# Compound edits users make, as fixed recipes (geometry first).
COMBOS: dict[str, tuple[str, ...]] = {
    "combo_centercrop_flip_bc_jpeg": ("center_crop", "hflip", "brightness_contrast", "jpeg"),
    "combo_downscale_rotate_text": ("downscale", "rotate", "text"),
    "combo_crop_text_jpeg": ("crop", "text", "jpeg"),
    "combo_flip_pad_colour": ("hflip", "pad", "colour_jitter"),
}
CHAIN = "chain_2_4"  # 2-4 distinct random singles, geometry first
_GEOMETRY = ("hflip", "vflip", "rot90", "rot180", "rotate", "skew", "perspective", "aspect",
             "center_crop", "crop", "downscale")
FAMILIES: tuple[str, ...] = tuple(SINGLES) + tuple(COMBOS) + (CHAIN,)


def _run(names: Sequence[str], img: np.ndarray, rng, others) -> np.ndarray:
    """Apply the singles in order; a result under 8 pixels a side is enlarged so the next has pixels."""
    for name in names:
        img = np.ascontiguousarray(SINGLES[name](img, rng, others))
        if min(img.shape[:2]) < 8:
            img = cv2.resize(img, (max(8, img.shape[1]), max(8, img.shape[0])))
    return img


def apply(name: str, img: np.ndarray, rng: np.random.Generator,
          others: Sequence[np.ndarray] = ()) -> tuple[np.ndarray, list[str]]:
    """Apply family ``name`` to an RGB uint8 array -> (edited array, the singles applied)."""
    if name == CHAIN:
        n = int(rng.integers(2, 5))
        names = sorted(rng.choice(list(SINGLES), size=n, replace=False).tolist(),
                       key=lambda f: 0 if f in _GEOMETRY else 1)
    elif name in COMBOS:
        names = list(COMBOS[name])
    elif name in SINGLES:
        names = [name]
    else:
        raise KeyError(f"unknown independent edit {name!r}; choose from {list(FAMILIES)}")
    return _run(names, np.ascontiguousarray(img, dtype=np.uint8), rng, others), names
