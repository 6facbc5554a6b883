"""ShardRouter over real ShardActor Ray actors: routing, k-way merge, radius, partial answers."""
from __future__ import annotations

import asyncio
import pickle
import time

import numpy as np
import pytest
import ray
from hypothesis import given, settings, strategies as st
import xxhash

from encoders.base import hamming
from rayapp.hits import Hit
from rayapp.ranking import merge_results
from rayapp.router import ShardRouter, ShardUnavailable, shard_for, with_views
from shards.actor import ShardActor
from shards.candidates import merge_views
from shards.views import view_id

BITS = 64
N = 300


def _make_shards(root, n=2, prefix="s", vector_bytes=0):
    actor = ray.remote(ShardActor).options(max_concurrency=16, num_cpus=0)
    handles = [actor.remote(i, str(root / f"{prefix}-{i}"), BITS, "flat", None, 100_000, vector_bytes)
               for i in range(n)]
    ray.get([h.ping.remote() for h in handles])
    return handles


def _kill(handle) -> None:
    """ray.kill is asynchronous: return only once the actor is really gone."""
    ray.kill(handle, no_restart=True)
    for _ in range(100):
        try:
            ray.get(handle.ping.remote(), timeout=5)
        except (ray.exceptions.RayActorError, ray.exceptions.GetTimeoutError):
            return
        time.sleep(0.05)
    raise AssertionError("actor did not die")


@ray.remote(num_cpus=0, max_concurrency=4)
class SlowShard:
    """Stands in for a hung shard: every call sleeps far longer than the router's timeout."""

    def search(self, codes, k=10, radius=None, with_meta=False, vectors=None, weights=None,
               fold=None, keep=None, views=None, verify=None, skip_views=()):
        time.sleep(30)
        return [[] for _ in codes]

    def search_pickled(self, payload):
        return self.search(*pickle.loads(payload))

    def add(self, ids, codes, metas=None, drop=None):
        time.sleep(30)
        return {"added": len(ids)}

    def stats(self):
        time.sleep(30)
        return {}

    def ping(self):
        time.sleep(30)
        return "pong"


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(7)
    codes = rng.integers(0, 256, size=(N, BITS // 8), dtype=np.uint8)
    codes[1] = codes[0]
    codes[1, 0] ^= 0b1           # planted near-duplicates of item 0 at distances 1 and 3
    codes[2] = codes[0]
    codes[2, 1] ^= 0b111
    ids = [f"img-{i:04d}" for i in range(N)]
    return ids, codes


@pytest.fixture(scope="module")
def router(ray_local, tmp_path_factory, data):
    ids, codes = data
    r = ShardRouter(_make_shards(tmp_path_factory.mktemp("router")), timeout_s=5.0)
    counts = r.add(ids, codes, [{"n": i} for i in range(N)])
    assert counts == {"added": N, "replaced": 0, "unchanged": 0}
    return r


def _reference(codes, query, k, radius=None, ids=None):
    d = hamming(query[None, :], codes)[0]
    order = sorted(range(len(codes)), key=lambda i: (d[i], ids[i]))
    if radius is not None:
        order = [i for i in order if d[i] <= radius]
    return [(ids[i], int(d[i])) for i in order[:k]]


def test_shard_for_is_stable_xxhash64():
    assert shard_for("abc", 5) == xxhash.xxh64_intdigest(b"abc") % 5
    assert shard_for("é", 3) == xxhash.xxh64_intdigest("é".encode("utf-8")) % 3
    counts = np.bincount([shard_for(f"id-{i}", 4) for i in range(4000)], minlength=4)
    assert counts.min() > 800  # roughly balanced
    with pytest.raises(TypeError):
        shard_for(17, 2)


def test_adds_go_to_owning_shard(router, data):
    ids, _ = data
    for i, shard in enumerate(router.shards):
        present = ray.get(shard.contains.remote(ids))
        assert present == [router.shard_for(x) == i for x in ids]
    assert sum(s["count"] for s in router.stats()) == N


def test_add_is_idempotent(router, data):
    ids, codes = data
    assert router.add(ids[:10], codes[:10], [{"n": i} for i in range(10)]) == {"added": 0, "replaced": 0, "unchanged": 10}


def test_search_merges_by_distance_then_id(router, data):
    ids, codes = data
    queries = np.concatenate([codes[:1], np.random.default_rng(1).integers(0, 256, (4, BITS // 8), dtype=np.uint8)])
    results, missing = router.search(queries, k=12)
    assert missing == []
    for q, hits in enumerate(results):
        ref = _reference(codes, queries[q], 12, ids=ids)
        assert [h.distance for h in hits] == [d for _, d in ref]
        assert [(h.distance, h.id) for h in hits] == sorted((h.distance, h.id) for h in hits)
        boundary = hits[-1].distance  # ties at the k-th distance may pick other ids
        assert [h.id for h in hits if h.distance < boundary] == [i for i, d in ref if d < boundary]
        for h in hits:
            assert h.shard == router.shard_for(h.id)
    assert [(h.id, h.distance) for h in results[0][:3]] == [
        ("img-0000", 0), ("img-0001", 1), ("img-0002", 3)]


def test_weighted_rerank_orders_by_bit_confidence(router, data):
    ids, codes = data
    weights = np.ones((1, BITS), np.float32)
    weights[0, 13:16] = 0.1  # img-0002 differs from img-0000 in exactly these 3 bits, img-0001 in bit 7
    results, missing = router.search(codes[:1], k=3, weights=weights)
    assert missing == []
    top = results[0]
    assert [h.id for h in top] == ["img-0000", "img-0002", "img-0001"]
    assert [h.weighted for h in top] == [0.0, 0.3, 1.0]
    # the radius still bounds the Hamming distance; the async twin agrees
    assert [h.id for h in router.search(codes[:1], k=3, radius=1, weights=weights)[0][0]] == [
        "img-0000", "img-0001"]
    assert asyncio.run(router.asearch(codes[:1], k=3, weights=weights)) == (results, missing)
    with pytest.raises(ValueError, match="weights must have shape"):
        router.search(codes[:1], k=3, weights=np.ones((1, 8), np.float32))
    # shards without side vectors ignore query vectors: the weighted ranking still applies
    vectors = np.ones((1, BITS), np.int8)
    assert router.search(codes[:1], k=3, weights=weights, vectors=vectors) == (results, missing)


def test_side_vectors_rank_across_shards_and_fold_views(ray_local, tmp_path):
    from formats.vectors import quantize
    from shards.vectors import records
    r = ShardRouter(_make_shards(tmp_path, n=3, vector_bytes=BITS), timeout_s=5.0, ref_views=1)
    rng = np.random.default_rng(11)
    codes = rng.integers(0, 256, (30, BITS // 8), dtype=np.uint8)
    floats = quantize(rng.normal(size=(30, BITS)))
    crop_floats = quantize(rng.normal(size=(30, BITS)))
    ids = [f"v-{i}" for i in range(30)]
    r.add(ids, records(codes, floats), None, {"center70": records(codes ^ 255, crop_floats)})
    # a query with img 4's code and img 9's crop vector: 9 wins through its stored crop's vector
    (hits,), missing = r.search(codes[4:5], k=5, vectors=crop_floats[9:10])
    assert missing == [] and hits[0].id == "v-9" and hits[0].ref_view == "center70"
    from encoders.tta import REF_VIEW_COST
    assert hits[0].score < 0.5 and hits[0].cost == REF_VIEW_COST
    keys = [h.score + h.cost for h in hits]
    assert keys == sorted(keys) and len({h.id for h in hits}) == 5


def _views(*costs: float, names=("original", "flip", "rot90", "rot270")) -> list:
    return [(0, names[v], c) for v, c in enumerate(costs)]


def test_merge_views_charges_each_view_its_prior_cost():
    as_given = [{"id": "a", "distance": 9, "weighted": 3.0}, {"id": "b", "distance": 12, "weighted": 4.0}]
    mirrored = [{"id": "b", "distance": 8, "weighted": 2.8}, {"id": "c", "distance": 9, "weighted": 3.2}]
    # equal costs: b's mirrored match (2.8) beats a (3.0)
    [top] = merge_views([as_given, mirrored], _views(0, 0), 3)
    assert [(h["id"], h["variant"]) for h in top] == [("b", "flip"), ("a", "original"), ("c", "flip")]
    # a mirrored match pays 0.5: a (3.0) now leads b (2.8 + 0.5) and c (3.2 + 0.5); b keeps its
    # best hit (3.3 < 4.0), with its own distances, not the cost
    [top] = merge_views([as_given, mirrored], _views(0, 0.5), 3)
    assert [(h["id"], h["variant"], h["weighted"]) for h in top] == [
        ("a", "original", 3.0), ("b", "flip", 2.8), ("c", "flip", 3.2)]
    assert merge_views([as_given, mirrored], _views(0, 0.5), 1) == [top[:1]]
    # one view: nothing to say about it; without weights the cost applies to the distance
    assert "variant" not in merge_views([as_given], _views(0), 2)[0][0]
    plain = [[{"id": "a", "distance": 9}], [{"id": "b", "distance": 8}]]
    assert [h["id"] for h in merge_views(plain, _views(0, 1.5), 2)[0]] == ["a", "b"]
    # two queries in one call: each merges its own views
    two = merge_views([as_given, mirrored], [(0, "original", 0.0), (1, "original", 0.0)], 5)
    assert [[h["id"] for h in q] for q in two] == [["a", "b"], ["b", "c"]]
    assert all("variant" not in h for q in two for h in q)


def test_merge_views_adds_to_the_cost_a_hit_already_paid():
    # b matched through a stored crop (cost 0.5) as given, a through the query's mirror
    as_given = [{"id": "b", "distance": 8, "weighted": 2.6, "cost": 0.5, "ref_view": "center70"}]
    mirrored = [{"id": "a", "distance": 9, "weighted": 2.9}]
    [top] = merge_views([as_given, mirrored], _views(0, 0.5), 2)
    assert [(h["id"], h["cost"]) for h in top] == [("b", 0.5), ("a", 0.5)]  # 3.1 < 3.4
    assert top[0]["ref_view"] == "center70" and top[1]["variant"] == "flip"


@settings(max_examples=200, deadline=None)
@given(st.lists(st.lists(st.tuples(st.sampled_from("abcdef"), st.integers(0, 40),
                                   st.sampled_from([None, 1.0, 2.5, 2.75]), st.sampled_from([0.0, 0.5])),
                         max_size=8), min_size=1, max_size=4),
       st.lists(st.sampled_from([0.0, 0.25, 0.5, 1.5]), min_size=4, max_size=4), st.integers(1, 6))
def test_merge_views_is_the_best_paid_copy_of_each_image(rows, costs, k):
    """Against the plain rule on Hits: each hit pays its view's cost and says its view, each id
    keeps its best, the top k by order_key."""
    from rayapp.ranking import order_key
    hits = [[Hit(i, d, weighted=w, cost=c) for i, d, w, c in row] for row in rows]
    names = [f"v{v}" for v in range(len(rows))]
    best: dict[str, Hit] = {}
    for v, row in enumerate(hits):
        for h in row:
            total = round(h.cost + costs[v], 3)
            h = h.but(cost=total) if total > 0 else h
            h = h.but(variant=names[v]) if len(rows) > 1 else h
            if h.id not in best or order_key(h) < order_key(best[h.id]):
                best[h.id] = h
    raw = [[h.to_json() for h in row] for row in hits]
    [merged] = merge_views(raw, [(0, names[v], costs[v]) for v in range(len(rows))], k)
    assert [Hit.from_json(h) for h in merged] == sorted(best.values(), key=order_key)[:k]


def test_with_views_expands_ids_and_drops_the_views_not_given():
    codes = np.arange(8, dtype=np.uint8).reshape(2, 4)
    ids, out, metas, drop = with_views(["x", "y"], codes, [{"n": 0}, {"n": 1}], {"center70": codes + 1})
    assert ids == ["x", "y", view_id("x", "center70"), view_id("y", "center70")]
    assert out.tolist() == np.concatenate([codes, codes + 1]).tolist() and metas[2] == {"n": 0}
    assert view_id("x", "top_left70") in drop and view_id("x", "center70") not in drop
    assert with_views(["x"], codes[:1], None, None)[3][0] == view_id("x", "center70")  # by code
    with pytest.raises(ValueError, match="unknown reference view"):
        with_views(["x"], codes[:1], None, {"zoom": codes[:1]})
    with pytest.raises(ValueError, match="reserved"):
        with_views([view_id("x", "center70")], codes[:1], None, None)
    with pytest.raises(ValueError, match="shape"):
        with_views(["x"], codes[:1], None, {"center70": codes})


def test_reference_views_share_a_shard_fold_into_hits_and_go_with_their_image(ray_local, tmp_path):
    r = ShardRouter(_make_shards(tmp_path, n=3), timeout_s=5.0, ref_views=1, ref_view_cost=0.5)
    rng = np.random.default_rng(7)
    codes, crops = (rng.integers(0, 256, (20, BITS // 8), dtype=np.uint8) for _ in range(2))
    ids = [f"img-{i}" for i in range(20)]
    assert r.add(ids, codes, [{"n": i} for i in range(20)], {"center70": crops}) == {
        "added": 20, "replaced": 0, "unchanged": 0}
    assert all(r.shard_for(view_id(i, "center70")) == r.shard_for(i) for i in ids)
    stats = r.stats()
    assert sum(s["count"] for s in stats) == 20 and sum(s["views"] for s in stats) == 20
    assert sum(s["codes"] for s in stats) == 40
    # a query equal to img-3's stored crop finds img-3 (through its view), once, with its meta
    (hits,), missing = r.search(crops[3], k=5, with_meta=True)
    assert missing == [] and hits[0].id == "img-3" and hits[0].ref_view == "center70"
    assert hits[0].distance == 0 and hits[0].cost == 0.5 and hits[0].meta == {"n": 3}
    assert len({h.id for h in hits}) == len(hits) == 5
    # re-adding img-3 by code alone drops its stale crop; removing img-4 removes its crop too
    assert r.add(["img-3"], codes[3:4] ^ 1)["replaced"] == 1
    assert all(h.ref_view is None for h in r.search(crops[3], k=20)[0][0] if h.id == "img-3")
    assert r.remove(["img-4"]) == 1
    stats = r.stats()
    assert sum(s["count"] for s in stats) == 19 and sum(s["views"] for s in stats) == 18
    assert all(h.id != "img-4" for h in r.search(crops[4], k=19)[0][0])


def test_radius_filters_and_meta(router, data):
    ids, codes = data
    results, missing = router.search(codes[0], k=10, radius=3, with_meta=True)
    assert missing == []
    assert [(h.id, h.distance) for h in results[0]] == _reference(codes, codes[0], 10, 3, ids)
    assert [h.meta for h in results[0]] == [{"n": 0}, {"n": 1}, {"n": 2}]
    assert router.search(codes[0], k=2, radius=3)[0][0][-1].id == "img-0001"
    assert router.search(codes[0], k=5, radius=0)[0] == [[Hit("img-0000", 0, shard=router.shard_for("img-0000"))]]


def test_async_twins_match_sync(router, data):
    ids, codes = data

    async def run():
        return (await router.asearch(codes[:3], k=7), await router.aget("img-0005"),
                await router.astats())

    (res, missing), item, stats = asyncio.run(run())
    assert missing == [] and res == router.search(codes[:3], k=7)[0]
    assert item["id"] == "img-0005" and item["meta"] == {"n": 5}
    assert item["shard"] == router.shard_for("img-0005")
    assert item["code"] == bytes(codes[5]).hex()
    assert [s["state"] for s in stats] == ["ready", "ready"]


def test_remove_and_get(router, data):
    ids, codes = data
    assert router.remove(["img-0002", "no-such-id"]) == 1
    assert router.get("img-0002") is None
    assert router.get("no-such-id") is None
    assert "img-0002" not in [h.id for h in router.search(codes[0], k=5)[0][0]]
    assert asyncio.run(router.aremove(["img-0002"])) == 0
    assert asyncio.run(router.aadd(["img-0002"], codes[2:3])) == {"added": 1, "replaced": 0, "unchanged": 0}
    assert router.search(codes[0], k=3)[0][0][2].id == "img-0002"


def test_bad_input_is_a_value_error(router):
    with pytest.raises(ValueError):
        router.add(["a", "b"], np.zeros((1, BITS // 8), np.uint8))
    with pytest.raises(ValueError):
        router.search(np.zeros((1, BITS // 8), np.uint8), k=0)
    with pytest.raises(ValueError):  # a shard rejecting a wrong code size is the caller's fault
        router.add(["x"], np.zeros((1, 3), np.uint8))
    with pytest.raises(ValueError):
        ShardRouter([])


def test_merge_results_tags_shards_and_applies_radius():
    replies = {0: [[{"id": "b", "distance": 2}, {"id": "d", "distance": 9}]],
               1: [[{"id": "a", "distance": 2}, {"id": "c", "distance": 5}]]}
    merged = merge_results(replies, 1, k=3, radius=5)
    assert merged == [[Hit("a", 2, shard=1), Hit("b", 2, shard=0), Hit("c", 5, shard=1)]]
    scored = {0: [[{"id": "b", "distance": 2, "score": 9.0}]], 1: [[{"id": "a", "distance": 7, "score": 3.5}]]}
    assert [h.id for h in merge_results(scored, 1, k=2)[0]] == ["a", "b"]  # by score, not distance


def test_dead_shard_gives_partial_answer_and_failed_writes(ray_local, tmp_path_factory, data):
    ids, codes = data
    shards = _make_shards(tmp_path_factory.mktemp("dead"), prefix="d")
    r = ShardRouter(shards, timeout_s=3.0, write_timeout_s=3.0)
    r.add(ids, codes)
    _kill(shards[1])
    t0 = time.monotonic()
    results, missing = r.search(codes[:2], k=5)
    assert missing == [1] and time.monotonic() - t0 < 5
    assert results[0] and all(h.shard == 0 for q in results for h in q)
    assert asyncio.run(r.asearch(codes[:2], k=5))[1] == [1]
    victim = next(x for x in ids if r.shard_for(x) == 1)
    with pytest.raises(ShardUnavailable) as err:
        r.add([victim], codes[:1])
    assert err.value.shards == [1]
    with pytest.raises(ShardUnavailable):
        asyncio.run(r.aremove([victim]))
    with pytest.raises(ShardUnavailable):
        r.get(victim)
    stats = r.stats()
    assert stats[0]["state"] == "ready" and stats[1]["state"] == "unavailable"


def test_dead_shard_is_re_resolved(ray_local, tmp_path_factory, data):
    ids, codes = data
    root = tmp_path_factory.mktemp("resolve")
    shards = _make_shards(root, prefix="r")
    r = ShardRouter(shards, timeout_s=5.0, resolver=lambda i: replacement[i])
    r.add(ids, codes)
    _kill(shards[0])
    replacement = {0: _make_shards(root, n=1, prefix="r")[0]}  # same dir: reloads from disk
    assert r.search(codes[0], k=3)[1] == [0]   # this call finds the dead handle ...
    for _ in range(50):                         # ... and, once the new one answers a ping, uses it
        results, missing = r.search(codes[0], k=3)
        if not missing:
            break
        time.sleep(0.1)
    assert missing == [] and [h.id for h in results[0]] == ["img-0000", "img-0001", "img-0002"]


def test_hung_shard_times_out_without_hanging(router, data):
    ids, codes = data
    slow = SlowShard.remote()
    r = ShardRouter([router.shards[0], slow], timeout_s=2.0, write_timeout_s=2.0)
    t0 = time.monotonic()
    results, missing = r.search(codes[:1], k=5)
    assert missing == [1] and 2.0 <= time.monotonic() - t0 < 8
    assert results[0] and all(h.shard == 0 for h in results[0])
    # On probation (its ping probe is pending) it is skipped at once, not waited for again.
    for call in (lambda: r.search(codes[:1], k=5), lambda: asyncio.run(r.asearch(codes[:1], k=5))):
        t0 = time.monotonic()
        results, missing = call()
        assert missing == [1] and time.monotonic() - t0 < 1.5
        assert results[0] and all(h.shard == 0 for h in results[0])
    victim = next(x for x in ids if r.shard_for(x) == 1)
    t0 = time.monotonic()
    with pytest.raises(ShardUnavailable, match="timed out"):
        asyncio.run(r.aadd([victim], codes[:1]))
    assert time.monotonic() - t0 < 8
    assert r.stats()[1]["state"] == "unavailable"
    ray.kill(slow)


def test_a_pair_through_a_mirrored_view_is_verified_by_both_blocks():
    """A batch job's pair that matched through a mirrored view is two entries (as given and
    mirrored) and keeps the better count; other pairs, and queries with one block, are one."""
    from rayapp.pair_plan import pair_counts, pair_plan
    from shards.verify import KEYPOINT_BYTES
    two = np.stack([np.full(KEYPOINT_BYTES, 1, np.uint8), np.full(KEYPOINT_BYTES, 2, np.uint8)])
    one = np.full(KEYPOINT_BYTES, 3, np.uint8)
    pairs = [(0, "a"), (0, "b"), (1, "c")]
    plan = pair_plan(lambda _: 0, pairs, [two, two, one], ["flip", "original", "flip"])
    rows, ids, blocks, which = plan[0]
    assert rows == [0, 0, 1, 2] and ids == ["a", "a", "b", "c"]
    assert [blocks[w][0] for w in which] == [1, 2, 1, 3]  # each query's blocks stacked once
    assert pair_counts(3, plan, {0: [7, 40, None, 5]}) == [40, None, 5]


def test_each_view_is_verified_by_its_keypoint_blocks():
    """As given by block 0; a mirrored view by the first two (as given, mirrored); a framed or
    pasted photo's crop, or its mirror, by every block once the query has crops' blocks."""
    from rayapp.pair_plan import keypoint_block
    from shards.checks import check_keypoint_blocks
    from shards.verify import KEYPOINT_BYTES
    assert [keypoint_block(v, 2) for v in ("original", "flip", "content", "content+flip")] == [0, -1, 0, -1]
    assert [keypoint_block(v, 6) for v in ("rot90", "flip+rot90", "content", "content+flip")] == [0, [0, 1], -1, -1]
    assert keypoint_block("flip", 1) == 0
    blocks = bytes(KEYPOINT_BYTES * 3)
    assert check_keypoint_blocks(blocks, [0, -1, [0, 2]], 3)[1] == [0, -1, [0, 2]]
    for bad in ([3], [[0, 3]], [[]], ["x"]):
        with pytest.raises(ValueError):
            check_keypoint_blocks(blocks, bad, 1)
