"""ShardActor in-process (add/search/remove/get/stats, restart, snapshot + WAL replay, compaction)
and as a real Ray actor that is killed and restarted by Ray."""
from __future__ import annotations

import json
import os
import threading
import time

import numpy as np
import pytest
import ray

import shards.actor as actor_mod
import shards.store as store_mod
from shards.actor import ShardActor
from shards.store import HashCollisionError
from shards.wal import replay

BITS = 128


def codes_for(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, BITS // 8), dtype=np.uint8)


def near(code: np.ndarray, d: int, seed: int = 0) -> np.ndarray:
    bits = np.unpackbits(code)
    bits[np.random.default_rng(seed).choice(len(bits), d, replace=False)] ^= 1
    return np.packbits(bits)


def names(n: int, prefix: str = "img") -> list[str]:
    return [f"{prefix}/{i:05d}.jpg" for i in range(n)]


@pytest.fixture
def shard(tmp_path):
    a = ShardActor(3, str(tmp_path / "s"), BITS, snapshot_every=1000)
    yield a
    a.close()


def test_add_search_get_contains_stats(shard):
    ids, codes = names(300), codes_for(300)
    metas = [{"path": f"/data/{i}.jpg"} for i in ids]
    assert shard.add(ids, codes, metas) == {"added": 300, "replaced": 0, "unchanged": 0}
    # searchable as soon as add returns
    q = np.stack([near(codes[7], 5, 1), codes[8], near(codes[9], 12, 2)])
    res = shard.search(q, k=3)
    assert [r[0]["id"] for r in res] == [ids[7], ids[8], ids[9]]
    assert [r[0]["distance"] for r in res] == [5, 0, 12]
    for r in res:
        assert [(h["distance"], h["id"]) for h in r] == sorted((h["distance"], h["id"]) for h in r)
        assert set(r[0]) == {"id", "distance"}
    within = shard.search(q, k=10, radius=6)
    assert [[h["id"] for h in r] for r in within] == [[ids[7]], [ids[8]], []]
    assert shard.search(q[:1], k=1, with_meta=True)[0][0]["meta"] == {"path": f"/data/{ids[7]}.jpg"}
    assert shard.search(codes[0], k=1)[0][0]["id"] == ids[0]  # a single 1-D code works too
    assert shard.search(q, k=0) == [[], [], []]

    got = shard.get(ids[5])
    assert got == {"id": ids[5], "code": codes[5].tobytes().hex(), "meta": metas[5]}
    assert shard.get("missing.jpg") is None
    assert shard.contains([ids[0], "missing.jpg"]) == [True, False]

    st = shard.stats()
    assert st["shard_id"] == 3 and st["count"] == 300 and st["bits"] == BITS
    assert st["state"] == "ready" and st["pid"] == os.getpid() and st["node_id"] is None
    assert st["index_kind"] == "mihc" and st["memory_bytes"] > 0 and st["wal_records"] == 300
    assert shard.ping() == "pong"


def test_add_is_idempotent_and_replaces(shard):
    ids, codes = names(50), codes_for(50)
    shard.add(ids, codes, [{"v": 1}] * 50)
    assert shard.add(ids, codes, [{"v": 1}] * 50) == {"added": 0, "replaced": 0, "unchanged": 50}
    assert shard.add(ids[:5], codes[:5]) == {"added": 0, "replaced": 0, "unchanged": 5}  # no metas: kept
    new = codes_for(2, seed=99)
    out = shard.add([ids[0], ids[1], "fresh"], np.stack([new[0], codes[1], new[1]]),
                    [{"v": 2}, {"v": 3}, None])
    assert out == {"added": 1, "replaced": 2, "unchanged": 0}
    assert shard.get(ids[0])["code"] == new[0].tobytes().hex()
    assert shard.get(ids[1])["meta"] == {"v": 3} and shard.get("fresh")["meta"] == {}
    hit = shard.search(codes[0], k=1)[0]
    assert all(h["distance"] > 0 for h in hit)  # the old code is gone from the index
    assert shard.search(new[0], k=1)[0][0] == {"id": ids[0], "distance": 0}
    assert shard.stats()["count"] == 51


def test_remove_then_no_match(shard):
    ids, codes = names(100), codes_for(100)
    shard.add(ids, codes)
    assert shard.remove([ids[3], ids[4], "never-added", ids[3]]) == 2
    assert shard.remove([ids[3]]) == 0
    res = shard.search(codes[3:5], k=5, radius=20)
    assert all(h["id"] not in (ids[3], ids[4]) for r in res for h in r)
    assert shard.get(ids[3]) is None and shard.contains([ids[3]]) == [False]
    assert shard.stats()["count"] == 98
    assert shard.add([ids[3]], codes[3:4]) == {"added": 1, "replaced": 0, "unchanged": 0}
    assert shard.search(codes[3], k=1)[0][0]["id"] == ids[3]


def test_restart_keeps_adds_and_deletes(tmp_path, monkeypatch):
    monkeypatch.setattr(actor_mod, "_REPLAY_BATCH", 7)  # replay in many small batches
    d = str(tmp_path / "s")
    a = ShardActor(0, d, BITS)
    ids, codes = names(200), codes_for(200)
    a.add(ids, codes, [{"n": i} for i in range(200)])
    a.remove(ids[:10])
    a.add([ids[20]], codes_for(1, seed=5))  # replaced
    del a  # no close: like a killed process
    b = ShardActor(0, d, BITS)
    assert b.stats()["count"] == 190 and b.stats()["replayed"] == 211
    assert b.get(ids[5]) is None and b.get(ids[50])["meta"] == {"n": 50}
    assert b.get(ids[20])["code"] == codes_for(1, seed=5)[0].tobytes().hex()
    assert b.search(codes[50], k=1)[0][0]["id"] == ids[50]
    assert all(h["id"] not in ids[:10] for r in b.search(codes[:10], k=3, radius=10) for h in r)
    b.close()


def test_snapshot_then_wal_replay(tmp_path):
    d = tmp_path / "s"
    a = ShardActor(1, str(d), BITS, snapshot_every=100)
    ids, codes = names(450), codes_for(450)
    for s in range(0, 450, 50):
        a.add(ids[s:s + 50], codes[s:s + 50], [{"i": i} for i in range(s, s + 50)])
    st = a.stats()
    assert st["generation"] >= 3 and st["wal_records"] < 150  # snapshots happened, WAL rotated
    a.remove(ids[400:410])
    gen = st["generation"]
    assert json.loads((d / "CURRENT").read_text())["generation"] == gen
    assert sorted(p.name for p in d.iterdir()) == sorted(
        ["CURRENT", "shard.json", f"snapshot-{gen:08d}", f"wal-{gen:08d}.log"])
    wal_ids = [r.id for r in replay(d / f"wal-{gen:08d}.log")]
    assert ids[405] in wal_ids  # the deletes are in the log after the snapshot
    del a
    b = ShardActor(1, str(d), BITS, snapshot_every=100)
    assert b.stats()["count"] == 440 and b.stats()["generation"] == gen
    assert b.get(ids[0])["meta"] == {"i": 0} and b.get(ids[405]) is None
    assert b.search(codes[420], k=1)[0][0]["id"] == ids[420]
    snap = b.snapshot()
    assert snap["generation"] == gen + 1 and snap["count"] == 440
    b.close()
    c = ShardActor(1, str(d), BITS)
    assert c.stats()["count"] == 440 and c.stats()["replayed"] == 0
    c.close()


def test_reference_views_are_counted_apart_and_survive_snapshot_and_replay(tmp_path):
    from shards.views import view_id
    d = tmp_path / "s"
    a = ShardActor(1, str(d), BITS, snapshot_every=1000)
    ids, codes = names(30), codes_for(30)
    views = [view_id(i, "center70") for i in ids]
    assert a.add(ids + views, np.concatenate([codes, codes_for(30, 1)])) == {
        "added": 30, "replaced": 0, "unchanged": 0}  # images counted, views not
    st = a.stats()
    assert (st["count"], st["views"], st["codes"]) == (30, 30, 60)
    a.snapshot()
    assert a.remove([ids[0], views[0], views[1]]) == 1
    # drop removes in the same durable step: ids[2] re-added by code without its crop
    assert a.add([ids[2]], codes[2:3] ^ 1, drop=[views[2], view_id(ids[2], "top_left70")]) == {
        "added": 0, "replaced": 1, "unchanged": 0}
    a.close()
    b = ShardActor(1, str(d), BITS)  # snapshot + WAL replay
    st = b.stats()
    assert (st["count"], st["views"], st["codes"]) == (29, 27, 56) and b.get(views[2]) is None
    b.close()


def test_crash_leftovers_are_recovered(tmp_path):
    d = tmp_path / "s"
    a = ShardActor(0, str(d), BITS)
    ids, codes = names(60), codes_for(60)
    a.add(ids[:30], codes[:30])
    a.snapshot()
    a.add(ids[30:], codes[30:])
    gen = a.stats()["generation"]
    a.close()
    # a crash in the middle of the next snapshot: its temp dir and the next WAL exist
    (d / f"snapshot-{gen + 1:08d}.tmp").mkdir()
    (d / f"snapshot-{gen + 1:08d}.tmp" / "junk").write_text("partial")
    with open(d / f"wal-{gen:08d}.log", "ab") as f:  # and a torn record at the end of the log
        f.write(b"\x40\x00\x00\x00\x01\x02")
    b = ShardActor(0, str(d), BITS)
    assert b.stats()["count"] == 60 and b.search(codes[45], k=1)[0][0]["id"] == ids[45]
    assert not (d / f"snapshot-{gen + 1:08d}.tmp").exists()
    b.add(["after"], codes_for(1, 7))  # appends go after the cut tail
    b.close()
    c = ShardActor(0, str(d), BITS)
    assert c.stats()["count"] == 61
    c.close()


def test_compaction(tmp_path):
    d = str(tmp_path / "s")
    a = ShardActor(0, d, BITS)
    ids, codes = names(500), codes_for(500)
    a.add(ids, codes)
    a.remove(ids[::2])
    assert a.stats()["tombstones"] == 250
    out = a.compact()
    assert out["purged"] == 250 and out["count"] == 250
    st = a.stats()
    assert st["tombstones"] == 0 and st["index_count"] == 250 and st["wal_records"] == 0
    assert a.search(codes[1], k=1)[0][0]["id"] == ids[1]
    assert all(h["id"] not in ids[::2] for r in a.search(codes[:20], k=5) for h in r)
    a.close()
    b = ShardActor(0, d, BITS)
    assert b.stats()["count"] == 250 and b.stats()["tombstones"] == 0
    b.close()


def test_kind_change_rebuilds_and_bits_mismatch_refused(tmp_path):
    d = str(tmp_path / "s")
    a = ShardActor(0, d, BITS, kind="flat")
    ids, codes = names(80), codes_for(80)
    a.add(ids, codes)
    a.snapshot()
    a.remove(ids[:5])
    a.close()
    b = ShardActor(0, d, BITS, kind="mihc", index_params={"nflip": 2})
    st = b.stats()
    assert st["index_kind"] == "mihc" and st["index_params"]["nflip"] == 2 and st["count"] == 75
    assert b.search(codes[40], k=1)[0][0]["id"] == ids[40] and b.get(ids[0]) is None
    b.close()
    with pytest.raises(ValueError, match="64-bit"):
        ShardActor(0, d, 64)


def test_bad_input_is_rejected_cleanly(shard):
    c = codes_for(2)
    with pytest.raises(ValueError, match="list of strings"):
        shard.add("abc", c)
    with pytest.raises(ValueError, match="non-empty"):
        shard.add(["", "x"], c)
    with pytest.raises(ValueError, match="shape"):
        shard.add(["a", "b"], np.zeros((2, 8), dtype=np.uint8))
    with pytest.raises(ValueError, match="uint8"):
        shard.add(["a", "b"], c.astype(np.float32))
    with pytest.raises(ValueError, match="2 ids"):
        shard.add(["a", "b"], codes_for(3))
    with pytest.raises(ValueError, match="duplicate"):
        shard.add(["a", "a"], c)
    with pytest.raises(ValueError, match="dict"):
        shard.add(["a", "b"], c, ["x", "y"])
    with pytest.raises(ValueError, match="JSON"):
        shard.add(["a", "b"], c, [{"x": object()}, {}])
    with pytest.raises(ValueError, match="too long"):
        shard.add(["x" * 2000, "b"], c)
    with pytest.raises(ValueError, match="k must"):
        shard.search(c, k=-1)
    with pytest.raises(ValueError, match="radius"):
        shard.search(c, k=3, radius=-1)
    with pytest.raises(ValueError, match="non-empty"):
        shard.get("")
    assert shard.stats()["count"] == 0 and shard.stats()["wal_records"] == 0


def test_hash_collision_is_rejected(shard, monkeypatch):
    real = store_mod._hash64
    monkeypatch.setattr(store_mod, "_hash64",
                        lambda data: 7 if data in (b"first", b"second") else real(data))
    c = codes_for(2)
    shard.add(["first"], c[:1])
    with pytest.raises(HashCollisionError, match="first"):
        shard.add(["ok", "second"], c)
    assert shard.contains(["first", "ok", "second"]) == [True, False, False]
    assert shard.get("first")["code"] == c[0].tobytes().hex()
    assert shard.stats()["wal_records"] == 1  # nothing of the rejected batch was logged


def test_concurrent_searches_during_adds(shard):
    ids, codes = names(6000), codes_for(6000)
    shard.add(ids[:500], codes[:500])
    errors: list[BaseException] = []
    done = threading.Event()

    def writer():
        try:
            for s in range(500, 6000, 250):
                shard.add(ids[s:s + 250], codes[s:s + 250])
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)
        finally:
            done.set()

    def reader():
        rng = np.random.default_rng()
        try:
            while not done.is_set():
                j = int(rng.integers(0, 500))
                assert shard.search(codes[j], k=2)[0][0]["id"] == ids[j]
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=writer), threading.Thread(target=reader),
               threading.Thread(target=reader)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors, errors
    assert shard.stats()["count"] == 6000


# ------------------------------------------------------------------------------------------------
# as a real Ray actor
# ------------------------------------------------------------------------------------------------

def _wait_restarted(actor, old_pid: int, timeout: float = 60.0) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        try:
            st = ray.get(actor.stats.remote(), timeout=10)
            if st["pid"] != old_pid:
                return st
        except (ray.exceptions.RayActorError, ray.exceptions.GetTimeoutError):
            pass
        if time.monotonic() > deadline:
            raise TimeoutError("shard actor was not restarted")
        time.sleep(0.2)


def test_ray_actor_survives_kill(ray_local, tmp_path):
    Shard = ray.remote(ShardActor).options(max_restarts=-1, max_task_retries=-1, max_concurrency=8)
    actor = Shard.remote(0, str(tmp_path / "shard-0"), BITS, snapshot_every=150)
    ids, codes = names(400), codes_for(400)
    acks = [ray.get(actor.add.remote(ids[s:s + 100], codes[s:s + 100], [{"s": s}] * 100))
            for s in range(0, 400, 100)]
    assert sum(a["added"] for a in acks) == 400
    assert ray.get(actor.remove.remote(ids[:7])) == 7
    before = ray.get(actor.stats.remote())
    assert before["node_id"] == ray.get_runtime_context().get_node_id()

    ray.kill(actor, no_restart=False)
    after = _wait_restarted(actor, before["pid"])
    assert after["count"] == 393 and after["generation"] == before["generation"]
    res = ray.get(actor.search.remote(codes[100:103], 1, None, True))
    assert [r[0]["id"] for r in res] == ids[100:103]
    assert res[0][0]["meta"] == {"s": 100}
    assert ray.get(actor.get.remote(ids[3])) is None
    assert ray.get(actor.contains.remote([ids[399], ids[0]])) == [True, False]
    # keeps accepting writes after the restart
    assert ray.get(actor.add.remote(["after-restart"], codes_for(1, 3)))["added"] == 1
    ray.kill(actor, no_restart=True)


def test_side_vectors_rank_hits_and_survive_restart(tmp_path):
    from formats.vectors import quantize
    from shards.vectors import VECTOR_SCALE, records, vector_distance
    rng = np.random.default_rng(5)
    codes, floats = codes_for(40), rng.normal(size=(40, BITS)).astype(np.float32)
    a = ShardActor(0, str(tmp_path / "s"), BITS, vector_bytes=BITS)
    ids = names(40)
    recs = records(codes, quantize(floats))
    assert recs.shape == (40, BITS // 8 + BITS)
    with pytest.raises(ValueError, match="records"):
        a.add(ids, codes[:, :7])  # neither a code nor a record of this shard
    a.add(ids, recs)
    a.add(["bare"], codes[:1])  # added by code: no vector, padded with zeros
    # the query's vector is item 7's: it ranks first by score though its code is far
    query = codes[3:4]
    (hits,) = a.search(query, k=41, vectors=quantize(floats[7:8]))
    assert hits[0]["id"] == ids[7] and hits[0]["score"] < 0.01 * VECTOR_SCALE
    assert [h["score"] for h in hits] == sorted(h["score"] for h in hits)
    bare = next(h for h in hits if h["id"] == "bare")
    assert bare["score"] == bare["distance"]  # no vector: ranked by its Hamming distance
    assert "score" not in a.search(query, k=3)[0][0]  # without query vectors: Hamming order
    assert a.get(ids[0])["code"] == codes[0].tobytes().hex()
    assert np.isnan(vector_distance(floats[0], np.zeros((1, BITS), np.int8), BITS))[0]
    a.close()
    b = ShardActor(0, str(tmp_path / "s"), BITS, vector_bytes=BITS)  # WAL replay keeps vectors
    assert b.search(query, k=41, vectors=quantize(floats[7:8]))[0][0]["id"] == ids[7]
    b.close()
    with pytest.raises(ValueError, match="side vectors"):
        ShardActor(0, str(tmp_path / "s"), BITS)  # the same dir without vectors is refused
    plain = ShardActor(1, str(tmp_path / "plain"), BITS)  # stores codes only: drops the vectors
    plain.add(ids[:2], recs[:2])
    assert plain.get(ids[1])["code"] == codes[1].tobytes().hex() and plain.stats()["vector_bytes"] == 0
    plain.close()


def _fold(rows: list[dict], cost: float, keep: int) -> list[dict]:
    """The fold rule written out plainly: each image at its best hit, where a stored view's
    pays ``cost``; ties by distance, then image id; the top ``keep``."""
    from shards.views import split_id
    best: dict[str, tuple] = {}
    for hit in rows:
        image, view = split_id(hit["id"])
        base = hit.get("score", hit.get("weighted", hit["distance"]))
        key = (round(base + (cost if view else 0.0), 3), hit["distance"], image)
        if image not in best or key < best[image][0]:
            best[image] = (key, image, view, hit)
    out = []
    for key, image, view, hit in sorted(best.values(), key=lambda b: b[0])[:keep]:
        folded = {**hit, "id": image}
        if view:
            folded.update(ref_view=view, cost=cost)
        out.append(folded)
    return out


@pytest.mark.parametrize("snapshot", [False, True])
def test_a_folded_search_is_the_fold_of_the_full_answer(tmp_path, snapshot):
    """A shard asked to fold (``fold``: a stored view's cost) answers the fold of its full
    answer: each image once, at its best hit, a view's paying the cost, the top ``keep``; ranked
    by side vectors, by the queries' bit confidences, and by Hamming distance without either."""
    from formats.vectors import quantize
    from shards.vectors import records
    from shards.views import view_id
    rng = np.random.default_rng(9)
    n = 120
    codes, floats = codes_for(n, seed=9), rng.normal(size=(n, BITS)).astype(np.float32)
    view_codes = np.stack([near(c, 3, seed=i) for i, c in enumerate(codes[::2])])
    ids = names(n) + [view_id(i, "center70") for i in names(n)[::2]]
    a = ShardActor(0, str(tmp_path / "s"), BITS, vector_bytes=BITS)
    a.add(ids, records(np.concatenate([codes, view_codes]),
                       quantize(np.concatenate([floats, floats[::2] + 0.3]))))
    if snapshot:
        a.snapshot()
    query = np.stack([near(codes[i], 5, seed=i) for i in (0, 3, 8)])
    weights = rng.uniform(0.1, 1.0, (3, BITS)).astype(np.float32)
    for ranked in ({"vectors": quantize(floats[[0, 3, 8]] + 0.5)}, {"weights": weights}, {}):
        full = a.search(query, k=60, **ranked)
        for keep in (5, 30):
            folded = a.search(query, k=60, fold=1.0, keep=keep, **ranked)
            assert folded == [_fold(rows, 1.0, keep) for rows in full]
            assert all(len(row) == keep for row in folded)
            assert any(h.get("ref_view") == "center70" and h["cost"] == 1.0 for row in folded for h in row)
    a.close()


def test_a_shard_merges_each_querys_views(tmp_path):
    """Asked with ``views`` (each code's query, view name and prior cost), a shard answers one
    list per query: ``merge_views`` of its per-view answers (the rule itself is tested in
    test_router), the top ``keep``; bad views are a clear error."""
    from formats.vectors import quantize
    from shards.candidates import merge_views
    from shards.vectors import records
    from shards.views import view_id
    rng = np.random.default_rng(12)
    n = 80
    codes, floats = codes_for(n, seed=12), rng.normal(size=(n, BITS)).astype(np.float32)
    ids = names(n) + [view_id(i, "center70") for i in names(n)[::2]]
    a = ShardActor(0, str(tmp_path / "v"), BITS, vector_bytes=BITS)
    a.add(ids, records(np.concatenate([codes, codes[::2]]), quantize(np.concatenate([floats, floats[::2] + 0.2]))))
    query = np.stack([near(codes[4], 6, seed=1), near(codes[9], 6, seed=2), near(codes[4], 20, seed=3)])
    views = [(0, "original", 0.0), (0, "flip", 0.5), (1, "original", 0.0)]
    weights = rng.uniform(0.1, 1.0, (3, BITS)).astype(np.float32)
    for ranked in ({"vectors": quantize(floats[[4, 9, 4]] + 0.4)}, {"weights": weights}, {}):
        for keep in (3, 25):
            per_view = a.search(query, k=50, fold=0.5, keep=keep, **ranked)
            merged = a.search(query, k=50, fold=0.5, keep=keep, views=views, **ranked)
            assert merged == merge_views(per_view, views, keep) and len(merged) == 2
            assert merged[0][0]["id"] in (names(n)[4], names(n)[9]) and merged[1][0]["id"] == names(n)[4]
    for bad in (views[:2], [(0, "original", 0.0), (2, "flip", 0.5), (2, "x", 0.0)], [(0, "a", -1.0)] * 3):
        with pytest.raises(ValueError, match="views must"):
            a.search(query, k=5, views=bad)
    a.close()


def test_weighted_ranks_by_the_confidence_of_the_bits_that_differ(tmp_path):
    """Without side vectors, a query's bit confidences rank its candidates: a code that differs
    only in bits the query is unsure of beats one that differs in fewer, surer bits."""
    from shards.weighted import weighted_hamming
    codes = codes_for(3, seed=4)
    codes[1], codes[2] = codes[0], codes[0]
    codes[1, 0] ^= 0b11100000  # 3 bits the query is unsure of
    codes[2, 1] ^= 0b10000000  # 1 bit it is sure of
    a = ShardActor(0, str(tmp_path / "w"), BITS)
    a.add(names(3), codes)
    weights = np.ones((1, BITS), np.float32)
    weights[0, :3] = 0.1
    (hits,) = a.search(codes[:1], k=3, weights=weights)
    assert [(h["id"], h["weighted"]) for h in hits] == [(names(3)[0], 0.0), (names(3)[1], 0.3),
                                                      (names(3)[2], 1.0)]
    assert np.allclose(weighted_hamming(codes[0], weights[0], codes), [0.0, 0.3, 1.0])
    with pytest.raises(ValueError, match="weights must have shape"):
        a.search(codes[:1], k=3, weights=np.ones((2, BITS), np.float32))
    a.close()
