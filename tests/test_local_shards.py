"""The router and the Searcher over in-process shards (``rayapp.local_shards``), as eval uses
them: the real routing, merge, stored-view folding, ranking and verification, no Ray cluster."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from encoders.keypoints import extract, extract_query
from formats.keypoints import KEYPOINT_BYTES
from rayapp.config import QueryConfig
from rayapp.local_shards import local_router, open_local_shards
from rayapp.searcher import QueryViews, Searcher
from shards.vectors import records
from shards.verify import confirmed
from tests.helpers_images import SCENES, edited_copy


@pytest.fixture()
def shards(tmp_path):
    opened = open_local_shards(str(tmp_path), 2, 8, kind="flat")
    yield opened
    for shard in opened:
        shard.close()


def test_a_stored_view_hit_folds_into_its_image_and_pays_its_cost(shards):
    router = local_router(shards, ref_views=1, ref_view_cost=0.5)
    images = np.array([[0b0000], [0b1100]], dtype=np.uint8)
    views = {"center70": np.array([[0b1110], [0b0000]], dtype=np.uint8)}
    assert router.add(["a", "b"], images, None, views)["added"] == 2
    hits = Searcher(router, QueryConfig(verify=0)).search(
        QueryViews.of_code(np.array([0b1111], dtype=np.uint8)), k=5).hits
    assert [(h.id, h.rank, h.ref_view) for h in hits] == [("a", 1.5, "center70"), ("b", 2.0, None)]
    assert {h.shard for h in hits} <= {0, 1}


def test_a_query_that_searches_its_mirror_leaves_stored_mirrors_out(shards):
    """A stored record (one view) finds an image through its stored mirror; a query with a
    mirrored view of its own finds it through that view, never through both."""
    router = local_router(shards, ref_views=1)
    router.add(["a"], np.array([[0b0000]], np.uint8), None, {"mirror": np.array([[0b1111]], np.uint8)})
    searcher = Searcher(router, QueryConfig(verify=0))
    (alone,) = searcher.search(QueryViews(np.array([[0b1111]], np.uint8)), k=1).hits
    assert (alone.ref_view, alone.distance) == ("mirror", 0)
    (both,) = searcher.search(QueryViews(np.array([[0b1111], [0b0001]], np.uint8), ["original", "flip"]), k=1).hits
    assert (both.ref_view, both.variant, both.distance) == (None, "flip", 1)


def test_a_shard_that_fails_makes_the_answer_partial(shards):
    router = local_router(shards)
    router.add([f"id-{i}" for i in range(20)], np.arange(20, dtype=np.uint8)[:, None])

    def broken(*args, **kwargs):
        raise RuntimeError("disk gone")

    shards[1].search = broken
    answer = Searcher(router, QueryConfig(verify=0)).search(QueryViews.of_code(np.array([3], np.uint8)), k=3)
    assert answer.partial and answer.missing == [1]
    assert answer.hits and all(h.shard == 0 for h in answer.hits)


def _photo_index(tmp_path, num_shards: int = 2):
    """Four real photos stored with their keypoints under codes 1, 2, 3 and 4 bits from 0."""
    photos = [Image.open(p).convert("RGB") for p in SCENES[:4]]
    opened = open_local_shards(str(tmp_path), num_shards, 8, keypoint_bytes=KEYPOINT_BYTES, kind="flat")
    router = local_router(opened)
    codes = np.array([[0b0001], [0b0011], [0b0111], [0b1111]], dtype=np.uint8)
    router.add([f"p{i}" for i in range(4)], records(codes, None, np.stack([extract(p) for p in photos])))
    return photos, router, opened


def _query(photo) -> QueryViews:
    return QueryViews(np.zeros((1, 1), np.uint8), keypoints=extract_query(edited_copy(photo, "jpeg")))


def test_a_query_with_no_confirmed_hit_verifies_deeper(tmp_path):
    photos, router, opened = _photo_index(tmp_path, num_shards=1)
    copy_of_last = _query(photos[3])  # its original is the farthest code: past the first round
    shallow = Searcher(router, QueryConfig(verify=2, verify_more=0)).search(copy_of_last, k=4).hits
    deep = Searcher(router, QueryConfig(verify=2, verify_more=2)).search(copy_of_last, k=4).hits
    assert [h.id for h in shallow] == ["p0", "p1", "p2", "p3"] and shallow[3].inliers is None
    assert deep[0].id == "p3" and confirmed(deep[0].inliers)
    for shard in opened:
        shard.close()


def test_a_confirmed_best_hit_stops_verification(tmp_path):
    photos, router, opened = _photo_index(tmp_path, num_shards=1)
    hits = Searcher(router, QueryConfig(verify=2, verify_more=2)).search(_query(photos[0]), k=4).hits
    assert hits[0].id == "p0" and confirmed(hits[0].inliers)
    assert [h.inliers for h in hits[2:]] == [None, None]
    for shard in opened:
        shard.close()


def test_over_two_shards_exactly_the_merged_top_is_verified(tmp_path):
    """Over several shards the merged top ``verify`` hits are verified (by a second call to the
    shards holding them), and no others: a shard's own best outside that top stays unverified.
    (One shard verifies within its search call: the tests above.)"""
    photos, router, opened = _photo_index(tmp_path)
    other = [i for i in range(4) if router.shard_for(f"p{i}") != router.shard_for("p0")]
    assert other, "the four photos all landed on one shard"
    best_there = other[0]  # the nearest code on the shard that does not hold p0
    hits = Searcher(router, QueryConfig(verify=1, verify_more=0)).search(_query(photos[best_there]), k=4).hits
    assert {h.id: h.inliers is not None for h in hits} == {f"p{i}": i == 0 for i in range(4)}
    for shard in opened:
        shard.close()


def _stored_record_hits(tmp_path, ref_views: tuple[str, ...]) -> list:
    """Six sample photos stored with ``ref_views``, searched by a mirrored copy's stored record
    alone, as dedup over stored records searches (its code, side vector and keypoints as
    given; no query views)."""
    from encoders.registry import get_encoder
    from rayapp.cluster import confidence_curves
    from rayapp.config import Config
    from rayapp.dedup_pages import _queries
    from rayapp.eval_search import encode_refs, local_index

    copy = tmp_path / "mirrored.jpg"
    Image.open(SCENES[0]).convert("RGB").transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(copy, quality=85)
    enc = get_encoder("deephash")
    cfg = Config()
    cfg.storage.num_shards, cfg.storage.ref_views = 1, list(ref_views)
    stored = encode_refs(enc, SCENES[:6], ref_views, keypoints=True)
    query = encode_refs(enc, [copy], (), keypoints=True)
    record = records(query["code"], query["vector"], query["keypoints"])
    widths = {"code_bytes": enc.code_bytes, "vector_bytes": enc.vector_bytes}
    with local_index(enc, stored, cfg) as router:
        searcher = Searcher(router, cfg.query, confidence_curves(cfg))
        return searcher.search(_queries({"records": record}, widths, "vector")[0], k=3).hits


def test_a_stored_mirror_finds_and_verifies_a_mirrored_copy_from_a_stored_record(tmp_path):
    """ORB is not mirror-invariant: stored with ``mirror`` (its code and its own keypoints), a
    photo is found by its mirrored copy's stored record and verified by the mirror's keypoints;
    stored without it, nothing reaches dedup's default floor (0.99)."""
    with_mirror = _stored_record_hits(tmp_path, ("center70", "mirror"))
    assert (with_mirror[0].id, with_mirror[0].ref_view) == (SCENES[0].name, "mirror")
    assert confirmed(with_mirror[0].inliers) and with_mirror[0].confidence >= 0.99
    without = _stored_record_hits(tmp_path, ("center70",))
    assert all(h.confidence < 0.99 for h in without)
