"""PDQ and pHash encoders on real JPEG/PNG files: format, determinism, robustness, separation.

Bounds measured on 16 make_photo images (640x480): PDQ re-encode q30/q50 <= 6, resize 50% <= 2,
unrelated >= 102 of 256; pHash re-encode/resize <= 2, unrelated >= 20 of 64.
"""
from __future__ import annotations

from pathlib import Path

import imagehash
import numpy as np
import pdqhash
import pytest
from PIL import Image

from encoders import code_to_hex, get_encoder, hamming, list_encoders
from encoders.classic import PDQEncoder, PHashEncoder
from encoders.decode import iter_image_files, load_image
from tests.helpers_images import edited_copy

# name -> (bits, max distance for re-encode/resize, min distance between unrelated images)
BOUNDS = {"pdq": (256, 30, 80), "phash": (64, 8, 12)}


@pytest.fixture(scope="module")
def photos(photo_dir: Path):
    return [load_image(p) for p in iter_image_files([photo_dir])]


@pytest.mark.parametrize("name", ["pdq", "phash"])
def test_codes_shape_and_determinism(name: str, photos):
    enc = get_encoder(name)
    bits = BOUNDS[name][0]
    assert enc.name == name and enc.bits == bits and enc.info()["bits"] == bits
    arr = enc.preprocess(photos[0])
    assert arr.shape == (enc.input_size, enc.input_size, 3) and arr.dtype == np.uint8
    codes = enc.encode(photos)
    assert codes.shape == (len(photos), bits // 8) and codes.dtype == np.uint8
    assert np.array_equal(codes, get_encoder(name).encode(photos))          # deterministic
    assert np.array_equal(codes[3:4], enc.encode([photos[3]]))             # batch-independent
    assert enc.encode([]).shape == (0, bits // 8)
    bit_means = np.unpackbits(codes, axis=1).mean()
    assert 0.3 < bit_means < 0.7                                           # median-threshold hashes


@pytest.mark.parametrize("name", ["pdq", "phash"])
def test_near_duplicates_close_unrelated_far(name: str, photos, photo_dir: Path, tmp_path: Path):
    enc = get_encoder(name)
    _, max_near, min_far = BOUNDS[name]
    base = enc.encode(photos)
    # An exact copy of the file on disk.
    first = next(iter_image_files([photo_dir]))
    copy = tmp_path / f"copy{first.suffix}"
    copy.write_bytes(first.read_bytes())
    assert hamming(base[:1], enc.encode([load_image(copy)]))[0, 0] == 0
    # Re-encoded and resized copies, written to disk and read back.
    for kind, kw in [("jpeg", {"quality": 50}), ("jpeg", {"quality": 30}), ("resize", {})]:
        paths = []
        for i, img in enumerate(photos):
            paths.append(tmp_path / f"{kind}{kw.get('quality', '')}_{i}.jpg")
            edited_copy(img, kind, **kw).save(paths[-1], quality=95)
        dist = np.diag(hamming(base, enc.encode([load_image(p) for p in paths])))
        assert dist.max() <= max_near, (kind, kw, dist)
    far = hamming(base, base)[np.triu_indices(len(photos), 1)]
    assert far.min() >= min_far, far.min()


def test_pdq_hex_is_canonical_and_quality(photos):
    """Packed MSB-first bits equal pdqhash's vector, and the hex equals ThreatExchange's format
    (16-bit words w[15]..w[0]) rebuilt from that vector independently."""
    enc = PDQEncoder()
    arr = enc.preprocess(photos[0])
    vector, quality = pdqhash.compute(arr)
    code = enc.encode_batch(arr[None])[0]
    assert np.array_equal(np.unpackbits(code), vector.astype(np.uint8))
    # pdqhash's vector[i] is bit 255 - i of Hash256, where bit k lives in w[k >> 4] at k & 15.
    bit = {255 - i: int(v) for i, v in enumerate(vector)}
    words = [sum(bit[16 * w + j] << j for j in range(16)) for w in range(16)]
    assert code_to_hex(code) == "".join(f"{words[w]:04x}" for w in range(15, -1, -1))
    codes, qualities = enc.encode_with_quality(photos[:3])
    assert np.array_equal(codes, enc.encode(photos[:3])) and qualities.dtype == np.int32
    assert qualities[0] == quality and (qualities >= 50).all()
    flat = np.full((256, 256, 3), 128, np.uint8)
    assert enc.encode_batch_with_quality(flat[None])[1][0] < 50            # blank image: low quality


def test_phash_hex_matches_imagehash(photos):
    enc = PHashEncoder()
    arr = enc.preprocess(photos[1])
    assert code_to_hex(enc.encode_batch(arr[None])[0]) == str(imagehash.phash(Image.fromarray(arr)))


def test_bad_batches_rejected():
    for enc in (PDQEncoder(), PHashEncoder()):
        s = enc.input_size
        for bad in (np.zeros((2, s, s, 3), np.float32), np.zeros((2, s, s), np.uint8),
                    np.zeros((1, s + 1, s, 3), np.uint8)):
            with pytest.raises(ValueError, match="expected a uint8 batch"):
                enc.encode_batch(bad)


def test_registry():
    names = list_encoders()
    assert {"pdq", "phash"} <= set(names)
    assert isinstance(get_encoder("pdq", weights=None, device="cpu", batch_size=8), PDQEncoder)
    assert isinstance(get_encoder("phash", device="auto"), PHashEncoder)
    with pytest.raises(ValueError, match="unknown encoder"):
        get_encoder("no-such-encoder")


def test_edited_dir_fixture(photo_dir: Path, edited_dir: Path):
    """The shared fixture other tests use: every edit is a loadable file named after its original."""
    enc = PDQEncoder()
    edited = list(iter_image_files([edited_dir]))
    assert len(edited) == 16
    for path in edited:
        stem, kind = path.stem.split("__")
        original = next(photo_dir.glob(f"{stem}.*"))
        dist = hamming(enc.encode([load_image(original)]), enc.encode([load_image(path)]))[0, 0]
        if kind in ("jpeg", "resize"):
            assert dist <= BOUNDS["pdq"][1], (path.name, dist)
