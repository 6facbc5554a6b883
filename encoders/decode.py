"""Safe image decoding: pixel cap before decode, EXIF orientation, any mode -> RGB.

Everything that turns untrusted bytes into pixels (CLI, ingest, Serve) goes through
``load_image`` so that one policy decides what is accepted, and every refusal is an
``ImageDecodeError`` carrying a one-line reason a user can act on.
"""
from __future__ import annotations

import io
import math
import os
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
from PIL import Image, ImageOps

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff", ".avif",
                              ".heic", ".heif"})

# Pillow decoders we allow; restricting them keeps exotic parsers (EPS runs Ghostscript) away
# from untrusted input. The JPEG opener also returns MPO (multi-picture JPEGs from phones).
# HEIF/HEIC (what phones save by default) is read by pillow-heif, which turns the picture
# upright as it opens it; AVIF by Pillow itself.
_FORMATS = ("JPEG", "PNG", "WEBP", "BMP", "GIF", "TIFF", "AVIF", "HEIF")
_FORMAT_NAMES = "JPEG, PNG, WebP, BMP, GIF, TIFF, AVIF or HEIC"
try:
    from pillow_heif import register_heif_opener
    register_heif_opener()
except ImportError:  # an install without pillow-heif refuses HEIC as unsupported, one line like any other
    pass
# Decoded images are kept at a long side of at least this (``working_size``): twice the
# keypoints' detection side, the largest any later step works at, so that a crop of a tenth of
# the image still holds more pixels than the encoder's input.
WORK_SIDE = 640
# ``load_image`` notes the image's full (width, height), upright, under this key of ``.info``.
FULL_SIZE = "neardup_full_size"


class ImageDecodeError(ValueError):
    """The input cannot be turned into an image; ``str(err)`` is a one-line human reason.

    ``kind`` is a stable machine tag for callers that map errors (e.g. to HTTP statuses):
    empty, too_large, unsupported, truncated, corrupt or unreadable.
    """

    def __init__(self, message: str, kind: str = "corrupt"):
        super().__init__(message)
        self.kind = kind

    def __reduce__(self):  # keep ``kind`` when pickled across processes (Ray tasks, actors)
        return type(self), (str(self), self.kind)


def load_image(source: str | os.PathLike | bytes, max_pixels: int = 50_000_000,
               work_side: int | None = WORK_SIDE) -> Image.Image:
    """Decode a file path or raw bytes into an RGB image, refusing anything over ``max_pixels``.

    The pixel count is read from the header before any pixel is decoded (decompression bombs).
    Pillow's own global cap (``Image.MAX_IMAGE_PIXELS``, untouched here) stays in force as a
    backstop and is reported the same way; between that cap and twice it, Pillow also emits its
    advisory DecompressionBombWarning before our check refuses the image.

    An image whose long side is ``2 * work_side`` or more comes back shrunk by an integer
    factor to a long side in [work_side, 2 * work_side) (``working_size``): a JPEG decodes at
    that scale directly, where the decoder can. Every later step (the encoder's input, the
    finders, keypoints) works far below ``WORK_SIDE``, so a phone photo costs what a
    thumbnail-sized one does. Codes are compared only between images loaded the same way, so
    every product path loads through here with the same ``work_side``; ``None`` keeps full size
    (the benchmark's originals, which its edits are made from); ``full_size`` tells the size
    in the file. Raises FileNotFoundError for a missing path.
    """
    fp, label = _open_source(source)
    try:
        im = _open_checked(fp, max_pixels)
        header = im.size
        try:
            if work_side and im.format in ("JPEG", "MPO"):
                im.draft(None, _draft_size(im.size, work_side))
            im.load()
        except Exception as exc:
            raise _decode_error(exc) from exc
        decoded = im.size
        img = _to_rgb(_apply_orientation(im))
        out = working_size(img, work_side)
        out.info[FULL_SIZE] = header if img.size == decoded else header[::-1]  # EXIF turned it
        return out
    except ImageDecodeError as exc:
        if not label:
            raise
        raise ImageDecodeError(f"{label}: {exc}", exc.kind) from exc.__cause__
    finally:
        fp.close()


def _draft_size(size: tuple[int, int], work_side: int) -> tuple[int, int]:
    """The size to ask the JPEG decoder for: it picks the largest of its 1/2, 1/4 and 1/8
    scales that keeps both sides at least this, so the long side stays >= ``work_side``."""
    f = work_side / max(size)
    return (max(1, math.ceil(size[0] * f)), max(1, math.ceil(size[1] * f)))


def full_size(img: Image.Image) -> tuple[int, int]:
    """The (width, height) of an image as stored in its file, upright, before ``load_image``
    shrank it to its working size: what a user means by its size (dedup keeps the largest)."""
    return tuple(img.info.get(FULL_SIZE, img.size))


def working_size(img: Image.Image, work_side: int | None = WORK_SIDE) -> Image.Image:
    """``img`` shrunk by the largest integer factor that keeps its long side >= ``work_side``
    (box filter, ``Image.reduce``), or as it is when that factor is 1 or ``work_side`` is None.

    >>> working_size(Image.new("RGB", (4000, 3000)), 640).size
    (1000, 750)
    >>> working_size(Image.new("RGB", (1000, 750)), 640).size
    (1000, 750)
    """
    factor = max(img.size) // work_side if work_side else 1
    return img.reduce(factor) if factor >= 2 else img


def _open_source(source: str | os.PathLike | bytes) -> tuple[io.BufferedIOBase, str]:
    """Raw bytes or a path -> (binary file object, label for messages)."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        if len(source) == 0:
            raise ImageDecodeError("empty image data (0 bytes)", "empty")
        return io.BytesIO(bytes(source)), ""
    if not isinstance(source, (str, os.PathLike)):
        raise TypeError(f"expected a path or bytes, got {type(source).__name__}")
    path = Path(source)
    if not path.exists():
        raise FileNotFoundError(2, "no such file", str(path))
    if path.is_dir():
        raise ImageDecodeError(f"{path}: is a directory, not an image file", "unreadable")
    try:
        if path.stat().st_size == 0:
            raise ImageDecodeError(f"{path}: empty file (0 bytes)", "empty")
        return open(path, "rb"), str(path)
    except OSError as exc:
        raise ImageDecodeError(f"{path}: cannot read file ({exc.strerror or exc})", "unreadable") from exc


def _open_checked(fp: io.BufferedIOBase, max_pixels: int) -> Image.Image:
    """Identify the format and enforce the pixel cap from the header alone."""
    try:
        im = Image.open(fp, formats=_FORMATS)
    except Image.UnidentifiedImageError:
        raise ImageDecodeError(f"not a supported image (expected {_FORMAT_NAMES})", "unsupported") from None
    except Exception as exc:
        raise _decode_error(exc) from exc
    w, h = im.size
    if w <= 0 or h <= 0:
        raise ImageDecodeError(f"invalid image size {w}x{h}", "corrupt")
    if w * h > max_pixels:
        raise ImageDecodeError(
            f"image too large: {w}x{h} = {w * h:,} pixels exceeds the limit of {max_pixels:,} "
            "(possible decompression bomb)", "too_large")
    return im


def _decode_error(exc: Exception) -> ImageDecodeError:
    """One line for any Pillow failure, including its bomb checks inside open() or load()."""
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    if isinstance(exc, (Image.DecompressionBombError, Image.DecompressionBombWarning)):
        return ImageDecodeError(f"image too large, possible decompression bomb ({text})", "too_large")
    if "truncated" in text or isinstance(exc, EOFError):
        return ImageDecodeError(f"truncated image file ({text})", "truncated")
    return ImageDecodeError(f"corrupt image data ({text})", "corrupt")


def _apply_orientation(im: Image.Image) -> Image.Image:
    """Rotate/flip per the EXIF Orientation tag; a broken EXIF block is ignored, not fatal."""
    try:
        return ImageOps.exif_transpose(im)
    except Exception:
        return im


def _to_rgb(im: Image.Image) -> Image.Image:
    """Any Pillow mode -> a new RGB image; transparency is composited on white."""
    if im.mode in ("I", "I;16", "I;16L", "I;16B", "I;16N", "F"):
        im = _high_depth_to_l(im)
    if im.mode == "RGB":
        return im.copy()
    if "A" in im.mode or "a" in im.mode or im.has_transparency_data:
        rgba = im.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    try:
        return im.convert("RGB")
    except Exception as exc:
        raise ImageDecodeError(f"unsupported image mode {im.mode!r} ({exc})", "unsupported") from exc


def _high_depth_to_l(im: Image.Image) -> Image.Image:
    """16-bit/32-bit/float grayscale -> 8-bit L by scaling (Pillow's convert would clip at 255)."""
    arr = np.asarray(im, dtype=np.float64)
    if im.mode == "F":
        arr = arr * 255.0 if arr.size and arr.max() <= 1.0 else arr
    elif im.mode.startswith("I;16") or (arr.size and arr.max() > 255):
        arr = arr / 257.0
    return Image.fromarray(np.clip(np.rint(arr), 0, 255).astype(np.uint8), mode="L")


def iter_image_files(paths: Iterable[str | os.PathLike] | str | os.PathLike,
                     recursive: bool = True) -> Iterator[Path]:
    """Yield image files from files and folders in a deterministic order.

    Paths are visited in the order given; a folder's entries are sorted by name. Inside folders
    only files with an ``IMAGE_EXTENSIONS`` suffix are yielded, and hidden files and folders
    (dot-names, e.g. macOS ``._x.jpg``) are skipped; a file named explicitly is always yielded so
    a bad one gets reported rather than silently dropped. Symlinked folders are not followed.
    Raises FileNotFoundError for a missing path (before yielding anything).
    """
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    roots = [Path(p) for p in paths]
    for root in roots:
        if not root.exists():
            raise FileNotFoundError(2, "no such file or directory", str(root))
    for root in roots:
        if root.is_dir():
            yield from _walk(root, recursive)
        else:
            yield root


def _walk(folder: Path, recursive: bool) -> Iterator[Path]:
    with os.scandir(folder) as it:
        entries = sorted(it, key=lambda e: e.name)
    for entry in entries:
        if entry.name.startswith("."):
            continue
        if entry.is_dir(follow_symlinks=False):
            if recursive:
                yield from _walk(Path(entry.path), recursive)
        elif entry.is_file() and Path(entry.name).suffix.lower() in IMAGE_EXTENSIONS:
            yield Path(entry.path)


def resize_square(img: Image.Image, size: int) -> np.ndarray:
    """Squash the whole image to (size, size, 3) uint8, no crop (a crop would drop content a
    copy detector needs). Pillow's BILINEAR is antialiased; reducing_gap speeds big shrinks."""
    if img.mode != "RGB":
        img = img.convert("RGB")
    if img.size != (size, size):
        img = img.resize((size, size), Image.Resampling.BILINEAR, reducing_gap=3.0)
    return np.array(img, dtype=np.uint8)
