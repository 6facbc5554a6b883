"""Measurements of one built index in the shard benchmark: build, batched search, single-query
latency, recall against the planted duplicates, save and load.

Each function measures one thing and returns plain figures, so the runner decides what to record
and the same probes serve every index kind.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from bench import common
from bench.shard_workload import Workload, bucket_labels, ids_for_rows, rows_for_ids


def retune(index: Any, variant: dict) -> bool:
    """Apply search-time params to a built index; False when it needs a rebuild instead.

    Prefers a public ``set_search_params``; otherwise knows the knobs FAISS reads at search time
    (hnsw efSearch via ``params``, which HNSWIndex reads per search; ivf nprobe and mih nflip on
    the wrapped FAISS index).
    """
    if not variant:
        return True
    setter = getattr(index, "set_search_params", None)
    if callable(setter):
        setter(**variant)
        return True
    inner = getattr(index, "_index", None)
    keys = set(variant)
    if index.kind == "hnsw" and keys <= {"efSearch"}:
        index.params.update(variant)
        return True
    if index.kind == "ivf" and keys <= {"nprobe"} and hasattr(inner, "nprobe"):
        inner.nprobe = int(variant["nprobe"])
        index.params.update(variant)
        return True
    if index.kind == "mih" and keys <= {"nflip"} and hasattr(inner, "nflip"):
        inner.nflip = int(variant["nflip"])
        index.params.update(variant)
        return True
    return False


def build_index(kind: str, params: dict, bits: int, codes: np.ndarray, add_batch: int) -> tuple[Any, dict]:
    """Build an index in add batches; returns it with build time and memory (index and RSS)."""
    from shards.index import make_index
    n = len(codes)
    common.release_memory(worth_collecting(n))
    rss0 = common.rss_bytes()
    peak_reset = common.reset_peak_rss()
    index = make_index(kind, bits, **params)
    t0 = time.perf_counter()
    for s in range(0, n, add_batch):
        rows = np.arange(s, min(n, s + add_batch), dtype=np.int64)
        index.add(ids_for_rows(rows), codes[s:s + add_batch])
    seconds = time.perf_counter() - t0
    peak = common.peak_rss_bytes() if peak_reset else None
    common.release_memory(worth_collecting(n))
    rss1 = common.rss_bytes()
    build = {"seconds": seconds, "codes_per_s": n / seconds if seconds > 0 else None,
             "add_batch": add_batch}
    memory = _memory_figures(index.memory_bytes(), n, rss0, rss1, peak)
    if index.ntotal != n:
        raise RuntimeError(f"{kind}: built {index.ntotal} entries, expected {n}")
    return index, {"build": build, "memory": memory}


def _memory_figures(index_bytes: int, n: int, rss0: int | None, rss1: int | None,
                    peak: int | None) -> dict:
    """The index's own size and, as a cross-check, the RSS growth across its build, per code."""
    return {"index_bytes": index_bytes, "bytes_per_code": index_bytes / n,
            "rss_delta_bytes": None if rss0 is None else rss1 - rss0,
            "rss_bytes_per_code": None if rss0 is None else (rss1 - rss0) / n,
            "peak_rss_delta_bytes": None if peak is None or rss0 is None else peak - rss0}


def search_batched(index: Any, queries: np.ndarray, k: int, batch: int
                   ) -> tuple[np.ndarray, np.ndarray, float, int | None]:
    """All queries, ``batch`` per search() call -> (D, I, seconds, peak RSS growth in bytes)."""
    Ds, Is = [], []
    rss0 = common.rss_bytes()
    peak_ok = common.reset_peak_rss()
    t0 = time.perf_counter()
    for s in range(0, len(queries), batch):
        D, I = index.search(queries[s:s + batch], k)
        Ds.append(D)
        Is.append(I)
    seconds = time.perf_counter() - t0
    peak = common.peak_rss_bytes() if peak_ok else None
    return np.concatenate(Ds), np.concatenate(Is), seconds, (None if peak is None or rss0 is None
                                                              else max(0, peak - rss0))


def worth_collecting(n: int) -> bool:
    """Whether n is large enough for memory probes to be worth a full garbage collection first
    (a collection costs more than a toy-sized measurement)."""
    return n >= 100_000


def faiss_threads() -> int:
    """OpenMP threads FAISS uses now (recorded beside the batched QPS it was measured with)."""
    import faiss
    return int(faiss.omp_get_max_threads())


def single_query_latencies(index: Any, queries: np.ndarray, k: int, count: int, threads: int,
                           warmup: int = 20, reps: int = 1) -> np.ndarray:
    """Seconds per search() of one query, one at a time, over ``count`` queries (cycled),
    ``reps`` times over: shape (reps, count).

    FAISS runs with ``threads`` OpenMP threads meanwhile (default 1, as in a Ray actor, which gets
    OMP_NUM_THREADS=1 unless it reserves more CPUs): on a busy machine a multi-threaded OpenMP region
    for a single query waits for a core, measuring the scheduler, not the index.
    """
    import faiss
    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(threads)
    try:
        for i in range(min(warmup, count)):
            index.search(queries[i % len(queries)][None, :], k)
        out = np.empty((reps, count))
        for r in range(reps):
            for i in range(count):
                q = queries[i % len(queries)][None, :]
                t0 = time.perf_counter()
                index.search(q, k)
                out[r, i] = time.perf_counter() - t0
    finally:
        faiss.omp_set_num_threads(before)
    return out


def latency_summary(seconds: np.ndarray) -> dict:
    """P50/P90/P99: the median over passes of each pass's percentile (a pass = every query once),
    so one stall of a shared VM does not decide the tail; pooled figures are kept beside them."""
    ms = np.atleast_2d(seconds) * 1e3
    per_pass = {q: np.percentile(ms, q, axis=1) for q in (50, 90, 99)}
    return {"p50_ms": float(np.median(per_pass[50])), "p90_ms": float(np.median(per_pass[90])),
            "p99_ms": float(np.median(per_pass[99])), "mean_ms": float(ms.mean()),
            "max_ms": float(ms.max()), "n_queries": int(ms.shape[1]), "passes": int(ms.shape[0]),
            "pass_p99_ms": [round(float(x), 5) for x in per_pass[99]],
            "p99_ms_pooled": float(np.percentile(ms, 99)),
            # every 0.1%: the fan-out simulation reads the top 1% of the distribution, where a
            # 1%-step table would smear one stray slow query over the whole last percent
            "quantiles_ms": [round(float(x), 5) for x in np.percentile(ms, np.linspace(0, 100, 1001))]}


def recall_report(D: np.ndarray, I: np.ndarray, work: Workload, gt_D: np.ndarray, k: int) -> dict:
    """Recall of the planted duplicate per bucket (tie-aware), exact k-NN recall, distance check."""
    exp_ids, dists = work.expected_ids, work.distances
    out: dict[str, Any] = {}
    for kk in sorted({1, k}):
        found = (I[:, :kk] == exp_ids[:, None]).any(axis=1)
        # an equally close code is an equally good answer (distances are verified exact below)
        tie_ok = D[:, kk - 1].astype(np.int64) <= dists
        hit = found | tie_ok
        out[f"recall_at_{kk}"] = {lab: float(hit[m].mean()) for lab, m in bucket_labels(dists, work.source)}
    thr = gt_D[:, min(k, gt_D.shape[1]) - 1][:, None]
    valid = I >= 0
    out[f"knn_recall_at_{k}"] = float((np.minimum((valid & (D <= thr)).sum(axis=1), k) / k).mean())
    rows = rows_for_ids(np.where(valid, I, 0))
    true_d = np.bitwise_count(work.codes[rows] ^ work.queries[:, None, :]).sum(axis=2)
    out["distance_errors"] = int((valid & (true_d != D)).sum())
    return out


def timed_save(index: Any, path: Path, probe: np.ndarray, k: int) -> tuple[dict, tuple]:
    """Time index.save(path); returns the figures and the probe answers to compare after load."""
    reference = index.search(probe, k)
    t0 = time.perf_counter()
    index.save(path)
    seconds = time.perf_counter() - t0
    disk = sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
    return {"seconds": seconds, "disk_bytes": disk}, reference


def timed_load(path: Path, probe: np.ndarray, k: int, reference: tuple, collect: bool) -> dict:
    """Time load_index(path) (warm: right after the save, from the page cache); the loaded index
    must answer the probes exactly as the saved one did."""
    from shards.index import load_index
    common.release_memory(collect)
    t0 = time.perf_counter()
    loaded = load_index(path)
    seconds = time.perf_counter() - t0
    D1, I1 = loaded.search(probe, k)
    del loaded
    common.release_memory(collect)
    return {"seconds": seconds, "warm_page_cache": True,
            "same_results": bool(np.array_equal(reference[0], D1) and np.array_equal(reference[1], I1))}
