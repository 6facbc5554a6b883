"""Spatial verification (ORB keypoints + RANSAC) on the bundled real photos, decoded from JPEG."""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from encoders.keypoints import extract, extract_query
from shards.actor import ShardActor
from shards.vectors import records
from shards.verify import (BONUS_FROM, BONUS_FULL, _one_to_one, KEYPOINT_BYTES, VERIFY_BONUS, inliers,
                           inliers_many, pack, unpack, two_nearest, verify_blocks, verify_bonus)
from tests.helpers_images import jpeg_bytes

SAMPLES = sorted((Path(__file__).resolve().parents[1] / "rayapp" / "samples").glob("*.jpg"))


def _photo(i: int) -> Image.Image:
    return Image.open(SAMPLES[i]).convert("RGB")


def _jpeg(img: Image.Image, quality: int = 80) -> Image.Image:
    return Image.open(io.BytesIO(jpeg_bytes(img, quality))).convert("RGB")


def _corner_crop(img: Image.Image, area: float = 0.4) -> Image.Image:
    """An off-centre crop of ``area`` of the image, touching its bottom-right corner."""
    w, h = img.size
    s = area ** 0.5
    return img.crop((int(w * (1 - s)), int(h * (1 - s)), w, h))


def test_pack_round_trip_and_empty():
    xy = np.array([[1.5, 2.25], [319.0, 200.0]], np.float32)
    des = np.arange(64, dtype=np.uint8).reshape(2, 32)
    packed = pack(xy, des)
    assert packed.shape == (KEYPOINT_BYTES,) and packed.dtype == np.uint8
    got_xy, got_des = unpack(packed)
    assert np.allclose(got_xy, xy, atol=1 / 16) and np.array_equal(got_des, des)
    assert unpack(np.zeros(KEYPOINT_BYTES, np.uint8))[0].shape == (0, 2)
    with pytest.raises(ValueError, match="bytes"):
        unpack(b"short")
    flat = extract(Image.new("RGB", (300, 200), (40, 90, 200)))  # nothing to detect
    assert not flat[:2].any() and inliers(flat, flat) == 0


def test_off_centre_crop_is_verified_and_unrelated_photos_are_not():
    ref = _photo(0)
    stored = extract(ref)
    assert int(stored[:2].view("<u2")[0]) > 100  # a real photo yields many keypoints
    copy = extract(_jpeg(_corner_crop(ref, 0.4), 30))  # 40% of the area, re-encoded at q30
    n_copy = inliers(copy, stored)
    n_other = [inliers(extract(_photo(i)), stored) for i in range(1, 8)]
    # unrelated photos of one kind (clothes on plain backdrops) share a few chance matches;
    # matched one-to-one, no degenerate transform gathers them into tens of inliers
    assert n_copy >= 25 and max(n_other) < 10, (n_copy, n_other)
    assert verify_bonus(n_copy) == VERIFY_BONUS and verify_bonus(max(n_other)) < VERIFY_BONUS / 2
    # rotation and scale are part of the model: a turned, shrunk copy verifies too
    turned = ref.rotate(10, expand=True).resize((ref.width // 2, ref.height // 2))
    assert inliers(extract(turned), stored) >= 15


def test_many_query_keypoints_on_one_stored_keypoint_count_once():
    """A degenerate match, every query keypoint landing on one stored keypoint, is one match."""
    good = np.array([0, 1, 2, 3])
    dist = np.array([9, 3, 7, 5])
    nearest = np.array([4, 4, 4, 2])
    assert _one_to_one(good, dist, nearest).tolist() == [1, 3]


@pytest.mark.parametrize("m,n", [(256, 256), (37, 2), (5, 180)])
def test_two_nearest_agrees_with_faiss_knn(m, n):
    """The full-matrix 2-NN gives FAISS k-NN's two distances, and a nearest at the first one,
    on descriptors with many ties (few distinct bits)."""
    import faiss
    rng = np.random.default_rng(m + n)
    q = (rng.integers(0, 4, (m, 32)) * 64).astype(np.uint8)
    s = (rng.integers(0, 4, (n, 32)) * 64).astype(np.uint8)
    first, second, nearest = two_nearest(q, s)
    dist, _ = faiss.knn_hamming(q, s, 2)
    assert first.tolist() == dist[:, 0].tolist() and second.tolist() == dist[:, 1].tolist()
    own = np.unpackbits(q[:, None, :] ^ s[nearest][:, None, :], axis=2).sum(axis=(1, 2))
    assert own.tolist() == first.tolist()


def test_batched_matching_gives_each_pairs_own_count():
    """One query against several stored sets at once (padded to one width, one distance call)
    counts what each pair alone counts: fewer keypoints, too few to match, none at all."""
    photos = [_photo(i) for i in range(4)]
    query = extract(_jpeg(_corner_crop(photos[0], 0.45), 40))
    full = extract(photos[0])
    xy, des = unpack(full)
    stored = [full, extract(photos[1]), pack(xy[:60], des[:60]), pack(xy[:1], des[:1]),
              np.zeros(KEYPOINT_BYTES, np.uint8), extract(photos[0].resize((200, 150)))]
    alone = [inliers(query, s) for s in stored]
    assert inliers_many(query, stored) == alone and alone[0] >= 40 and alone[3] == alone[4] == 0
    many = [stored[0]] * 24 + [stored[4], stored[3]]  # many sets, the last ones with nothing to match
    assert inliers_many(query, many) == [alone[0]] * 24 + [0, 0]
    blocks = np.stack([query, extract(photos[2])])
    got = verify_blocks(blocks, [0, 1, -1, 0], [stored[0], stored[0], stored[0], None])
    assert got == [alone[0], inliers(blocks[1], stored[0]), max(alone[0], got[1]), None]


def test_pairs_that_cannot_reach_what_matters_skip_ransac_and_count_zero():
    """A batch job says the fewest inliers that matter per pair: a pair with fewer one-to-one
    matches than that answers 0, the others their exact count."""
    photos = [_photo(i) for i in range(3)]
    query = extract(_jpeg(_corner_crop(photos[0], 0.45), 40))
    stored = [extract(photos[0]), extract(photos[1]), extract(photos[2])]
    exact = inliers_many(query, stored)
    assert inliers_many(query, stored, [0, 0, 0]) == exact
    assert inliers_many(query, stored, [exact[0], 1000, 1000]) == [exact[0], 0, 0]
    assert inliers_many(query, stored, [exact[0] + 200, 1, 1])[0] == 0
    assert verify_blocks(query[None], [0, 0], stored[:2], [1000, 0]) == [0, exact[1]]


def test_bonus_is_zero_then_linear_then_capped():
    assert verify_bonus(0) == 0 and verify_bonus(BONUS_FROM) == 0
    assert 0 < verify_bonus((BONUS_FROM + BONUS_FULL) // 2) < VERIFY_BONUS
    assert verify_bonus(1000) == VERIFY_BONUS
    counts = np.array([0, BONUS_FROM, (BONUS_FROM + BONUS_FULL) // 2, 1000])
    assert verify_bonus(counts).tolist() == [verify_bonus(int(n)) for n in counts]


def test_shard_stores_and_verifies_keypoints_across_restart(tmp_path):
    bits = 128
    photos = [_photo(i) for i in range(3)]
    kps = np.stack([extract(p) for p in photos])
    codes = np.random.default_rng(0).integers(0, 256, (3, 16), dtype=np.uint8)
    vectors = np.random.default_rng(1).integers(-127, 128, (3, bits), dtype=np.int8)
    shard = ShardActor(0, str(tmp_path / "s"), bits, vector_bytes=bits, keypoint_bytes=KEYPOINT_BYTES)
    shard.add(["a", "b"], records(codes[:2], vectors[:2], kps[:2]))
    shard.add(["bare"], codes[2:])  # added by code: no vector, no keypoints
    query = extract(_jpeg(_corner_crop(photos[0], 0.45), 40))
    got = shard.verify(["a", "b", "bare", "missing"], query)
    assert got[0] >= 40 and got[1] < 25 and got[2] is None and got[3] is None
    stored = shard.keypoints(["b", "bare", "missing"])  # what a batch job's worker matches
    assert np.array_equal(stored[0], kps[1]) and not stored[1:].any() and shard.keypoints([]).shape == (0, KEYPOINT_BYTES)
    assert shard.stats()["keypoint_bytes"] == KEYPOINT_BYTES
    # the side vector still scores search hits (the keypoints sit after it in the record)
    (hits,) = shard.search(codes[:1], k=3, vectors=vectors[:1])
    assert hits[0]["id"] == "a" and hits[0]["score"] == pytest.approx(0, abs=1e-3)
    shard.close()
    again = ShardActor(0, str(tmp_path / "s"), bits, vector_bytes=bits, keypoint_bytes=KEYPOINT_BYTES)
    assert again.verify(["a"], query) == got[:1]  # replayed from the WAL
    # several query blocks (as given, mirrored): each id names the block it is verified by
    mirrored = extract_query(_jpeg(_corner_crop(photos[0], 0.45), 40))[::-1]  # mirrored first
    assert again.verify(["a", "a"], mirrored, [1, 0])[0] == got[0]
    assert again.verify(["a", "a"], mirrored, [1, 0])[1] < got[0]  # a mirror image verifies worse
    assert again.verify(["a"], mirrored, [-1]) == got[:1]  # -1: the better of the blocks
    with pytest.raises(ValueError, match="keypoints"):
        again.verify(["a"], b"\0" * 10)
    with pytest.raises(ValueError, match="which"):
        again.verify(["a"], mirrored, [2])
    again.close()
    with pytest.raises(ValueError, match="keypoints"):  # the layout is pinned in shard.json
        ShardActor(0, str(tmp_path / "s"), bits, vector_bytes=bits)


def test_search_verifies_its_top_hits_in_the_same_call(tmp_path):
    """A search with ``verify`` gives each of its top hits the inliers a separate verify call
    gives (mirrored views by the better block), leaves deeper hits unverified and keeps the
    order; without views, or for two queries, it refuses."""
    bits, n = 128, 6
    photos = [_photo(i) for i in range(n)]
    rng = np.random.default_rng(2)
    codes = rng.integers(0, 256, (n, 16), dtype=np.uint8)
    vectors = rng.integers(-127, 128, (n, bits), dtype=np.int8)
    shard = ShardActor(0, str(tmp_path / "s"), bits, vector_bytes=bits, keypoint_bytes=KEYPOINT_BYTES)
    shard.add([f"p{i}" for i in range(n)], records(codes, vectors, np.stack([extract(p) for p in photos])))
    kps = extract_query(_jpeg(_corner_crop(photos[1], 0.45), 40))
    views = [(0, "original", 0.0), (0, "flip", 1.0)]
    args = (codes[[1, 3]], 6, None, False, vectors[[1, 3]], None, None, 6, views)
    (plain,) = shard.search(*args)
    (verified,) = shard.search(*args, (3, kps.tobytes(), {"original": 0, "flip": -1}))
    assert [h["id"] for h in verified] == [h["id"] for h in plain]
    which = [-1 if h.get("variant") == "flip" else 0 for h in plain[:3]]
    assert [h["inliers"] for h in verified[:3]] == shard.verify([h["id"] for h in plain[:3]], kps, which)
    assert all("inliers" not in h for h in verified[3:])
    assert max(h["inliers"] for h in verified[:3] if h["id"] == "p1") >= 40
    with pytest.raises(ValueError, match="verify"):
        shard.search(codes[:1], 6, vectors=vectors[:1], verify=(3, kps.tobytes(), {}))
    with pytest.raises(ValueError, match="verify"):
        shard.search(codes[:2], 6, None, False, vectors[:2], None, None, 6, [(0, "original", 0.0), (1, "original", 0.0)],
                     (3, kps.tobytes(), {}))
    shard.close()


def test_shard_without_keypoints_drops_them(tmp_path):
    kps = extract(_photo(0))[None]
    codes = np.zeros((1, 16), np.uint8)
    shard = ShardActor(0, str(tmp_path / "s"), 128, vector_bytes=128)
    shard.add(["a"], records(codes, np.ones((1, 128), np.int8), kps))
    assert shard.verify(["a"], kps[0]) == [None]
    assert shard.get("a")["code"] == "00" * 16
    shard.close()


def test_keypoints_live_in_the_blob_log_and_survive_snapshot_crash_and_replay(tmp_path):
    """The store keeps an 8-byte slot per entry; the blobs are cut back to the snapshot's count
    on start-up and the WAL appends the rest again, so a torn tail after a crash is harmless."""
    bits, root = 128, str(tmp_path / "s")
    photos = [_photo(i) for i in range(4)]
    kps = np.stack([extract(p) for p in photos])
    codes = np.random.default_rng(0).integers(0, 256, (4, 16), dtype=np.uint8)
    query = extract(_jpeg(_corner_crop(photos[3], 0.45), 40))
    shard = ShardActor(0, root, bits, keypoint_bytes=KEYPOINT_BYTES)
    assert shard.store_bytes == 16 + 8
    shard.add(["a", "b"], records(codes[:2], None, kps[:2]))
    shard.add(["a\x1fcenter70"], codes[:1])  # a view: no keypoints, no blob
    shard.snapshot()
    shard.add(["c", "d"], records(codes[2:], None, kps[2:]))
    assert shard.add(["c"], records(codes[2:3], None, kps[2:3]))["unchanged"] == 1
    assert shard.add(["c"], records(codes[2:3], None, kps[3:4]))["replaced"] == 1  # new keypoints
    before = shard.verify(["a", "b", "c", "d", "a\x1fcenter70"], query)
    assert before[2] >= 40 and before[3] >= 40  # c now holds d's keypoints
    assert before[4] == before[0]  # a view without keypoints of its own is verified by its image's
    assert shard.stats()["keypoint_file_bytes"] == 5 * KEYPOINT_BYTES
    # crash: no close, and a torn half-blob at the end of the file
    with open(tmp_path / "s" / "keypoints.blobs", "ab") as fh:
        fh.write(b"\x07" * (KEYPOINT_BYTES // 2))
    again = ShardActor(0, root, bits, keypoint_bytes=KEYPOINT_BYTES)
    assert again.verify(["a", "b", "c", "d", "a\x1fcenter70"], query) == before
    assert again.stats()["keypoint_file_bytes"] == 5 * KEYPOINT_BYTES
    again.close()


def test_a_thumbnail_copy_is_verified_once_enlarged():
    """A copy kept as a thumbnail (a fifth of each side, about 60 pixels) is enlarged before
    detection, so its corners still match the stored original's; unrelated thumbnails do not."""
    ref = _photo(0)
    stored = extract(ref)
    thumb = lambda im: _jpeg(im.resize((im.width // 5, im.height // 5), Image.LANCZOS), 60)  # noqa: E731
    n_copy = inliers(extract(thumb(ref)), stored)
    n_other = [inliers(extract(thumb(_photo(i))), stored) for i in range(1, 6)]
    assert verify_bonus(n_copy) > 0 and n_copy > 2 * max(n_other), (n_copy, n_other)


def test_tiny_and_strip_images_have_no_keypoints_but_encode():
    """1x1 and 1xN images (once a 500 on /v1/search) are images: they are encoded, and carry no
    keypoints because ORB cannot detect any on them."""
    import io
    from PIL import Image
    from encoders.decode import load_image
    from encoders.keypoints import extract, extract_query
    from encoders.registry import get_encoder
    from encoders.tta import query_variants
    enc = get_encoder("deephash", device="cpu")
    for size in [(1, 1), (1, 10000), (10000, 1), (3, 2)]:
        buf = io.BytesIO()
        Image.new("RGB", size, (120, 30, 60)).save(buf, "PNG")
        img = load_image(buf.getvalue())
        assert not extract(img).any() and extract_query(img).shape == (2, KEYPOINT_BYTES)
        views, names = query_variants(img, enc.preprocess, "flip_turns")
        codes, _, vectors = enc.encode_vectors(np.concatenate(views))
        assert len(codes) == len(names) == 9 and vectors.shape == (9, enc.vector_bytes)  # 6 turns, negative, 2 tilts


def test_a_photo_pasted_into_a_picture_verifies_by_its_crops_keypoints():
    """A small photo pasted into another picture: the whole query's keypoints mostly lie outside
    it, so its own crop's keypoints (``extract_query_views``, what a content view's hit is
    verified by) verify it with many more inliers; the blocks come as given, mirrored, then
    each crop's two."""
    from encoders.keypoints import extract_query_views
    from encoders.tta import content_boxes, searched_boxes
    photo, scene = _photo(3), _photo(12).resize((640, 480))
    box = (330, 220, 330 + photo.width // 2, 220 + photo.height // 2)
    pasted = scene.copy()
    pasted.paste(photo.resize((box[2] - box[0], box[3] - box[1])), box[:2])
    boxes = searched_boxes(content_boxes(pasted))
    blocks = extract_query_views(pasted, boxes)
    assert len(blocks) == 2 + 2 * len(boxes) and boxes
    stored = extract(photo)
    whole, best = verify_blocks(blocks, [0, -1], [stored, stored])
    assert best >= BONUS_FULL and best >= 2 * whole
    assert verify_blocks(blocks, [[0, 1]], [stored]) == [max(inliers(b, stored) for b in blocks[:2])]
