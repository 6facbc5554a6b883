"""The AugLy edit suite: copies made with AugLy, the library the DISC21 (ISC 2021) queries were made with.

A third implementation beside training (``encoders.augment``) and the independent suite
(``encoders.independent_edits``, albumentations and OpenCV): the same kinds of edit, drawn by
another library's code, with its fonts, emoji and screenshot templates. A model or a constant
that only fits one implementation's pixels shows it here. Training never imports this module
(a test checks).

Strengths are DISC21's, as users apply them: fades to 30-60% opacity over white, crops keeping
half to 70% of each side, turns up to 45 degrees, the photo pasted at 40-70% of its size onto
another photo, another photo over 30-50% of it, JPEG quality 5-15, and random chains of 2-4 edits
in random order.

Every family is ``fn(PIL RGB image, rng, others) -> PIL image``; ``others`` are photos that are
not in the index (uint8 arrays), used as backgrounds and as pasted-over content. AugLy needs the
``eval`` extra (``pip install 'neardup[eval]'``).
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

Edit = Callable[[Image.Image, np.random.Generator, Sequence[np.ndarray]], Image.Image]
_WORDS = ("LOL", "WHEN YOU", "SO TRUE", "MONDAY", "ME IRL", "NOPE", "WAIT FOR IT", "BEST DAY EVER")


def _augly():
    """``augly.image.functional``, with Pillow 10's removed ``getsize_multiline`` put back (AugLy
    1.0's meme caption measures its text with it)."""
    try:
        import augly.image.functional as F
    except ImportError as exc:
        raise RuntimeError("the augly edit suite needs AugLy: pip install 'neardup[eval]'") from exc
    if not hasattr(ImageFont.FreeTypeFont, "getsize_multiline"):
        def getsize_multiline(font, text, spacing=4, **_):
            box = ImageDraw.Draw(Image.new("L", (1, 1))).multiline_textbbox((0, 0), text, font=font, spacing=spacing)
            return box[2], box[3]
        ImageFont.FreeTypeFont.getsize_multiline = getsize_multiline
    return F


def _assets() -> Path:
    import augly
    return Path(augly.__file__).parent / "assets"


def _u(rng: np.random.Generator, lo: float, hi: float) -> float:
    return float(rng.uniform(lo, hi))


def _colour(rng: np.random.Generator) -> tuple[int, int, int]:
    return tuple(int(c) for c in rng.integers(0, 256, 3))


def _other(rng: np.random.Generator, others: Sequence[np.ndarray]) -> Image.Image:
    """A photo not in the index (read through ``others[i]`` so the benchmark records which)."""
    return Image.fromarray(others[int(rng.integers(0, len(others)))]).convert("RGB")


def opacity(img, rng, others):
    """Faded: the photo at 30-60% opacity over white."""
    faded = _augly().opacity(img.convert("RGBA"), level=_u(rng, 0.3, 0.6))
    return Image.alpha_composite(Image.new("RGBA", faded.size, (255, 255, 255, 255)), faded).convert("RGB")


def screenshot(img, rng, others):
    """Inside AugLy's web or phone screenshot template."""
    template = str(rng.choice(["web.png", "mobile.png"]))
    root = _assets() / "screenshot_templates"
    return _augly().overlay_onto_screenshot(img, template_filepath=str(root / template),
                                            template_bboxes_filepath=str(root / "bboxes.json"),
                                            crop_src_to_fit=bool(rng.integers(0, 2)))


def meme(img, rng, others):
    """A meme caption above the photo."""
    return _augly().meme_format(img, text=str(rng.choice(_WORDS)), text_color=_colour(rng),
                                meme_bg_color=_colour(rng), caption_height=max(40, int(img.height * _u(rng, 0.15, 0.3))))


def emoji(img, rng, others):
    """An emoji covering 20-40% of the height, anywhere."""
    paths = sorted((_assets() / "twemojis").rglob("*.png"))
    size = _u(rng, 0.2, 0.4)
    return _augly().overlay_emoji(img, emoji_path=str(paths[int(rng.integers(0, len(paths)))]), emoji_size=size,
                                  opacity=_u(rng, 0.7, 1.0), x_pos=_u(rng, 0, 1 - size), y_pos=_u(rng, 0, 1 - size))


def text(img, rng, others):
    """A line of random characters in one of AugLy's fonts (another font where Pillow's text
    layout refuses one: a few of AugLy's fonts fail under libraqm)."""
    fonts = sorted(p for p in (_assets() / "fonts").glob("*.ttf") if p.with_suffix(".pkl").exists())
    chars = [int(c) for c in rng.integers(0, 100, int(rng.integers(5, 15)))]
    size, alpha, colour, x, y = _u(rng, 0.1, 0.25), _u(rng, 0.6, 1.0), _colour(rng), _u(rng, 0, 0.4), _u(rng, 0, 0.8)
    for font in rng.choice(fonts, size=8, replace=False):
        try:
            return _augly().overlay_text(img, text=chars, font_file=str(font), font_size=size, opacity=alpha,
                                         color=colour, x_pos=x, y_pos=y)
        except (OSError, RuntimeError):
            continue
    raise OSError("no AugLy font could lay out the text")


def stripes(img, rng, others):
    """Stripes across the photo."""
    return _augly().overlay_stripes(img, line_width=_u(rng, 0.1, 0.5), line_color=_colour(rng),
                                    line_angle=_u(rng, -90, 90), line_density=_u(rng, 0.3, 0.8),
                                    line_type=str(rng.choice(["solid", "dotted", "dashed"])),
                                    line_opacity=_u(rng, 0.5, 1.0))


def paste_into(img, rng, others):
    """The photo at 40-70% of the size of another photo, pasted onto it."""
    size = _u(rng, 0.4, 0.7)
    return _augly().overlay_onto_background_image(img, background_image=_other(rng, others), overlay_size=size,
                                                  x_pos=_u(rng, 0, 1 - size), y_pos=_u(rng, 0, 1 - size))


def overlay(img, rng, others):
    """Another photo pasted over 30-50% of the photo's width."""
    size = _u(rng, 0.3, 0.5)
    return _augly().overlay_image(img, overlay=_other(rng, others), overlay_size=size, opacity=1.0,
                                  x_pos=_u(rng, 0, 1 - size), y_pos=_u(rng, 0, 1 - size))


def crop(img, rng, others):
    """A crop keeping 50-70% of each side, anywhere."""
    w, h = _u(rng, 0.5, 0.7), _u(rng, 0.5, 0.7)
    x, y = _u(rng, 0, 1 - w), _u(rng, 0, 1 - h)
    return _augly().crop(img, x1=x, y1=y, x2=x + w, y2=y + h)


def rotate(img, rng, others):
    """Turned by 10-45 degrees either way (AugLy crops to the largest upright rectangle)."""
    return _augly().rotate(img, degrees=_u(rng, 10, 45) * float(rng.choice([-1, 1])))


def _simple(name: str, **draws: Callable[[np.random.Generator], object]) -> Edit:
    """An AugLy function whose keyword arguments are drawn from the rng."""
    def edit(img, rng, others):
        return getattr(_augly(), name)(img, **{k: draw(rng) for k, draw in draws.items()})
    edit.__name__ = name
    return edit


SINGLES: dict[str, Edit] = {
    "opacity": opacity, "screenshot": screenshot, "meme": meme, "emoji": emoji, "text": text,
    "stripes": stripes, "paste_into": paste_into, "overlay": overlay, "crop": crop, "rotate": rotate,
    "hflip": _simple("hflip"), "vflip": _simple("vflip"), "grayscale": _simple("grayscale"),
    "pixelization": _simple("pixelization", ratio=lambda r: _u(r, 0.1, 0.4)),
    "noise": _simple("random_noise", var=lambda r: _u(r, 0.01, 0.05), seed=lambda r: int(r.integers(0, 2**31))),
    "sharpen": _simple("sharpen", factor=lambda r: _u(r, 2, 20)),
    "blur": _simple("blur", radius=lambda r: _u(r, 1, 5)),
    "jpeg": _simple("encoding_quality", quality=lambda r: int(r.integers(5, 16))),
    "colour_jitter": _simple("color_jitter", brightness_factor=lambda r: _u(r, 0.5, 1.6),
                             contrast_factor=lambda r: _u(r, 0.5, 1.6), saturation_factor=lambda r: _u(r, 0, 2.5)),
    "pad": _simple("pad", w_factor=lambda r: _u(r, 0.1, 0.5), h_factor=lambda r: _u(r, 0.1, 0.5), color=_colour),
    "skew": _simple("skew", skew_factor=lambda r: _u(r, -0.8, 0.8), axis=lambda r: int(r.integers(0, 2))),
    "aspect": _simple("change_aspect_ratio", ratio=lambda r: float(np.exp(r.uniform(np.log(0.5), np.log(2))))),
    "scale": _simple("scale", factor=lambda r: _u(r, 0.2, 0.6)),
}
CHAIN = "chain_2_4"  # 2-4 distinct random singles, in random order
FAMILIES: tuple[str, ...] = tuple(SINGLES) + (CHAIN,)


def apply(name: str, img: np.ndarray, rng: np.random.Generator,
          others: Sequence[np.ndarray] = ()) -> tuple[np.ndarray, list[str]]:
    """Apply family ``name`` to an RGB uint8 array -> (edited array, the singles applied)."""
    if name == CHAIN:
        names = rng.choice(list(SINGLES), size=int(rng.integers(2, 5)), replace=False).tolist()
    elif name in SINGLES:
        names = [name]
    else:
        raise KeyError(f"unknown augly edit {name!r}; choose from {list(FAMILIES)}")
    out = Image.fromarray(np.ascontiguousarray(img, dtype=np.uint8)).convert("RGB")
    for single in names:
        out = SINGLES[single](out, rng, others).convert("RGB")
        if min(out.size) < 8:  # a result under 8 pixels a side is enlarged so the next has pixels
            out = out.resize((max(8, out.width), max(8, out.height)))
    return np.asarray(out), names
