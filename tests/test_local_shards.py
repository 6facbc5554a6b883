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
