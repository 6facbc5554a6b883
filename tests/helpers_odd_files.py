"""Unusual and malformed image files, made here with Pillow and raw bytes: what users and
attackers upload. Each entry: (name, bytes, content type)."""
from __future__ import annotations

import io
import struct
import zlib

import pillow_heif
from PIL import Image

pillow_heif.register_heif_opener()  # to write HEIC here; the product reads it through encoders.decode


def _save(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def _photo(size=(64, 48)) -> Image.Image:
    img = Image.linear_gradient("L").resize(size).convert("RGB")
    img.paste((200, 30, 30), (size[0] // 4, size[1] // 4, size[0] // 2, size[1] // 2))
    return img


def _png_claiming(width: int, height: int) -> bytes:
    """A valid 1x1 PNG whose header says width x height (a decompression bomb's header)."""
    raw = bytearray(_save(Image.new("RGB", (1, 1)), "PNG"))
    ihdr = raw[12:29]  # type + 13 bytes of data
    ihdr[4:12] = struct.pack(">II", width, height)
    raw[12:29] = ihdr
    raw[29:33] = struct.pack(">I", zlib.crc32(bytes(ihdr)) & 0xFFFFFFFF)
    return bytes(raw)


def odd_files() -> list[tuple[str, bytes, str]]:
    photo = _photo()
    frames = [_photo().rotate(a) for a in (0, 90, 180)]
    gif = io.BytesIO()
    frames[0].save(gif, format="GIF", save_all=True, append_images=frames[1:], duration=50)
    tiff = io.BytesIO()
    frames[0].save(tiff, format="TIFF", save_all=True, append_images=frames[1:])
    jpeg = _save(photo, "JPEG", quality=90)
    return [
        ("1x1.png", _save(Image.new("RGB", (1, 1), (9, 9, 9)), "PNG"), "image/png"),
        ("1x10000.png", _save(Image.new("RGB", (1, 10000), (9, 90, 9)), "PNG"), "image/png"),
        ("10000x1.png", _save(Image.new("RGB", (10000, 1), (90, 9, 9)), "PNG"), "image/png"),
        ("2x3.jpg", _save(Image.new("RGB", (2, 3), (50, 60, 70)), "JPEG"), "image/jpeg"),
        ("cmyk.jpg", _save(photo.convert("CMYK"), "JPEG"), "image/jpeg"),
        ("16bit.png", _save(photo.convert("I;16"), "PNG"), "image/png"),
        ("la.png", _save(photo.convert("LA"), "PNG"), "image/png"),
        ("palette-alpha.png", _save(photo.convert("P"), "PNG", transparency=0), "image/png"),
        ("animated.gif", gif.getvalue(), "image/gif"),
        ("multipage.tiff", tiff.getvalue(), "image/tiff"),
        ("photo.webp", _save(photo, "WEBP"), "image/webp"),
        ("photo.bmp", _save(photo, "BMP"), "image/bmp"),
        ("photo.heic", _save(photo, "HEIF", quality=80), "image/heic"),  # a phone's default
        ("photo.avif", _save(photo, "AVIF", quality=70), "image/avif"),
        ("truncated.jpg", jpeg[: len(jpeg) // 2], "image/jpeg"),
        ("header-only.jpg", jpeg[:20], "image/jpeg"),
        ("png-as-jpeg.jpg", _save(photo, "PNG"), "image/jpeg"),
        ("polyglot.jpg", jpeg + b"PK\x03\x04" + b"\x00" * 64, "image/jpeg"),
        ("bomb.png", _png_claiming(60000, 60000), "image/png"),
        ("svg.svg", b'<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"/>', "image/svg+xml"),
        ("page.html", b"<html><body>not an image</body></html>", "image/jpeg"),
        ("doc.pdf", b"%PDF-1.4\n1 0 obj<<>>endobj\ntrailer<<>>\n%%EOF", "application/octet-stream"),
        ("empty.jpg", b"", "image/jpeg"),
        ("noise.bin", bytes(range(256)) * 8, "application/octet-stream"),
    ]
