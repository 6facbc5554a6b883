"""The side hash (encoders/dct_hash.py, formats/vectors.py, shards/vectors.py): a DCT hash rides
after the int8 values of each side vector; close hashes earn a credit; shards with and without
hashes accept each other's writers and queries."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image, ImageDraw

from encoders.dct_hash import dct_hash
from encoders.registry import get_encoder
from formats.vectors import SIDE_HASH_BYTES, split, with_side_hash
from shards.actor import ShardActor
from shards.vectors import HASH_CREDIT, HASH_FROM, hash_credit, records, vector_distances
from tests.helpers_images import SAMPLES, SCENES, as_jpeg

ENC = get_encoder("deephash")


def _bits(a: np.ndarray, b: np.ndarray) -> int:
    return int(np.unpackbits(a ^ b).sum())


def _hash(img: Image.Image) -> np.ndarray:
    return dct_hash(ENC.preprocess(img)[None])[0]


def _striped(img: Image.Image) -> Image.Image:
    out = img.copy()
    draw = ImageDraw.Draw(out, "RGBA")
    for x in range(0, img.width, 24):
        draw.line([(x, 0), (x, img.height)], fill=(255, 40, 40, 150), width=8)
    return out


def _covered(img: Image.Image, other: Image.Image) -> Image.Image:
    out = img.copy()
    w, h = int(img.width * 0.55), int(img.height * 0.6)
    out.paste(other.resize((w, h)), (img.width - w, 0))
    return out


@pytest.mark.parametrize("edit", ["fade", "stripes", "covered"])
def test_edited_copies_keep_their_hash_and_unrelated_photos_do_not(edit):
    photos = [Image.open(p).convert("RGB") for p in SCENES[:5]]
    close = 0
    for i, img in enumerate(photos):
        other = photos[(i + 1) % len(photos)]
        copy = {"fade": lambda: Image.blend(img, Image.new("RGB", img.size, "white"), 0.55),
                "stripes": lambda: _striped(img),
                "covered": lambda: _covered(img, other)}[edit]()
        close += _bits(_hash(as_jpeg(copy)), _hash(img)) < HASH_FROM
    assert close >= 4, close
    hashes = [_hash(Image.open(p).convert("RGB")) for p in SAMPLES[::3]]
    pairs = [_bits(a, b) for i, a in enumerate(hashes) for b in hashes[i + 1:]]
    assert np.mean(np.array(pairs) < HASH_FROM) < 0.05


def test_layout_and_credit():
    values = np.arange(-64, 64, dtype=np.int8)[None].repeat(2, 0)
    hashes = np.array([[0xFF] * SIDE_HASH_BYTES, [0x0F] * SIDE_HASH_BYTES], np.uint8)
    v = with_side_hash(values, hashes)
    assert v.shape == (2, 128 + SIDE_HASH_BYTES) and v.dtype == np.int8
    got_values, got_hashes = split(v, 128)
    assert np.array_equal(got_values, values) and np.array_equal(got_hashes, hashes)
    assert split(values, 128)[1] is None  # no hash carried
    credit = hash_credit(hashes, np.concatenate([hashes, np.zeros((1, SIDE_HASH_BYTES), np.uint8)]))
    assert credit[0, 0] == HASH_CREDIT and credit[0, 1] == 0.0  # 0 or 128 differing bits
    assert (credit[:, 2] == 0).all()  # an all-zero hash is none: never credited
    plain = vector_distances(values, values, 128)
    assert np.allclose(vector_distances(v, v, 128), plain - np.diag([HASH_CREDIT] * 2), atol=1e-5)
    assert np.allclose(vector_distances(v, values, 128), plain)  # the stored side has none


@pytest.mark.parametrize("kept", [128, 128 + SIDE_HASH_BYTES])
def test_shards_with_and_without_hashes_take_each_others_writers_and_queries(tmp_path, kept):
    rng = np.random.default_rng(1)
    codes = rng.integers(0, 256, (6, 16), dtype=np.uint8)
    values = rng.integers(-127, 128, (6, 128), dtype=np.int8)
    hashes = rng.integers(0, 256, (6, SIDE_HASH_BYTES), dtype=np.uint8)
    shard = ShardActor(0, str(tmp_path / "s"), 128, vector_bytes=kept)
    ids = [f"i{i}" for i in range(6)]
    shard.add(ids[:3], records(codes[:3], with_side_hash(values[:3], hashes[:3])))  # a new writer
    shard.add(ids[3:], records(codes[3:], values[3:]))  # an old writer: values only
    for query in (with_side_hash(values[4:5], hashes[4:5]), values[4:5]):
        (hits,) = shard.search(codes[4:5], k=6, vectors=query)
        assert hits[0]["id"] == "i4"
    (hits,) = shard.search(codes[1:2], k=6, vectors=with_side_hash(values[1:2], hashes[1:2]))
    credited = kept > 128  # only a shard that keeps hashes credits them
    assert hits[0]["id"] == "i1" and (hits[0]["score"] < -HASH_CREDIT / 2) == credited
    shard.close()
