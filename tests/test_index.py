"""Every index kind against exact numpy Hamming search on random codes with planted near-duplicates."""
from __future__ import annotations

import threading

import faiss
import numpy as np
import pytest

from shards.index import (DEFAULT_KIND, INDEX_KINDS, MISSING_DISTANCE, BinaryIndex, load_index,
                          make_index)

BITS = 128
PLANTED = 17  # distances 0..16

# (kind, params, n): HNSW builds ~100x slower than the others, so it gets a smaller set
CASES = [
    ("mihc", {}, 20_000),
    ("mih", {}, 20_000),
    ("flat", {}, 20_000),
    ("ivf", {"nlist": 64, "nprobe": 16}, 20_000),
    ("hnsw", {"M": 16, "efConstruction": 40, "efSearch": 64}, 4_000),
]
# minimum recall of the planted duplicate (top-10) and of range_search(16) vs brute force
MIN_RECALL = {"mihc": 1.0, "mih": 1.0, "flat": 1.0, "ivf": 0.9, "hnsw": 0.9}
MIN_RANGE_RECALL = {"mihc": 0.99, "mih": 0.99, "flat": 1.0, "ivf": 0.85, "hnsw": 0.85}


def _popcount_dist(codes: np.ndarray, q: np.ndarray) -> np.ndarray:
    return np.bitwise_count(np.bitwise_xor(codes.view(np.uint64), q.view(np.uint64))).sum(1)


@pytest.fixture(scope="module", autouse=True)
def _one_faiss_thread():
    """The CI box has 2 shared cores: OpenMP spinning in several threads only slows FAISS down."""
    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    yield
    faiss.omp_set_num_threads(before)


@pytest.fixture(autouse=True)
def _probe_path(monkeypatch):
    """These tests exercise mihc's probes; an index this small would otherwise scan every row
    (``shards.mihc.EXACT_BELOW``; its own test below turns the scan back on)."""
    import shards.mihc as mihc
    monkeypatch.setattr(mihc, "EXACT_BELOW", 0)


def test_a_small_mihc_scans_every_row_and_finds_far_copies(monkeypatch):
    """Below EXACT_BELOW rows a top-k search is exact: a copy 40 bits away, beyond the probes'
    guaranteed radius, is found, and the answer equals a flat index's."""
    import shards.mihc as mihc
    monkeypatch.setattr(mihc, "EXACT_BELOW", 1 << 16)
    rng = np.random.default_rng(7)
    codes = rng.integers(0, 256, (3000, BITS // 8), dtype=np.uint8)
    ids = np.arange(3000, dtype=np.int64)
    far = np.stack([flip_bits(codes[i], 40, rng) for i in (5, 50, 500)])
    mihc_index, flat = make_index("mihc", BITS), make_index("flat", BITS)
    for index in (mihc_index, flat):
        index.add(ids, codes)
    mihc_index.remove(np.array([7], np.int64))
    flat.remove(np.array([7], np.int64))
    D, I = mihc_index.search(far, 5)
    assert I[:, 0].tolist() == [5, 50, 500] and (D[:, 0] == 40).all()
    D_flat, _ = flat.search(far, 5)
    assert np.array_equal(D, D_flat)
    assert 7 not in mihc_index.search(codes[7:8], 3)[1]  # removed rows are never scanned back


def brute_force(codes: np.ndarray, queries: np.ndarray) -> np.ndarray:
    """Exact Hamming distances (nq, n)."""
    return np.stack([_popcount_dist(codes, q[None, :]) for q in queries]).astype(np.int32)


def flip_bits(code: np.ndarray, d: int, rng: np.random.Generator) -> np.ndarray:
    bits = np.unpackbits(code)
    bits[rng.choice(len(bits), d, replace=False)] ^= 1
    return np.packbits(bits)


def planted(n: int, seed: int = 0, per_distance: int = 6):
    """Random codes, signed random ids, and queries at distance 0..16 from known sources."""
    rng = np.random.default_rng(seed)
    codes = rng.integers(0, 256, (n, BITS // 8), dtype=np.uint8)
    ids = rng.integers(-(2 ** 63), 2 ** 63 - 1, n, dtype=np.int64)
    ids[ids == -1] = 12345
    dists = np.repeat(np.arange(PLANTED), per_distance)
    src = rng.choice(n, len(dists), replace=False)
    queries = np.stack([flip_bits(codes[s], d, rng) for s, d in zip(src, dists)])
    return codes, ids, queries, src, dists


def build(kind: str, params: dict, codes: np.ndarray, ids: np.ndarray, batch: int = 2500) -> BinaryIndex:
    index = make_index(kind, BITS, **params)
    for s in range(0, len(codes), batch):
        index.add(ids[s:s + batch], codes[s:s + batch])
    return index


@pytest.fixture(scope="module", params=CASES, ids=[c[0] for c in CASES])
def built(request):
    kind, params, n = request.param
    codes, ids, queries, src, dists = planted(n)
    index = build(kind, params, codes, ids)
    return kind, params, index, codes, ids, queries, src, dists, brute_force(codes, queries)


def test_default_kind_and_kinds():
    assert DEFAULT_KIND in INDEX_KINDS
    assert make_index().kind == DEFAULT_KIND
    assert set(INDEX_KINDS) >= {"flat", "hnsw", "ivf", "mih", "mihc"}


def test_topk_matches_exact_hamming(built):
    kind, _params, index, codes, ids, queries, src, dists, H = built
    k = 10
    D, I = index.search(queries, k)
    assert D.shape == I.shape == (len(queries), k)
    assert D.dtype == np.int32 and I.dtype == np.int64
    assert len(index) == index.ntotal == len(codes)
    pos = {int(v): j for j, v in enumerate(ids)}
    found = np.array([ids[s] in row for s, row in zip(src, I)])
    assert found.mean() >= MIN_RECALL[kind], f"{kind} recall@10 {found.mean():.3f}"
    for q in range(len(queries)):
        valid = I[q] != -1
        # every reported distance is the exact Hamming distance
        got = [H[q, pos[int(i)]] for i in I[q][valid]]
        assert list(D[q][valid]) == got
        # sorted by (distance, id); padding only at the end
        pairs = list(zip(D[q][valid].tolist(), I[q][valid].tolist()))
        assert pairs == sorted(pairs)
        assert valid[: valid.sum()].all()
        assert (D[q][~valid] == MISSING_DISTANCE).all()
    if kind == "flat":  # exact: same distances as brute force, same ids below the k-th distance
        exact = np.sort(H, axis=1)[:, :k]
        assert (D == exact).all()
        for q in range(len(queries)):
            below = D[q] < D[q, -1]
            truth = set(ids[H[q] < D[q, -1]].tolist())
            assert set(I[q][below].tolist()) == truth


@pytest.mark.parametrize("radius", [0, 8, 16])
def test_range_search_vs_brute_force(built, radius):
    kind, _params, index, codes, ids, queries, src, dists, H = built
    res = index.range_search(queries, radius)
    assert len(res) == len(queries)
    pos = {int(v): j for j, v in enumerate(ids)}
    hits = total = 0
    for q, (rid, rd) in enumerate(res):
        assert rid.dtype == np.int64 and rd.dtype == np.int32
        assert (rd <= radius).all()
        assert list(zip(rd.tolist(), rid.tolist())) == sorted(zip(rd.tolist(), rid.tolist()))
        assert [H[q, pos[int(i)]] for i in rid] == rd.tolist()  # exact distances
        assert len(set(rid.tolist())) == len(rid)
        truth = set(ids[H[q] <= radius].tolist())
        hits += len(truth & set(rid.tolist()))
        total += len(truth)
    recall = hits / max(total, 1)
    if kind == "flat" or (kind in ("mihc", "mih") and radius <= 15):  # exact / pigeonhole bound
        assert recall == 1.0
    assert recall >= MIN_RANGE_RECALL[kind], f"{kind} range recall {recall:.3f} at r={radius}"


def test_remove_then_no_match_then_compact(built):
    kind, params, _index, codes, ids, queries, src, dists, H = built
    index = build(kind, params, codes, ids)  # a private copy: the fixture is shared
    gone = ids[src[::2]]
    assert index.remove(gone) == len(gone)
    assert index.remove(gone) == 0  # already removed
    assert index.remove(np.array([777, 778], dtype=np.int64)) == 0  # unknown ids
    assert index.ntotal == len(codes) - len(gone)

    def check() -> None:
        _, I = index.search(queries, 10)
        assert not np.isin(I, gone).any()
        for rid, _ in index.range_search(queries, 16):
            assert not np.isin(rid, gone).any()
        kept = src[1::2]
        D, I = index.search(queries[1::2], 10)
        found = np.mean([ids[s] in row for s, row in zip(kept, I)])
        assert found >= MIN_RECALL[kind]

    check()
    had_tombstones = index.tombstones
    assert had_tombstones in (0, len(gone))  # true removal, or one tombstone per removed id
    assert index.compact() == had_tombstones
    assert index.tombstones == 0
    assert index.ntotal == len(codes) - len(gone)
    check()
    # a removed id can come back with a new code
    index.add(gone[:1], codes[src[1]][None, :])
    D, I = index.search(codes[src[1]][None, :], 10)
    assert gone[0] in I[0]


def test_save_load_roundtrip(built, tmp_path):
    kind, params, index, codes, ids, queries, *_ = built
    index.save(tmp_path / "ix")
    loaded = load_index(tmp_path / "ix")
    assert (loaded.kind, loaded.bits, loaded.params) == (index.kind, index.bits, index.params)
    assert loaded.ntotal == index.ntotal
    D1, I1 = index.search(queries, 10)
    D2, I2 = loaded.search(queries, 10)
    assert (D1 == D2).all() and (I1 == I2).all()
    assert load_index(tmp_path / "ix").ntotal == index.ntotal
    # tombstones survive a round trip, and the loaded index keeps accepting adds
    loaded.remove(ids[:3])
    loaded.save(tmp_path / "ix2")
    again = load_index(tmp_path / "ix2")
    assert again.ntotal == len(codes) - 3
    _, I = again.search(codes[:3], 5)
    assert not np.isin(I, ids[:3]).any()
    again.add(np.array([42], dtype=np.int64), codes[:1])
    _, I = again.search(codes[:1], 1)
    assert I[0, 0] == 42
    assert not any(p.suffix == ".pkl" for p in (tmp_path / "ix").iterdir())


@pytest.mark.parametrize("kind", INDEX_KINDS)
def test_empty_and_small(kind):
    index = make_index(kind, 64)
    q = np.zeros((2, 8), dtype=np.uint8)
    D, I = index.search(q, 3)
    assert (I == -1).all() and (D == MISSING_DISTANCE).all()
    assert [len(r[0]) for r in index.range_search(q, 5)] == [0, 0]
    assert index.remove(np.array([1, 2])) == 0
    index.add(np.array([5, -7], dtype=np.int64), np.array([[0] * 8, [3] + [0] * 7], dtype=np.uint8))
    D, I = index.search(q[:1], 3)
    assert I[0].tolist() == [5, -7, -1] and D[0].tolist() == [0, 2, MISSING_DISTANCE]
    assert index.memory_bytes() > 0
    assert index.search(q, 0)[0].shape == (2, 0)


@pytest.mark.parametrize("kind", INDEX_KINDS)
def test_ties_are_sorted_by_id(kind):
    index = make_index(kind, BITS)
    code = np.full((1, 16), 0b10101010, dtype=np.uint8)
    ids = np.array([9, -3, 4, 100, -50], dtype=np.int64)
    index.add(ids, np.repeat(code, 5, axis=0))
    D, I = index.search(code, 5)
    assert I[0].tolist() == sorted(ids.tolist()) and (D == 0).all()
    assert index.range_search(code, 0)[0][0].tolist() == sorted(ids.tolist())


def test_ivf_trains_once_it_has_enough():
    codes, ids, queries, src, dists = planted(6000, seed=3)
    index = make_index("ivf", BITS, nlist=32, nprobe=32)  # nprobe = nlist: exhaustive
    index.add(ids[:100], codes[:100])  # below train_size: exact brute force
    D, I = index.search(codes[:5], 1)
    assert I[:, 0].tolist() == ids[:5].tolist()
    index.add(ids[100:], codes[100:])  # crosses train_size: trained and moved into the IVF
    assert index._index.is_trained and index._pending_ids.n == 0
    D, I = index.search(queries, 10)
    assert np.mean([ids[s] in row for s, row in zip(src, I)]) == 1.0


@pytest.mark.parametrize("params", [
    {"overflow": 16, "growth": 1.05},     # constant re-layouts and overflow traffic
    {"nhash": 10, "b": 12, "nflip": 1},   # chunks that are not byte-aligned
    {"nhash": 6, "b": 20, "nflip": 2},    # wide chunks, two flips
])
def test_mihc_layouts(params):
    codes, ids, queries, src, dists = planted(5000, seed=5)
    index = make_index("mihc", BITS, **params)
    for s in range(0, len(codes), 97):
        index.add(ids[s:s + 97], codes[s:s + 97])
    H = brute_force(codes, queries)
    r = index.guaranteed_radius
    for q, (rid, rd) in enumerate(index.range_search(queries, r)):
        assert set(rid.tolist()) == set(ids[H[q] <= r].tolist())
    index.remove(ids[src])
    index.compact()
    _, I = index.search(queries, 10)
    assert not np.isin(I, ids[src]).any()


def test_mihc_other_widths():
    for bits in (64, 96, 256):  # 96: not whole uint64 words, so the kernel reads bytes
        rng = np.random.default_rng(bits)
        codes = rng.integers(0, 256, (3000, bits // 8), dtype=np.uint8)
        index = make_index("mihc", bits, nhash=bits // 16)
        index.add(np.arange(3000), codes)
        q = np.stack([flip_bits(c, 3, rng) for c in codes[:20]])
        _, I = index.search(q, 1)
        assert I[:, 0].tolist() == list(range(20))


@pytest.mark.parametrize("kind", ["mihc", "flat", "mih"])
def test_concurrent_search_while_adding(kind):
    codes, ids, *_ = planted(20_000, seed=7)
    index = make_index(kind, BITS)
    index.add(ids[:2000], codes[:2000])
    errors: list[BaseException] = []
    done = threading.Event()

    def writer() -> None:
        try:
            for s in range(2000, len(codes), 500):
                index.add(ids[s:s + 500], codes[s:s + 500])
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)
        finally:
            done.set()

    def reader(seed: int) -> None:
        rng = np.random.default_rng(seed)
        try:
            while not done.is_set():
                j = rng.integers(0, 2000, 8)  # present before the writer started
                D, I = index.search(codes[j], 3)
                assert (I[:, 0] == ids[j]).all() and (D[:, 0] == 0).all()
                index.range_search(codes[j[:2]], 4)
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=writer)] + [threading.Thread(target=reader, args=(i,))
                                                   for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors, errors
    assert index.ntotal == len(codes)
    _, I = index.search(codes[-5:], 1)
    assert I[:, 0].tolist() == ids[-5:].tolist()


def test_validation_errors():
    index = make_index("mihc", BITS)
    good = np.zeros((2, 16), dtype=np.uint8)
    with pytest.raises(ValueError, match="uint8"):
        index.add(np.array([1, 2]), good.astype(np.int32))
    with pytest.raises(ValueError, match="shape"):
        index.add(np.array([1, 2]), np.zeros((2, 8), dtype=np.uint8))
    with pytest.raises(ValueError, match="numpy"):
        index.add(np.array([1]), [[0] * 16])
    with pytest.raises(ValueError, match="ids"):
        index.add(np.array([1]), good)
    with pytest.raises(ValueError, match="reserved"):
        index.add(np.array([1, -1]), good)
    with pytest.raises(ValueError, match="integer"):
        index.add(np.array([1.5, 2.0]), good)
    with pytest.raises(ValueError, match="k must"):
        index.search(good, -1)
    with pytest.raises(ValueError, match="radius"):
        index.range_search(good, -2)
    with pytest.raises(ValueError, match="unknown index kind"):
        make_index("annoy")
    with pytest.raises(ValueError, match="bad parameters"):
        make_index("flat", BITS, M=3)
    with pytest.raises(ValueError, match="bad parameters"):
        make_index("hnsw", BITS, nope=1)
    with pytest.raises(ValueError, match="bits"):
        make_index("flat", 100)
    with pytest.raises(ValueError, match="nhash"):
        make_index("mihc", 64, nhash=8, b=16)
    with pytest.raises(FileNotFoundError):
        load_index("/nonexistent/index")


def test_set_search_params():
    codes, ids, queries, src, dists = planted(3000, seed=9)
    index = make_index("mihc", BITS, nflip=0)
    index.add(ids, codes)
    assert index.guaranteed_radius == 7
    index.set_search_params(nflip=2)
    assert index.guaranteed_radius == 23 and index.params["nflip"] == 2
    _, I = index.search(queries, 10)
    assert all(ids[s] in row for s, row in zip(src, I))
    with pytest.raises(ValueError, match="after build"):
        index.set_search_params(b=8)
    hnsw = make_index("hnsw", BITS, M=8)
    hnsw.set_search_params(efSearch=32)
    assert hnsw._index.hnsw.efSearch == 32
    with pytest.raises(ValueError, match="none"):
        make_index("flat", BITS).set_search_params(nprobe=3)


def test_mihc_auto_geometry_grows_and_survives_save(tmp_path, monkeypatch):
    """An auto-sized mihc re-keys itself into wider chunks when it grows (threshold lowered here
    from 2^21 rows so that the test stays small) and still finds what brute force finds."""
    import shards.mihc as mihc

    monkeypatch.setattr(mihc, "AUTO_STAGES", ((0, 16, 1), (3000, 21, 2)))
    codes, ids, queries, src, dists = planted(5000, seed=11)
    index = make_index("mihc", BITS)
    assert index.auto and (index.geometry.b, index.geometry.nhash, index.guaranteed_radius) == (16, 8, 15)
    index.remove(ids[:1])  # nothing there yet: a no-op
    index.add(ids[:2000], codes[:2000])
    index.remove(ids[:10])
    index.add(ids[2000:], codes[2000:])  # crosses 3000 rows: re-keyed to 6 x 21 bits, 2 flips
    assert (index.geometry.b, index.geometry.nhash, index.guaranteed_radius) == (21, 6, 17)
    assert index.info()["geometry"]["guaranteed_radius"] == 17 and index.ntotal == 4990
    H = brute_force(codes, queries)
    H[:, :10] = 999  # removed
    D, I = index.search(queries, 10)
    for q in range(len(queries)):
        want = np.flatnonzero(H[q] <= 17)
        assert set(ids[want]) <= set(I[q][D[q] <= 17]) or len(want) > 10
    index.save(tmp_path / "ix")
    back = load_index(tmp_path / "ix")
    assert back.geometry == index.geometry and back.ntotal == 4990
    assert np.array_equal(back.search(queries, 10)[1], I)
    assert back.compact() == 10 and back.geometry.b == 21


def test_mihc_explicit_geometry_stays_put(monkeypatch):
    import shards.mihc as mihc

    monkeypatch.setattr(mihc, "AUTO_STAGES", ((0, 16, 1), (100, 21, 2)))
    codes, ids, *_ = planted(1000, seed=12)
    index = make_index("mihc", BITS, b=16, nflip=2)
    index.add(ids, codes)
    assert not index.auto and (index.geometry.b, index.geometry.nflip) == (16, 2)


def test_mihc_pending_entries_are_searched_saved_and_rarely_relaid(tmp_path):
    """Entries that miss spare room wait in the tail and the sorted run: searches still match
    brute force, a snapshot keeps them, and re-layouts come at geometric intervals, not per add."""
    codes, ids, queries, src, dists = planted(24_000, seed=11)
    index = make_index("mihc", BITS, b=16, overflow=256)
    index.add(ids[:16_000], codes[:16_000])
    relayouts = []
    original = index._relayout
    index._relayout = lambda extra: (relayouts.append(1), original(extra))[1]
    for s in range(16_000, 24_000 - 10, 40):
        index.add(ids[s:s + 40], codes[s:s + 40])
    index.add(ids[-10:], codes[-10:])  # a few entries left in the tail
    assert len(index._run_rows) and index._tail_rows.n  # both pending stages are in use
    # 200 adds grow the index by half: one re-layout per 1/16 growth at most, log(1.5)/log(1+1/16) ~ 7
    assert len(relayouts) <= 7
    H = brute_force(codes, queries)
    r = index.guaranteed_radius
    expect = [set(ids[H[q] <= r].tolist()) for q in range(len(queries))]
    assert [set(x.tolist()) for x, _ in index.range_search(queries, r)] == expect
    index.save(tmp_path / "ix")
    loaded = load_index(tmp_path / "ix")
    assert [set(x.tolist()) for x, _ in loaded.range_search(queries, r)] == expect
    assert loaded.memory_bytes() == index.memory_bytes()
    assert loaded._tail_rows.n == index._tail_rows.n  # the same layout, so the same answers
    (D0, I0), (D1, I1) = index.search(queries, 10), loaded.search(queries, 10)
    assert (D0 == D1).all() and (I0 == I1).all()
