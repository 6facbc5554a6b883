"""The near-duplicate transform suite, shared by training and evaluation.

Every family is ``fn(img, rng, strength=1.0) -> img`` on RGB PIL images with a
``numpy.random.Generator``. ``strength=1`` samples the evaluation ranges; larger
values (up to 2) widen them towards harder edits, which training uses so the
model generalises beyond the exact benchmark ranges. PIL + numpy only.
"""
from __future__ import annotations

import io
import math
from typing import Callable

import numpy as np
from PIL import Image, ImageDraw, ImageEnhance, ImageFilter, ImageFont, ImageOps

Family = Callable[..., Image.Image]
_WORDS = ("LOL", "wow", "SALE", "breaking news", "when you", "me irl", "original", "no way", "2024",
          "repost", "look at this", "©", "share!", "omg", "TOP 10", "free", "nice", "copy", "@user")
_FONT_CACHE: dict[int, ImageFont.ImageFont] = {}


# ---------------------------------------------------------------- helpers
def _param(rng: np.random.Generator, lo: float, hi: float, wide_lo: float, wide_hi: float,
           strength: float) -> float:
    """Uniform in [lo, hi] at strength 1, widening linearly to [wide_lo, wide_hi] at strength 2."""
    t = float(np.clip(strength - 1.0, 0.0, 1.0))
    a, b = lo + (wide_lo - lo) * t, hi + (wide_hi - hi) * t
    return float(rng.uniform(min(a, b), max(a, b)))


def _font(size: int) -> ImageFont.ImageFont:
    """Pillow's bundled scalable font (Pillow >= 10.1 works offline)."""
    size = int(max(8, min(size, 200)))
    if size not in _FONT_CACHE:
        try:
            _FONT_CACHE[size] = ImageFont.load_default(size=size)
        except TypeError:  # very old Pillow: fixed bitmap font
            _FONT_CACHE[size] = ImageFont.load_default()
    return _FONT_CACHE[size]


def _colour(rng: np.random.Generator) -> tuple[int, int, int]:
    return tuple(int(c) for c in rng.integers(0, 256, 3))


def _text(rng: np.random.Generator) -> str:
    n = int(rng.integers(1, 4))
    return " ".join(str(rng.choice(_WORDS)) for _ in range(n))


def _rgb(img: Image.Image) -> Image.Image:
    return img if img.mode == "RGB" else img.convert("RGB")


# ---------------------------------------------------------------- families
def jpeg(img: Image.Image, rng: np.random.Generator, strength: float = 1.0) -> Image.Image:
    """Re-encode as JPEG at quality 10-20 (training: 5-60)."""
    q = int(round(_param(rng, 10, 20, 5, 60, strength)))
    buf = io.BytesIO()
    _rgb(img).save(buf, format="JPEG", quality=max(2, q))
    buf.seek(0)
    return Image.open(buf).convert("RGB")


def downscale(img: Image.Image, rng: np.random.Generator, strength: float = 1.0) -> Image.Image:
    """Shrink to 20-35% of the side (training: 12-60%)."""
    s = _param(rng, 0.20, 0.35, 0.12, 0.6, strength)
    w, h = img.size
    return img.resize((max(8, round(w * s)), max(8, round(h * s))), Image.BILINEAR)


def center_crop(img: Image.Image, rng: np.random.Generator, strength: float = 1.0) -> Image.Image:
    """Keep the central 60-75% of each side (training: 45-90%)."""
    s = _param(rng, 0.60, 0.75, 0.45, 0.9, strength)
    w, h = img.size
    cw, ch = max(8, round(w * s)), max(8, round(h * s))
    x, y = (w - cw) // 2, (h - ch) // 2
    return img.crop((x, y, x + cw, y + ch))


def random_crop(img: Image.Image, rng: np.random.Generator, strength: float = 1.0) -> Image.Image:
    """Crop a random window of 35-55% of the area, aspect 3:4..4:3 (training: 20-80%)."""
    area = _param(rng, 0.35, 0.55, 0.2, 0.8, strength)
    aspect = math.exp(rng.uniform(math.log(3 / 4), math.log(4 / 3)))
    w, h = img.size
    cw = int(min(w, round(math.sqrt(area * w * h * aspect))))
    ch = int(min(h, round(math.sqrt(area * w * h / aspect))))
    cw, ch = max(8, cw), max(8, ch)
    x = int(rng.integers(0, max(1, w - cw + 1)))
    y = int(rng.integers(0, max(1, h - ch + 1)))
    return img.crop((x, y, x + cw, y + ch))


def hflip(img: Image.Image, rng: np.random.Generator, strength: float = 1.0) -> Image.Image:
    """Mirror left-right."""
    return img.transpose(Image.FLIP_LEFT_RIGHT)


def rot90(img: Image.Image, rng: np.random.Generator, strength: float = 1.0) -> Image.Image:
    """Rotate by 90 or 270 degrees (training also 180 and vertical flips)."""
    ops = [Image.ROTATE_90, Image.ROTATE_270]
    if strength > 1.0:
        ops += [Image.ROTATE_180, Image.FLIP_TOP_BOTTOM, Image.TRANSPOSE]
    return img.transpose(ops[int(rng.integers(0, len(ops)))])


def rotate(img: Image.Image, rng: np.random.Generator, strength: float = 1.0) -> Image.Image:
    """Rotate by ±6-15 degrees with black fill (training: ±2-45)."""
    deg = _param(rng, 6, 15, 2, 45, strength) * (1 if rng.random() < 0.5 else -1)
    expand = bool(rng.random() < 0.5)
    return _rgb(img).rotate(deg, resample=Image.BILINEAR, expand=expand, fillcolor=(0, 0, 0))


def blur(img: Image.Image, rng: np.random.Generator, strength: float = 1.0) -> Image.Image:
    """Gaussian blur, radius 1.5-3% of the short side (training: 0.5-5%)."""
    r = _param(rng, 0.015, 0.03, 0.005, 0.05, strength) * min(img.size)
    return img.filter(ImageFilter.GaussianBlur(radius=max(0.5, r)))


def brightness_contrast(img: Image.Image, rng: np.random.Generator, strength: float = 1.0) -> Image.Image:
    """Scale brightness and contrast by 0.5-1.6 each (training: 0.3-2.0)."""
    b = _param(rng, 0.5, 1.6, 0.3, 2.0, strength)
    c = _param(rng, 0.5, 1.6, 0.3, 2.0, strength)
    return ImageEnhance.Contrast(ImageEnhance.Brightness(img).enhance(b)).enhance(c)


def grayscale(img: Image.Image, rng: np.random.Generator, strength: float = 1.0) -> Image.Image:
    """Drop colour (training sometimes adds a sepia-like tint)."""
    g = ImageOps.grayscale(img)
    if strength > 1.0 and rng.random() < 0.3:
        return ImageOps.colorize(g, black=(0, 0, 0), white=_colour(rng))
    return g.convert("RGB")


def text_overlay(img: Image.Image, rng: np.random.Generator, strength: float = 1.0) -> Image.Image:
    """Draw 1-3 captions in random colours, sizes and places."""
    out = _rgb(img).copy()
    d = ImageDraw.Draw(out)
    w, h = out.size
    for _ in range(int(rng.integers(1, 4 if strength <= 1 else 6))):
        size = int(h * _param(rng, 0.06, 0.14, 0.04, 0.22, strength))
        x, y = int(rng.integers(0, max(1, w * 3 // 4))), int(rng.integers(0, max(1, h - size)))
        d.text((x, y), _text(rng), fill=_colour(rng), font=_font(size),
               stroke_width=int(rng.integers(0, 3)), stroke_fill=_colour(rng))
    return out


def _emoji(d: ImageDraw.ImageDraw, cx: int, cy: int, r: int, rng: np.random.Generator) -> None:
    kind = int(rng.integers(0, 4))
    fill = _colour(rng) if kind else (255, 204, 0)
    box = (cx - r, cy - r, cx + r, cy + r)
    if kind == 0:  # smiley
        d.ellipse(box, fill=fill, outline=(0, 0, 0), width=max(1, r // 10))
        e = max(1, r // 5)
        for ex in (cx - r // 3, cx + r // 3):
            d.ellipse((ex - e, cy - r // 3 - e, ex + e, cy - r // 3 + e), fill=(0, 0, 0))
        d.arc((cx - r // 2, cy - r // 4, cx + r // 2, cy + r // 2), 20, 160, fill=(0, 0, 0), width=max(1, r // 8))
    elif kind == 1:  # heart
        d.ellipse((cx - r, cy - r // 2, cx, cy + r // 3), fill=fill)
        d.ellipse((cx, cy - r // 2, cx + r, cy + r // 3), fill=fill)
        d.polygon([(cx - r, cy), (cx + r, cy), (cx, cy + r)], fill=fill)
    elif kind == 2:  # star
        pts = [(cx + (r if i % 2 == 0 else r // 2) * math.cos(math.pi * i / 5 - math.pi / 2),
                cy + (r if i % 2 == 0 else r // 2) * math.sin(math.pi * i / 5 - math.pi / 2)) for i in range(10)]
        d.polygon(pts, fill=fill)
    else:  # rectangle / sticker
        d.rounded_rectangle(box, radius=max(1, r // 3), fill=fill, outline=_colour(rng), width=max(1, r // 8))


def shape_overlay(img: Image.Image, rng: np.random.Generator, strength: float = 1.0) -> Image.Image:
    """Paste 1-4 emoji-like shapes (smiley, heart, star, sticker), optionally translucent."""
    base = _rgb(img).convert("RGBA")
    layer = Image.new("RGBA", base.size, (0, 0, 0, 0))
    d = ImageDraw.Draw(layer)
    w, h = base.size
    for _ in range(int(rng.integers(1, 5 if strength <= 1 else 7))):
        r = max(4, int(min(w, h) * _param(rng, 0.06, 0.16, 0.04, 0.25, strength)))
        _emoji(d, int(rng.integers(0, w)), int(rng.integers(0, h)), r, rng)
    if rng.random() < 0.3:
        alpha = np.asarray(layer.getchannel("A"), dtype=np.float32) * rng.uniform(0.5, 0.9)
        layer.putalpha(Image.fromarray(alpha.astype(np.uint8)))
    return Image.alpha_composite(base, layer).convert("RGB")


def pad(img: Image.Image, rng: np.random.Generator, strength: float = 1.0) -> Image.Image:
    """Add coloured borders of 10-30% of the side, possibly uneven (training: 3-50%)."""
    w, h = img.size
    frac = _param(rng, 0.10, 0.30, 0.03, 0.5, strength)
    weights = rng.dirichlet(np.ones(4)) * 2 if rng.random() < 0.5 else np.full(4, 0.5)
    l, t, r, b = (int(frac * s * k) for s, k in zip((w, h, w, h), weights))
    colour = _colour(rng) if rng.random() < 0.8 else (0, 0, 0)
    out = Image.new("RGB", (w + l + r, h + t + b), colour)
    out.paste(_rgb(img), (l, t))
    return out


def meme(img: Image.Image, rng: np.random.Generator, strength: float = 1.0) -> Image.Image:
    """Add white or black bands above and/or below with big caption text."""
    w, h = img.size
    band = max(12, int(h * _param(rng, 0.15, 0.30, 0.08, 0.4, strength)))
    bg, fg = ((255, 255, 255), (0, 0, 0)) if rng.random() < 0.6 else ((0, 0, 0), (255, 255, 255))
    where = int(rng.integers(0, 3))  # 0 top, 1 bottom, 2 both
    top = band if where in (0, 2) else 0
    bottom = band if where in (1, 2) else 0
    out = Image.new("RGB", (w, h + top + bottom), bg)
    out.paste(_rgb(img), (0, top))
    d = ImageDraw.Draw(out)
    font = _font(int(band * 0.55))
    for y0, present in ((0, top), (h + top, bottom)):
        if present:
            text = _text(rng).upper()
            tw = d.textlength(text, font=font)
            d.text((max(2, (w - tw) / 2), y0 + band * 0.2), text, fill=fg, font=font)
    return out


def screenshot(img: Image.Image, rng: np.random.Generator, strength: float = 1.0) -> Image.Image:
    """Embed the image in a fake app window/phone UI: title bar, side panels, text lines."""
    w, h = img.size
    scale = _param(rng, 0.55, 0.8, 0.35, 0.9, strength)  # share of the canvas side the image takes
    cw, ch = int(w / scale), int(h / scale)
    bg = (250, 250, 250) if rng.random() < 0.6 else (30, 30, 34)
    fg = (60, 60, 60) if bg[0] > 128 else (200, 200, 200)
    out = Image.new("RGB", (cw, ch), bg)
    d = ImageDraw.Draw(out)
    bar = max(8, int(ch * rng.uniform(0.05, 0.1)))
    d.rectangle((0, 0, cw, bar), fill=_colour(rng))  # title / status bar
    for i in range(3):
        rr = max(2, bar // 4)
        d.ellipse((6 + i * 3 * rr, bar // 2 - rr, 6 + i * 3 * rr + 2 * rr, bar // 2 + rr), fill=_colour(rng))
    d.rectangle((0, ch - bar, cw, ch), fill=tuple(int(c * 0.9) for c in bg))  # bottom nav
    x = int(rng.integers(0, max(1, cw - w + 1)))
    y = int(np.clip(rng.integers(bar, max(bar + 1, ch - h - bar + 1)), 0, max(0, ch - h)))
    out.paste(_rgb(img), (x, y))
    font = _font(max(8, bar // 2))
    for ty in range(bar + 4, ch - bar, max(10, bar)):  # text lines in the free space
        if ty + bar // 2 < y or ty > y + h:
            d.text((8, ty), _text(rng), fill=fg, font=font)
    return out


def perspective(img: Image.Image, rng: np.random.Generator, strength: float = 1.0) -> Image.Image:
    """Projective warp moving each corner by up to 8-20% of the side (training: 4-30%)."""
    w, h = img.size
    m = _param(rng, 0.08, 0.20, 0.04, 0.3, strength)
    src = [(0, 0), (w, 0), (w, h), (0, h)]
    dst = [(x + rng.uniform(0, m) * w * (1 if x == 0 else -1),
            y + rng.uniform(0, m) * h * (1 if y == 0 else -1)) for x, y in src]
    coeffs = _perspective_coeffs(dst, src)
    return _rgb(img).transform((w, h), Image.PERSPECTIVE, coeffs, Image.BILINEAR, fillcolor=(0, 0, 0))


def _perspective_coeffs(dst: list, src: list) -> list[float]:
    """Coefficients mapping output points ``dst`` to input points ``src`` for PIL.PERSPECTIVE."""
    a = []
    for (x, y), (u, v) in zip(dst, src):
        a.append([x, y, 1, 0, 0, 0, -u * x, -u * y])
        a.append([0, 0, 0, x, y, 1, -v * x, -v * y])
    b = np.array(src, dtype=np.float64).reshape(8)
    return np.linalg.solve(np.array(a, dtype=np.float64), b).tolist()


def noise(img: Image.Image, rng: np.random.Generator, strength: float = 1.0) -> Image.Image:
    """Additive Gaussian noise, sigma 10-30 grey levels (training: 5-45), sometimes salt-and-pepper."""
    a = np.asarray(_rgb(img), dtype=np.float32)
    sigma = _param(rng, 10, 30, 5, 45, strength)
    a = a + rng.normal(0, sigma, a.shape).astype(np.float32)
    if strength > 1.0 and rng.random() < 0.2:
        mask = rng.random(a.shape[:2]) < 0.02
        a[mask] = rng.choice([0.0, 255.0], size=(int(mask.sum()), 1))
    return Image.fromarray(np.clip(a, 0, 255).astype(np.uint8))


def stretch(img: Image.Image, rng: np.random.Generator, strength: float = 1.0) -> Image.Image:
    """Change the aspect ratio by a factor 1.3-1.8 along one axis (training: 1.1-2.2)."""
    f = _param(rng, 1.3, 1.8, 1.1, 2.2, strength)
    w, h = img.size
    size = (round(w * f), h) if rng.random() < 0.5 else (w, round(h * f))
    if rng.random() < 0.5:  # squeeze instead of stretch
        size = (max(8, round(size[0] / f)), max(8, round(size[1] / f)))
    return img.resize(size, Image.BILINEAR)


def hue_shift(img: Image.Image, rng: np.random.Generator, strength: float = 1.0) -> Image.Image:
    """Rotate hue by 20-160 degrees and scale saturation (training: up to 180, stronger saturation change)."""
    hsv = np.asarray(_rgb(img).convert("HSV"), dtype=np.int16).copy()
    shift = int(_param(rng, 20, 160, 10, 180, strength) / 360 * 256) * (1 if rng.random() < 0.5 else -1)
    hsv[..., 0] = (hsv[..., 0] + shift) % 256
    sat = _param(rng, 0.8, 1.3, 0.4, 1.8, strength)
    hsv[..., 1] = np.clip(hsv[..., 1] * sat, 0, 255)
    return Image.fromarray(hsv.astype(np.uint8), "HSV").convert("RGB")


def fade(img: Image.Image, rng: np.random.Generator, strength: float = 1.0) -> Image.Image:
    """Blend 30-60% toward white or black (training: 15-80%, sometimes toward any colour)."""
    a = _param(rng, 0.30, 0.60, 0.15, 0.80, strength)
    colour = (255, 255, 255) if rng.random() < 0.6 else (0, 0, 0)
    if strength > 1.0 and rng.random() < 0.3:
        colour = _colour(rng)
    img = _rgb(img)
    return Image.blend(img, Image.new("RGB", img.size, colour), a)


def vflip(img: Image.Image, rng: np.random.Generator, strength: float = 1.0) -> Image.Image:
    """Mirror top-bottom (training also turns by 180 degrees)."""
    if strength > 1.0 and rng.random() < 0.5:
        return img.transpose(Image.ROTATE_180)
    return img.transpose(Image.FLIP_TOP_BOTTOM)


FAMILIES: dict[str, Family] = {
    "jpeg": jpeg, "downscale": downscale, "center_crop": center_crop, "random_crop": random_crop,
    "hflip": hflip, "rot90": rot90, "rotate": rotate, "blur": blur,
    "brightness_contrast": brightness_contrast, "grayscale": grayscale, "text_overlay": text_overlay,
    "shape_overlay": shape_overlay, "pad": pad, "meme": meme, "screenshot": screenshot,
    "perspective": perspective, "noise": noise, "stretch": stretch, "hue_shift": hue_shift,
    "fade": fade, "vflip": vflip,
}

# Evaluation combinations: (name, families applied in order).
COMBOS: dict[str, tuple[str, ...]] = {
    "combo_crop_text_jpeg": ("random_crop", "text_overlay", "jpeg"),
    "combo_flip_pad_color": ("hflip", "pad", "brightness_contrast"),
}

# Families that change geometry strongly; random_edit applies them first, pixel edits after.
_GEOMETRIC = ("center_crop", "random_crop", "hflip", "vflip", "rot90", "rotate", "perspective", "stretch")


def apply_family(name: str, img: Image.Image, rng: np.random.Generator, strength: float = 1.0) -> Image.Image:
    """Apply one family (or an evaluation combo) by name; raises KeyError for an unknown name."""
    if name in COMBOS:
        for fam in COMBOS[name]:
            img = FAMILIES[fam](img, rng, strength)
        return _rgb(img)
    if name not in FAMILIES:
        raise KeyError(f"unknown edit family {name!r}; choose from {sorted(FAMILIES) + sorted(COMBOS)}")
    return _rgb(FAMILIES[name](_rgb(img), rng, strength))


def random_edit(img: Image.Image, rng: np.random.Generator, strength: float = 1.0,
                n_min: int = 1, n_max: int = 3) -> tuple[Image.Image, list[str]]:
    """Compose n_min..n_max distinct random families (geometry first); returns the image and the names."""
    n = int(rng.integers(n_min, n_max + 1))
    names = list(rng.choice(list(FAMILIES), size=n, replace=False))
    names.sort(key=lambda f: 0 if f in _GEOMETRIC else 1)
    for f in names:
        img = _rgb(FAMILIES[f](_rgb(img), rng, strength))
        if min(img.size) < 8:  # keep degenerate sizes out
            img = img.resize((max(8, img.size[0]), max(8, img.size[1])))
    return img, [str(f) for f in names]
