"""Photo-like test images made from a seed (no files needed), and the edits a copy detector
must see through. Import from any test: ``from tests.helpers_images import make_photo, edited_copy``.
"""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont

EDIT_KINDS = ("jpeg", "resize", "crop", "text")


def make_photo(seed: int, size: int | tuple[int, int] = (640, 480)) -> Image.Image:
    """A natural-looking RGB image: smooth colour gradients, soft shapes and sensor-like noise.

    Different seeds give unrelated images; the same seed always gives the same pixels.
    """
    w, h = (size, size) if isinstance(size, int) else size
    rng = np.random.default_rng(seed)
    # Smooth background: a coarse random colour grid upsampled bicubically.
    grid = rng.integers(0, 256, size=(3, 4, 3), dtype=np.uint8)
    img = Image.fromarray(grid, "RGB").resize((w, h), Image.Resampling.BICUBIC)
    # Shapes drawn at 2x and shrunk, so edges are antialiased like a real photo.
    layer = img.resize((w * 2, h * 2), Image.Resampling.BILINEAR)
    draw = ImageDraw.Draw(layer)
    for _ in range(int(rng.integers(6, 12))):
        x0, y0 = rng.integers(0, 2 * w), rng.integers(0, 2 * h)
        rw, rh = rng.integers(w // 8, w), rng.integers(h // 8, h)
        box = [int(x0 - rw // 2), int(y0 - rh // 2), int(x0 + rw // 2), int(y0 + rh // 2)]
        color = tuple(int(c) for c in rng.integers(0, 256, 3))
        kind = rng.integers(0, 3)
        if kind == 0:
            draw.ellipse(box, fill=color)
        elif kind == 1:
            draw.rectangle(box, fill=color)
        else:
            pts = [(int(rng.integers(box[0], box[2])), int(rng.integers(box[1], box[3]))) for _ in range(5)]
            draw.polygon(pts, fill=color)
    img = layer.resize((w, h), Image.Resampling.LANCZOS).filter(ImageFilter.GaussianBlur(1.2))
    # Texture: low-frequency shading plus fine grain.
    shade = np.asarray(Image.fromarray(rng.integers(0, 256, (6, 8), dtype=np.uint8), "L")
                       .resize((w, h), Image.Resampling.BICUBIC), dtype=np.float32)
    arr = np.asarray(img, dtype=np.float32) * (0.75 + shade[..., None] / 1020.0)
    arr += rng.normal(0.0, 5.0, arr.shape)
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), "RGB")


def edited_copy(img: Image.Image, kind: str, *, quality: int = 30, scale: float = 0.5,
                crop: float = 0.05, text: str = "COPY (c) 2024") -> Image.Image:
    """A near-duplicate of ``img``: ``jpeg`` re-encode at ``quality``, ``resize`` by ``scale``,
    ``crop`` a ``crop`` fraction off every side, or ``text`` overlaid along the bottom."""
    img = img.convert("RGB")
    w, h = img.size
    if kind == "jpeg":
        buf = io.BytesIO()
        img.save(buf, "JPEG", quality=quality)
        return Image.open(io.BytesIO(buf.getvalue())).convert("RGB")
    if kind == "resize":
        return img.resize((max(1, round(w * scale)), max(1, round(h * scale))), Image.Resampling.LANCZOS)
    if kind == "crop":
        dx, dy = round(w * crop), round(h * crop)
        return img.crop((dx, dy, w - dx, h - dy))
    if kind == "text":
        out = img.copy()
        font = ImageFont.load_default(size=max(10, h // 12))
        ImageDraw.Draw(out).text((w // 20, h - h // 6), text, font=font, fill=(255, 255, 255),
                                 stroke_width=2, stroke_fill=(0, 0, 0))
        return out
    raise ValueError(f"unknown edit kind {kind!r}; choose from {', '.join(EDIT_KINDS)}")


def look_alike(img: Image.Image, other: Image.Image, middle: float = 0.6) -> Image.Image:
    """``img`` with its middle (``middle`` of each side) replaced by ``other``'s: the same
    background around a different subject, like two products shot on one sheet."""
    img = img.convert("RGB")
    w, h = img.size
    bw, bh = round(w * middle), round(h * middle)
    x, y = (w - bw) // 2, (h - bh) // 2
    out = img.copy()
    out.paste(other.convert("RGB").resize(img.size).crop((x, y, x + bw, y + bh)), (x, y))
    return out


def jpeg_bytes(img: Image.Image, quality: int = 90) -> bytes:
    """``img`` encoded as a JPEG file."""
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def png_bytes(img: Image.Image) -> bytes:
    """``img`` encoded as a PNG file."""
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


SAMPLES = sorted((Path(__file__).resolve().parents[1] / "rayapp" / "samples").glob("*.jpg"))
# photos whose own background is not flat (the clothing shots sit on plain white or grey)
SCENES = [p for p in SAMPLES if not p.name.startswith("clothing")]


def as_jpeg(img: Image.Image, quality: int = 90) -> Image.Image:
    """``img`` after a JPEG round trip, as an upload would arrive."""
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=quality)
    return Image.open(io.BytesIO(buf.getvalue())).convert("RGB")


def iou(a: tuple, b: tuple) -> float:
    """Intersection over union of two (left, top, right, bottom) boxes."""
    inter = max(0, min(a[2], b[2]) - max(a[0], b[0])) * max(0, min(a[3], b[3]) - max(a[1], b[1]))
    area = lambda r: (r[2] - r[0]) * (r[3] - r[1])  # noqa: E731
    return inter / (area(a) + area(b) - inter)
