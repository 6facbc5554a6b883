"""encoders.decode on real files: every mode to RGB, EXIF orientation, bad input, pixel cap."""
from __future__ import annotations

import io
import pickle
import struct
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from encoders.decode import (IMAGE_EXTENSIONS, WORK_SIDE, ImageDecodeError, full_size, iter_image_files,
                             load_image, resize_square)
from tests.helpers_images import make_photo


def _bytes(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def _png_header_only(width: int, height: int) -> bytes:
    """A valid PNG signature + IHDR (correct CRC) + IEND, with no pixel data at all: if a
    loader ever tried to decode it, it would fail as truncated, not as too large."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b"")


# ---------------------------------------------------------------- files and folders

def test_iter_image_files_sorted_filtered_recursive(tmp_path: Path):
    for rel in ["b.JPG", "a.png", "notes.txt", "sub/c.webp", "sub/deeper/d.TIFF", ".hidden/e.jpg",
                "._f.jpg", "sub/g.gif", "sub/h.bmp", "sub/i.jpeg", "sub/j.tif"]:
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"x")
    got = [p.relative_to(tmp_path).as_posix() for p in iter_image_files([tmp_path])]
    assert got == ["a.png", "b.JPG", "sub/c.webp", "sub/deeper/d.TIFF", "sub/g.gif", "sub/h.bmp",
                   "sub/i.jpeg", "sub/j.tif"]
    flat = [p.name for p in iter_image_files([str(tmp_path)], recursive=False)]
    assert flat == ["a.png", "b.JPG"]
    # A single path works; a file named explicitly is yielded even without an image suffix.
    assert list(iter_image_files(tmp_path / "notes.txt")) == [tmp_path / "notes.txt"]
    assert {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff", ".avif", ".heic",
            ".heif"} == set(IMAGE_EXTENSIONS)


@pytest.mark.parametrize("fmt", ["HEIF", "AVIF"])
def test_phone_formats_load_upright_and_encode_like_the_jpeg(fmt):
    """HEIC (what phones save) and AVIF photos decode, turned upright by their orientation, and
    encode to nearly the code of the same photo as a JPEG."""
    import pillow_heif
    from encoders.registry import get_encoder
    pillow_heif.register_heif_opener()
    sample = sorted((Path(__file__).resolve().parents[1] / "rayapp" / "samples").glob("*.jpg"))[0]
    with Image.open(sample) as im:
        photo = im.convert("RGB")
    exif = Image.Exif()
    exif[0x0112] = 6  # stored sideways: shown turned 90 degrees clockwise
    stored = io.BytesIO()
    photo.rotate(90, expand=True).save(stored, fmt, quality=85, exif=exif.tobytes())
    loaded = load_image(stored.getvalue())
    assert loaded.size == photo.size and full_size(loaded) == photo.size
    codes = get_encoder("deephash").encode([photo, loaded])
    assert int(np.unpackbits(codes[0] ^ codes[1]).sum()) <= 12


def test_iter_image_files_missing_path(tmp_path: Path):
    with pytest.raises(FileNotFoundError, match="nope"):
        list(iter_image_files([tmp_path, tmp_path / "nope"]))


def test_photo_dir_loads(photo_dir: Path):
    files = list(iter_image_files([photo_dir]))
    assert len(files) == 12 and {p.suffix for p in files} == {".jpg", ".png"}
    for p in files:
        im = load_image(p)
        assert im.mode == "RGB" and im.size == Image.open(p).size
    same = load_image(files[0].read_bytes())
    assert np.array_equal(np.asarray(same), np.asarray(load_image(str(files[0]))))


# ---------------------------------------------------------------- modes

def _rgba_half_transparent() -> Image.Image:
    im = Image.new("RGBA", (40, 20), (255, 0, 0, 255))
    im.paste((0, 0, 255, 0), (20, 0, 40, 20))
    return im


@pytest.mark.parametrize("name,make,fmt,left,right", [
    ("RGBA", _rgba_half_transparent, "PNG", (255, 0, 0), (255, 255, 255)),
    ("LA", lambda: _rgba_half_transparent().convert("LA"), "PNG", (76, 76, 76), (255, 255, 255)),
    ("P+transparency", lambda: _rgba_half_transparent().convert("P"), "PNG", (255, 0, 0), (255, 255, 255)),
    ("P", lambda: Image.new("RGB", (40, 20), (0, 128, 0)).quantize(4), "PNG", (0, 128, 0), (0, 128, 0)),
    ("L", lambda: Image.new("L", (40, 20), 90), "PNG", (90, 90, 90), (90, 90, 90)),
    ("1", lambda: Image.new("1", (40, 20), 1), "BMP", (255, 255, 255), (255, 255, 255)),
    ("CMYK-JPEG", lambda: Image.new("RGB", (40, 20), (200, 30, 40)).convert("CMYK"), "JPEG", (200, 30, 40), (200, 30, 40)),
    ("CMYK-TIFF", lambda: Image.new("RGB", (40, 20), (200, 30, 40)).convert("CMYK"), "TIFF", (200, 30, 40), (200, 30, 40)),
    ("I;16", lambda: Image.fromarray(np.full((20, 40), 32768, np.uint16)), "PNG", (128, 128, 128), (128, 128, 128)),
    ("WEBP", lambda: Image.new("RGB", (40, 20), (10, 200, 30)), "WEBP", (10, 200, 30), (10, 200, 30)),
])
def test_every_mode_becomes_rgb(tmp_path: Path, name, make, fmt, left, right):
    path = tmp_path / f"img.{fmt.lower()}"
    path.write_bytes(_bytes(make(), fmt, **({"lossless": True} if fmt == "WEBP" else {})))
    im = load_image(path)
    assert im.mode == "RGB" and im.size == (40, 20)
    tol = 6 if fmt == "JPEG" else 1
    assert np.abs(np.subtract(im.getpixel((5, 10)), left)).max() <= tol, name
    assert np.abs(np.subtract(im.getpixel((35, 10)), right)).max() <= tol, name


def test_animated_gif_first_frame(tmp_path: Path):
    frames = [Image.new("RGB", (30, 30), c) for c in [(255, 0, 0), (0, 255, 0), (0, 0, 255)]]
    path = tmp_path / "anim.gif"
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=50, loop=0)
    assert Image.open(path).n_frames == 3
    im = load_image(path)
    assert im.mode == "RGB" and im.getpixel((15, 15)) == (255, 0, 0)


def test_exif_orientation_applied(tmp_path: Path):
    img = Image.new("RGB", (200, 100), (255, 0, 0))
    img.paste((0, 0, 255), (100, 0, 200, 100))   # left red, right blue
    exif = Image.Exif()
    exif[0x0112] = 6                              # display = rotate 90 degrees clockwise
    path = tmp_path / "rotated.jpg"
    img.save(path, quality=95, exif=exif)
    im = load_image(path)
    assert im.size == (100, 200)
    top, bottom = im.getpixel((50, 20)), im.getpixel((50, 180))
    assert top[0] > 200 and top[2] < 50 and bottom[2] > 200 and bottom[0] < 50


# ---------------------------------------------------------------- bad input

def test_truncated_jpeg(tmp_path: Path):
    data = _bytes(make_photo(1, (320, 240)), "JPEG", quality=90)
    path = tmp_path / "cut.jpg"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageDecodeError, match="truncated") as err:
        load_image(path)
    assert str(path) in str(err.value) and "\n" not in str(err.value) and err.value.kind == "truncated"


def test_corrupt_png_data():
    data = bytearray(_bytes(make_photo(2, (64, 64)), "PNG"))
    idat = data.index(b"IDAT")
    data[idat + 40: idat + 200] = bytes(160)      # wreck the compressed stream
    with pytest.raises(ImageDecodeError):
        load_image(bytes(data))


@pytest.mark.parametrize("payload,reason,kind", [
    (b"", "empty", "empty"),
    (b"\xff\xd8\xff" + bytes(range(256)) * 4, "not a supported image", "unsupported"),
    (b"hello, I am a text file\n", "not a supported image", "unsupported"),
    (_png_header_only(8_000, 8_000), "too large", "too_large"),
])
def test_bad_bytes(payload: bytes, reason: str, kind: str):
    with pytest.raises(ImageDecodeError, match=reason) as err:
        load_image(payload)
    assert err.value.kind == kind
    again = pickle.loads(pickle.dumps(err.value))          # survives Ray's pickling
    assert isinstance(again, ImageDecodeError) and again.kind == kind and str(again) == str(err.value)


def test_bad_files(tmp_path: Path):
    (tmp_path / "empty.jpg").write_bytes(b"")
    (tmp_path / "notes.png").write_text("not an image")
    (tmp_path / "folder.jpg").mkdir()
    for name, reason in [("empty.jpg", "empty file"), ("notes.png", "not a supported image"),
                         ("folder.jpg", "directory")]:
        with pytest.raises(ImageDecodeError, match=reason):
            load_image(tmp_path / name)
    with pytest.raises(FileNotFoundError) as err:
        load_image(tmp_path / "missing.jpg")
    assert not isinstance(err.value, ImageDecodeError) and "missing.jpg" in str(err.value)
    with pytest.raises(TypeError):
        load_image(12345)  # type: ignore[arg-type]


def test_unsupported_format_is_refused():
    """Formats outside the allow-list (here ICO and PPM) are refused even though Pillow reads them."""
    img = Image.new("RGB", (16, 16), (1, 2, 3))
    for fmt in ("ICO", "PPM"):
        with pytest.raises(ImageDecodeError, match="not a supported image"):
            load_image(_bytes(img, fmt))


# ---------------------------------------------------------------- pixel cap

@pytest.mark.parametrize("side", [8_000, 10_000, 100_000])
def test_decompression_bomb_rejected_from_header(tmp_path: Path, side: int):
    """Covers our cap (64M), Pillow's warning band (100M) and Pillow's hard error (10^10)."""
    path = tmp_path / "bomb.png"
    path.write_bytes(_png_header_only(side, side))
    assert path.stat().st_size < 100
    with warnings.catch_warnings():
        warnings.simplefilter("error")            # a Pillow warning must not escape either
        with pytest.raises(ImageDecodeError, match="too large"):
            load_image(path)


def test_pixel_cap_parameter():
    data = _bytes(make_photo(3, (64, 48)), "PNG")
    assert load_image(data, max_pixels=64 * 48).size == (64, 48)
    with pytest.raises(ImageDecodeError, match="64x48"):
        load_image(data, max_pixels=64 * 48 - 1)
    # A header-only PNG under the cap proves the cap is what refused the big one: this one
    # gets as far as decoding and fails there.
    with pytest.raises(ImageDecodeError, match="truncated|corrupt"):
        load_image(_png_header_only(100, 100))


# ---------------------------------------------------------------- resize / draft

def test_resize_square_squashes_without_crop():
    img = Image.new("RGB", (400, 100), (255, 0, 0))
    img.paste((0, 0, 255), (200, 0, 400, 100))
    arr = resize_square(img, 64)
    assert arr.shape == (64, 64, 3) and arr.dtype == np.uint8 and arr.flags.writeable
    assert arr[32, 2, 0] > 250 and arr[32, 61, 2] > 250      # both halves survive
    assert resize_square(img.convert("L"), 16).shape == (16, 16, 3)


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_a_big_photo_is_loaded_at_working_size(fmt):
    """JPEGs decode at a reduced scale, other formats are reduced after decoding: either way
    the long side lands in [WORK_SIDE, 2 * WORK_SIDE), the aspect kept; small images and
    ``work_side=None`` stay as they are."""
    data = _bytes(make_photo(4, (2600, 1950)), fmt, quality=90)
    img = load_image(data)
    assert WORK_SIDE <= img.size[0] < 2 * WORK_SIDE and img.mode == "RGB"
    assert abs(img.size[0] / img.size[1] - 4 / 3) < 0.01
    assert load_image(data, work_side=None).size == (2600, 1950)
    assert load_image(_bytes(make_photo(4, (1200, 900)), fmt, quality=90)).size == (1200, 900)
    assert full_size(img) == (2600, 1950)


def test_full_size_of_a_big_turned_photo_is_upright(tmp_path: Path):
    """A phone photo stored sideways with an EXIF turn: loaded upright at working size, and its
    full size (what dedup's keep rule compares) is the upright size in the file."""
    exif = Image.Exif()
    exif[0x0112] = 6
    path = tmp_path / "phone.jpg"
    make_photo(5, (3000, 2000)).save(path, quality=90, exif=exif)
    img = load_image(path)
    assert img.size[1] > img.size[0] and WORK_SIDE <= img.size[1] < 2 * WORK_SIDE
    assert full_size(img) == (2000, 3000)
