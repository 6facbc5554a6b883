"""The router and the Searcher over in-process shards (``rayapp.local_shards``), as eval uses
them: the real routing, merge, stored-view folding and ranking, no Ray cluster."""
from __future__ import annotations

import numpy as np
import pytest

from rayapp.config import QueryConfig
from rayapp.local_shards import local_router, open_local_shards
from rayapp.searcher import QueryViews, Searcher


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
