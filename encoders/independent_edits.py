"""The independent edit suite: copies made the way users and the DISC21 queries make them,
written apart from the training suite (``encoders.augment``) so validation cannot flatter it.

Pixel and geometric edits come from albumentations; composites (text, emoji, stripes, memes, a
social-media post, a photo pasted into another) are drawn with OpenCV. Training never imports
this module (a test checks), and no parameter here was copied from ``encoders.augment``: the
strengths follow what users do (fades to 40-70% opacity, crops to half of each side, turns up
to 45 degrees, chains of 2-4 edits).

Every family is ``fn(rgb, rng, others) -> rgb`` on uint8 (H, W, 3) arrays; ``others`` are photos
that are not in the index, used as backgrounds and as pasted-over content.
"""
from __future__ import annotations

from typing import Callable, Sequence

import albumentations as A
import cv2
import numpy as np

Edit = Callable[[np.ndarray, np.random.Generator, Sequence[np.ndarray]], np.ndarray]
_WORDS = ("wait for it", "NO WAY", "repost", "me when", "classic", "#tbt", "so true", "look",
          "first time?", "BIG NEWS", "link in bio", "credit: unknown", "lmao", "mood", "2025")
_FONTS = (cv2.FONT_HERSHEY_SIMPLEX, cv2.FONT_HERSHEY_DUPLEX, cv2.FONT_HERSHEY_TRIPLEX,
          cv2.FONT_HERSHEY_COMPLEX, cv2.FONT_HERSHEY_PLAIN)


def _alb(transform: A.BasicTransform, img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Run one albumentations transform, seeded from ``rng`` so a benchmark is reproducible."""
    pipe = A.Compose([transform], seed=int(rng.integers(0, 2**31 - 1)))
    return pipe(image=img)["image"]


def _u(rng: np.random.Generator, lo: float, hi: float) -> float:
    return float(rng.uniform(lo, hi))


def _colour(rng: np.random.Generator) -> tuple[int, int, int]:
    return tuple(int(c) for c in rng.integers(0, 256, 3))


def _caption(rng: np.random.Generator) -> str:
    return " ".join(str(w) for w in rng.choice(_WORDS, size=int(rng.integers(1, 3))))


def _put_text(img: np.ndarray, text: str, org: tuple[int, int], height: int, colour, rng,
              outline: bool = True) -> None:
    font = _FONTS[int(rng.integers(0, len(_FONTS)))]
    scale = max(0.3, height / 22.0)
    thick = max(1, int(height / 12))
    if outline:
        cv2.putText(img, text, org, font, scale, (0, 0, 0), thick + 2, cv2.LINE_AA)
    cv2.putText(img, text, org, font, scale, colour, thick, cv2.LINE_AA)


def _fit(other: np.ndarray, w: int, h: int) -> np.ndarray:
    return cv2.resize(other, (max(1, w), max(1, h)), interpolation=cv2.INTER_AREA)


def _other(rng: np.random.Generator, others: Sequence[np.ndarray]) -> np.ndarray:
    if not others:  # no pool given: a smooth random gradient stands in for a photo
        g = np.linspace(0, 1, 256, dtype=np.float32)
        a, b = np.array(_colour(rng), np.float32), np.array(_colour(rng), np.float32)
        row = (a[None] * (1 - g[:, None]) + b[None] * g[:, None]).astype(np.uint8)
        return np.repeat(row[None], 256, axis=0)
    return others[int(rng.integers(0, len(others)))]


# ---------------------------------------------------------------- pixel edits (albumentations)
def jpeg(img, rng, others=()):
    """JPEG re-encode at quality 5-20."""
    return _alb(A.ImageCompression(quality_range=(5, 20), p=1), img, rng)


def downscale(img, rng, others=()):
    """Shrink to 18-35% of each side (stored small, as a thumbnail)."""
    s = _u(rng, 0.18, 0.35)
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
    s = _u(rng, 0.08, 0.2)
    nearest = {"downscale": cv2.INTER_NEAREST, "upscale": cv2.INTER_NEAREST}
    return _alb(A.Downscale(scale_range=(s, s), interpolation_pair=nearest, p=1), img, rng)


def brightness_contrast(img, rng, others=()):
    """Brightness x0.4-1.8 and contrast x0.3-1.8 together (either side of 1)."""
    b = _u(rng, 0.4, 0.7) if rng.random() < 0.5 else _u(rng, 1.4, 1.8)
    c = _u(rng, 0.3, 0.6) if rng.random() < 0.5 else _u(rng, 1.4, 1.8)
    return _alb(A.ColorJitter(brightness=(b, b), contrast=(c, c), saturation=(1, 1), hue=(0, 0), p=1),
                img, rng)


def gamma(img, rng, others=()):
    """Gamma 0.4-0.6 or 1.7-2.5."""
    g = _u(rng, 40, 60) if rng.random() < 0.5 else _u(rng, 170, 250)
    return _alb(A.RandomGamma(gamma_limit=(g, g), p=1), img, rng)


def saturation(img, rng, others=()):
    """Saturation x0-0.3 or x1.8-2.5."""
    s = _u(rng, 0.0, 0.3) if rng.random() < 0.5 else _u(rng, 1.8, 2.5)
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
    a = _u(rng, 0.4, 0.7)
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
    deg = _u(rng, 8, 45) * (1 if rng.random() < 0.5 else -1)
    border = cv2.BORDER_CONSTANT if rng.random() < 0.6 else cv2.BORDER_REFLECT_101
    return _alb(A.Rotate(limit=(deg, deg), border_mode=border, fill=0, p=1), img, rng)


def skew(img, rng, others=()):
    """Sheared by 12-25 degrees along one axis."""
    s = _u(rng, 12, 25) * (1 if rng.random() < 0.5 else -1)
    shear = {"x": (s, s), "y": (0, 0)} if rng.random() < 0.5 else {"x": (0, 0), "y": (s, s)}
    return _alb(A.Affine(shear=shear, fit_output=True, border_mode=cv2.BORDER_CONSTANT, fill=0, p=1),
                img, rng)


def perspective(img, rng, others=()):
    """A photo of the photo: projective warp of 6-14% per corner."""
    return _alb(A.Perspective(scale=(0.06, 0.14), fit_output=True, fill=0, p=1), img, rng)


def aspect(img, rng, others=()):
    """One axis stretched x1.4-2 or squeezed x0.5-0.7."""
    f = _u(rng, 1.4, 2.0) if rng.random() < 0.5 else _u(rng, 0.5, 0.7)
    h, w = img.shape[:2]
    size = (max(8, int(w * f)), h) if rng.random() < 0.5 else (w, max(8, int(h * f)))
    return cv2.resize(img, size, interpolation=cv2.INTER_LINEAR)


def center_crop(img, rng, others=()):
    """The central 55-75% of each side."""
    s = _u(rng, 0.55, 0.75)
    h, w = img.shape[:2]
    return _alb(A.CenterCrop(height=max(8, int(h * s)), width=max(8, int(w * s)), p=1), img, rng)


def crop(img, rng, others=()):
    """A window of 50-70% of each side, anywhere in the photo."""
    h, w = img.shape[:2]
    ch, cw = max(8, int(h * _u(rng, 0.5, 0.7))), max(8, int(w * _u(rng, 0.5, 0.7)))
    return _alb(A.RandomCrop(height=ch, width=cw, p=1), img, rng)


def pad(img, rng, others=()):
    """A plain border of 8-30% of each side (uneven), any colour."""
    h, w = img.shape[:2]
    t, b = (int(h * _u(rng, 0.0, 0.3)) for _ in range(2))
    left, right = (int(w * _u(rng, 0.0, 0.3)) for _ in range(2))
    t = max(t, int(h * 0.08))
    return cv2.copyMakeBorder(img, t, b, left, right, cv2.BORDER_CONSTANT, value=_colour(rng))


# ---------------------------------------------------------------- composites (OpenCV drawing)
def text(img, rng, others=()):
    """1-3 captions of 6-14% of the height, anywhere."""
    out = img.copy()
    h, w = out.shape[:2]
    for _ in range(int(rng.integers(1, 4))):
        size = max(8, int(h * _u(rng, 0.06, 0.14)))
        org = (int(rng.integers(0, max(1, w // 2))), int(rng.integers(size, max(size + 1, h))))
        _put_text(out, _caption(rng), org, size, _colour(rng), rng)
    return out


def emoji(img, rng, others=()):
    """1-4 stickers (faces, blobs, badges) of 8-25% of the short side."""
    out = img.copy()
    h, w = out.shape[:2]
    for _ in range(int(rng.integers(1, 5))):
        r = max(4, int(min(h, w) * _u(rng, 0.04, 0.125)))
        cx, cy = int(rng.integers(0, w)), int(rng.integers(0, h))
        colour = _colour(rng)
        if rng.random() < 0.5:
            cv2.circle(out, (cx, cy), r, colour, -1, cv2.LINE_AA)
            cv2.circle(out, (cx - r // 3, cy - r // 4), max(1, r // 7), (0, 0, 0), -1)
            cv2.circle(out, (cx + r // 3, cy - r // 4), max(1, r // 7), (0, 0, 0), -1)
            cv2.ellipse(out, (cx, cy + r // 6), (r // 2, r // 3), 0, 0, 180, (0, 0, 0), max(1, r // 10))
        else:
            pts = rng.normal(0, r * 0.6, size=(7, 2)).astype(np.int32) + np.array([cx, cy], np.int32)
            cv2.fillPoly(out, [cv2.convexHull(pts)], colour, cv2.LINE_AA)
    return out


def stripes(img, rng, others=()):
    """Semi-transparent parallel stripes across the whole photo."""
    h, w = img.shape[:2]
    layer = img.copy()
    gap = max(4, int(min(h, w) * _u(rng, 0.05, 0.12)))
    thick = max(1, int(gap * _u(rng, 0.2, 0.5)))
    colour = _colour(rng)
    horizontal = rng.random() < 0.5
    for p in range(0, h if horizontal else w, gap):
        a, b = ((0, p), (w, p)) if horizontal else ((p, 0), (p, h))
        cv2.line(layer, a, b, colour, thick)
    alpha = _u(rng, 0.4, 0.8)
    return cv2.addWeighted(layer, alpha, img, 1 - alpha, 0)


def meme(img, rng, others=()):
    """Caption bands of 12-25% of the height above and/or below, impact-style text."""
    h, w = img.shape[:2]
    band = max(12, int(h * _u(rng, 0.12, 0.25)))
    white = rng.random() < 0.5
    top, bottom = (band, band) if rng.random() < 0.4 else ((band, 0) if rng.random() < 0.5 else (0, band))
    out = cv2.copyMakeBorder(img, top, bottom, 0, 0, cv2.BORDER_CONSTANT,
                             value=(255, 255, 255) if white else (0, 0, 0))
    ink = (0, 0, 0) if white else (255, 255, 255)
    for y0, on in ((0, top), (top + h, bottom)):
        if on:
            _put_text(out, _caption(rng).upper(), (int(w * 0.05), y0 + int(band * 0.7)), int(band * 0.5), ink,
                      rng, outline=False)
    return out


def _story(img, rng):
    """A phone story: the photo across a 9:16 canvas filled by its own blurred, darkened zoom,
    with an avatar and name on top, action icons down the right and a caption at the bottom."""
    h, w = img.shape[:2]
    cw = w
    ch = int(cw * 16 / 9)
    bg = cv2.GaussianBlur(_fit(img, cw, ch), (0, 0), sigmaX=max(2.0, cw / 25))
    out = (bg.astype(np.float32) * _u(rng, 0.4, 0.8)).astype(np.uint8)
    f = min(cw * _u(rng, 0.8, 1.0) / w, ch * 0.9 / h)
    pw, ph = max(8, int(w * f)), max(8, int(h * f))
    y0 = (ch - ph) // 2 + int(rng.integers(-ch // 12, ch // 12 + 1))
    y0 = int(np.clip(y0, 0, ch - ph))
    out[y0:y0 + ph, (cw - pw) // 2:(cw - pw) // 2 + pw] = _fit(img, pw, ph)
    unit = max(6, cw // 16)
    cv2.circle(out, (unit * 2, unit * 2), unit, _colour(rng), -1, cv2.LINE_AA)
    _put_text(out, "@" + str(rng.choice(_WORDS)).replace(" ", "_").lower()[:12], (unit * 4, unit * 2 + unit // 3),
              int(unit * 0.9), (255, 255, 255), rng)
    for i in range(4):
        cv2.circle(out, (cw - unit * 2, ch // 2 + i * 3 * unit), unit, (255, 255, 255), max(1, unit // 6), cv2.LINE_AA)
    _put_text(out, _caption(rng), (unit, ch - 2 * unit), int(unit * 0.9), (255, 255, 255), rng)
    return out


def social_screenshot(img, rng, others=()):
    """A social-media post around the photo: status bar, avatar and name, the photo, a row of
    action icons and caption lines, light or dark theme, on a phone-width canvas; or (40%) a
    phone story, the photo over its own blurred zoom with the UI drawn on top."""
    if rng.random() < 0.4:
        return _story(img, rng)
    h, w = img.shape[:2]
    cw = int(w / _u(rng, 0.45, 1.0))  # the photo spans 45-100% of the post's width
    head, foot = int(cw * _u(rng, 0.14, 0.22)), int(cw * _u(rng, 0.25, 0.45))
    dark = rng.random() < 0.4
    bg, ink = ((16, 16, 20), (230, 230, 230)) if dark else ((255, 255, 255), (30, 30, 30))
    out = np.full((head + h + foot, cw, 3), bg, np.uint8)
    unit = max(6, head // 4)
    cv2.rectangle(out, (0, 0), (cw, unit), tuple(int(c * 0.9) for c in bg), -1)  # status bar
    _put_text(out, "9:41", (unit // 2, int(unit * 0.8)), int(unit * 0.7), ink, rng, outline=False)
    cy = unit + (head - unit) // 2
    cv2.circle(out, (unit + unit // 2, cy), unit // 1, _colour(rng), -1, cv2.LINE_AA)  # avatar
    _put_text(out, "@" + str(rng.choice(_WORDS)).replace(" ", "_").lower()[:12],
              (3 * unit, cy + unit // 3), int(unit * 0.8), ink, rng, outline=False)
    x0 = int(rng.integers(0, cw - w + 1))
    out[head:head + h, x0:x0 + w] = img
    y = head + h + unit
    for i in range(4):  # like / comment / share / save
        cv2.circle(out, (unit + i * 3 * unit, y), unit // 2 + 1, ink, max(1, unit // 8), cv2.LINE_AA)
    y += 2 * unit
    while y < head + h + foot - unit // 2:
        _put_text(out, _caption(rng), (unit // 2, y), int(unit * 0.7), ink, rng, outline=False)
        y += int(unit * 1.3)
    return out


def paste_into(img, rng, others=()):
    """The photo shrunk to 40-70% of another photo's side and pasted onto it."""
    bg = _other(rng, others)
    bh, bw = bg.shape[:2]
    side = max(bh, bw, 256)
    bg = _fit(bg, int(side * bw / max(bh, bw)), int(side * bh / max(bh, bw)))
    bh, bw = bg.shape[:2]
    h, w = img.shape[:2]
    f = _u(rng, 0.4, 0.7) * min(bw / w, bh / h)
    pw, ph = max(8, int(w * f)), max(8, int(h * f))
    x, y = int(rng.integers(0, bw - pw + 1)), int(rng.integers(0, bh - ph + 1))
    out = bg.copy()
    out[y:y + ph, x:x + pw] = _fit(img, pw, ph)
    return out


def overlay(img, rng, others=()):
    """Another photo pasted over 30-50% of this one's area."""
    h, w = img.shape[:2]
    area = _u(rng, 0.3, 0.5)
    aspect = _u(rng, 0.6, 1.6)
    pw = int(min(w, np.sqrt(area * w * h * aspect)))
    ph = int(min(h, area * w * h / max(1, pw)))
    out = img.copy()
    x, y = int(rng.integers(0, w - pw + 1)), int(rng.integers(0, h - ph + 1))
    out[y:y + ph, x:x + pw] = _fit(_other(rng, others), pw, ph)
    return out


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
