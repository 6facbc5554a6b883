"""Shard index benchmark: recall, latency, memory, build, save/load of every index kind, by size.

Run ``python -m bench.shard_bench --quick`` (100k and 200k codes, minutes) or with ``--sizes``
(default 1M, 2M, 5M, 10M). For each size it

1. makes ``n`` uniformly random codes (or tiles real codes from ``--real-codes`` into random
   background codes) and planted near-duplicate queries: a stored code with exactly 4, 8, 12 or 16
   random bits flipped (or, with real codes, the encoder's codes of augmented copies);
2. computes exact Hamming ground truth with FAISS ``IndexBinaryFlat`` (``GpuIndexBinaryFlat``
   with ``--gpu``);
3. builds every index kind and parameter set of the grid through ``shards.index.make_index`` and
   measures recall@1/@10 of the planted duplicate per distance bucket, P50/P99 single-query
   latency, batched QPS, build rate, bytes per code (``memory_bytes()`` and the RSS delta), and
   save and load time;
4. writes ``bench/results/shard_<date>_<tag>.json`` (after every measurement, so a killed run
   keeps what it measured), a PNG plot and a Markdown table.

It fits cost curves (latency, memory and build time against n) and extrapolates to 200M codes
per node and to 1B codes over 5 shards (the fan-out tail is the slowest shard: simulated by
drawing 5 samples from the measured latency distribution scaled to 200M). Every figure in the
output says whether it is ``measured`` or ``extrapolated``.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from bench import common

BUCKETS = (4, 8, 12, 16)
TARGET_N = 10_000_000  # the targets below are for the default kind at this size (issue 4)
TARGETS = {"recall_at_10_le16": 0.99, "p99_ms": 1.0, "bytes_per_code": 64.0, "build_codes_per_s": 200_000}
_ID_MULT = 0x9E3779B97F4A7C15  # odd: row -> id is a bijection mod 2^63 (ids look like 64-bit hashes)
_ID_MASK = (1 << 63) - 1
_ID_INV = pow(_ID_MULT, -1, 1 << 63)


# ----------------------------------------------------------------------------------------------
# configuration
# ----------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class BuildSpec:
    """One index build: kind + construction params, then one or more search-time variants."""

    kind: str
    params: dict = field(default_factory=dict)
    variants: tuple[dict, ...] = ({},)


GRIDS: dict[str, tuple[BuildSpec, ...]] = {
    "full": (
        BuildSpec("mihc"),  # auto geometry: 8 x 16 bits (1 flip) below 2^21 rows, then 6 x 21 (2 flips)
        BuildSpec("mihc", {"b": 16}),  # 8 x 16 bits, 1 flip, at every size
        BuildSpec("mihc", {"nhash": 6, "b": 20, "nflip": 2}),  # half the directory of 6 x 21
        BuildSpec("mih", {"nflip": 0}, ({}, {"nflip": 1}, {"nflip": 2})),
        BuildSpec("hnsw", {"M": 16}, ({"efSearch": 64}, {"efSearch": 128}, {"efSearch": 256})),
        BuildSpec("hnsw", {"M": 32}, ({"efSearch": 64}, {"efSearch": 128}, {"efSearch": 256})),
        BuildSpec("ivf", {"nlist": 1024, "nprobe": 16}, ({}, {"nprobe": 64}, {"nprobe": 256})),
        BuildSpec("flat"),
    ),
    "default": (BuildSpec("mihc"),),  # the default kind alone, e.g. for one very large size
    "quick": (
        BuildSpec("mihc"),
        BuildSpec("mih", {"nflip": 1}),
        BuildSpec("hnsw", {"M": 16}, ({"efSearch": 64}, {"efSearch": 128})),
        BuildSpec("ivf", {"nlist": 1024, "nprobe": 64}),
        BuildSpec("flat"),
    ),
}


@dataclass
class BenchConfig:
    """Everything a run depends on (stored in the result JSON under "params")."""

    sizes: list[int]
    bits: int = 128
    kinds: list[str] | None = None
    grid: str = "full"
    queries_per_bucket: int = 500
    latency_queries: int = 1000
    latency_reps: int = 3
    batch_size: int = 1000
    add_batch: int = 100_000
    k: int = 10
    seed: int = 0
    real_codes: str | None = None
    real_queries: str | None = None
    real_ground_truth: str | None = None
    gpu: bool = False
    max_size: int = 20_000_000
    max_build_seconds: float = 1800.0
    threads: int | None = None
    latency_threads: int = 1
    save_load: bool = True
    tmp_dir: str | None = None
    extrapolate_to: int = 200_000_000
    fanout_shards: int = 5
    out_dir: str = str(common.RESULTS_DIR)
    tag: str = "full"
    date: str = field(default_factory=common.today)


class BenchError(Exception):
    """A bad flag or input: printed as one line, exit status 2."""


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def label_of(kind: str, params: dict) -> str:
    return kind + ("(" + ",".join(f"{k}={v}" for k, v in sorted(params.items())) + ")" if params else "")


# ----------------------------------------------------------------------------------------------
# codes and queries
# ----------------------------------------------------------------------------------------------

def ids_for_rows(rows: np.ndarray) -> np.ndarray:
    """Scattered int64 ids (like the 64-bit id hashes a shard uses) that map back to rows."""
    return ((rows.astype(np.uint64) * np.uint64(_ID_MULT)) & np.uint64(_ID_MASK)).astype(np.int64)


def rows_for_ids(ids: np.ndarray) -> np.ndarray:
    return ((ids.astype(np.uint64) * np.uint64(_ID_INV)) & np.uint64(_ID_MASK)).astype(np.int64)


def flip_bits(codes: np.ndarray, dists: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Copy of codes with exactly dists[i] distinct random bits flipped in row i."""
    nq, nbytes = codes.shape
    bits = nbytes * 8
    order = np.argsort(rng.random((nq, bits)), axis=1)
    mask = np.zeros((nq, bits), dtype=np.uint8)
    take = np.arange(bits)[None, :] < dists[:, None]
    mask[np.repeat(np.arange(nq), bits)[take.reshape(-1)], order[take]] = 1
    return codes ^ np.packbits(mask, axis=1)


@dataclass
class Workload:
    """Stored codes, queries, and for each query the row it duplicates and their distance."""

    codes: np.ndarray          # (n, B) uint8
    queries: np.ndarray        # (q, B) uint8
    expected_rows: np.ndarray  # (q,) int64
    distances: np.ndarray      # (q,) int32: Hamming distance query <-> expected row
    source: str                # "planted" or "real"

    @property
    def expected_ids(self) -> np.ndarray:
        return ids_for_rows(self.expected_rows)


def planted_workload(n: int, bits: int, per_bucket: int, seed: int) -> Workload:
    """n uniform random codes; per_bucket queries at each distance in BUCKETS, shuffled."""
    rng = np.random.default_rng([seed, n])
    codes = rng.integers(0, 256, size=(n, bits // 8), dtype=np.uint8)
    nq = per_bucket * len(BUCKETS)
    rows = rng.choice(n, size=nq, replace=nq > n)
    dists = np.repeat(np.array(BUCKETS, dtype=np.int32), per_bucket)
    perm = rng.permutation(nq)
    rows, dists = rows[perm], dists[perm]
    return Workload(codes, flip_bits(codes[rows], dists, rng), rows.astype(np.int64), dists, "planted")


def read_codes(path: str | Path) -> tuple[list[str], list[str] | None, np.ndarray, Any]:
    """(ids, paths or None, codes (n, B) uint8, the Arrow table) from a `neardup encode` Parquet."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    p = Path(path)
    if not p.is_file():
        raise BenchError(f"codes file not found: {p}")
    try:
        table = pq.read_table(p)
    except (pa.ArrowInvalid, OSError) as exc:
        raise BenchError(f"cannot read Parquet {p}: {exc}") from None
    if "code" not in table.column_names:
        raise BenchError(f"{p} has no 'code' column (columns: {', '.join(table.column_names)})")
    col = table.column("code").combine_chunks()
    if col.null_count:
        raise BenchError(f"{p}: {col.null_count} null codes")
    if pa.types.is_fixed_size_binary(col.type):
        width = col.type.byte_width
        data = np.frombuffer(col.buffers()[1], dtype=np.uint8)
        codes = data[col.offset * width:(col.offset + len(col)) * width].reshape(len(col), width).copy()
    elif pa.types.is_binary(col.type) or pa.types.is_large_binary(col.type):
        values = col.to_pylist()
        widths = {len(v) for v in values}
        if len(widths) != 1:
            raise BenchError(f"{p}: codes have different lengths {sorted(widths)}")
        codes = np.frombuffer(b"".join(values), dtype=np.uint8).reshape(len(values), -1).copy()
    else:
        raise BenchError(f"{p}: 'code' must be fixed_size_binary, got {col.type}")
    if not len(codes):
        raise BenchError(f"{p} holds no codes")
    ids = [str(x) for x in table.column("id").to_pylist()] if "id" in table.column_names \
        else [str(i) for i in range(len(codes))]
    paths = [str(x) for x in table.column("path").to_pylist()] if "path" in table.column_names else None
    return ids, paths, codes, table


_MATCH_COLUMNS = ("ref_id", "source_id", "original_id", "match_id")


def _stem_key(text: str) -> str:
    """'dir/photo_01__crop.jpg' -> 'photo_01' (augmented copies are named <original>__<edit>)."""
    return Path(text).stem.split("__")[0]


def match_queries(ref_ids: list[str], ref_paths: list[str] | None, q_ids: list[str],
                  q_paths: list[str] | None, q_table: Any) -> np.ndarray:
    """For each query, the index of the reference it is a copy of (-1 when unknown).

    Uses an explicit column (ref_id, source_id, original_id or match_id) when present, else the
    same id, else the file stem before '__' (``photo__jpeg70.jpg`` is a copy of ``photo.jpg``).
    """
    by_id = {r: i for i, r in enumerate(ref_ids)}
    for name in _MATCH_COLUMNS:
        if name in q_table.column_names:
            return np.array([by_id.get(str(x), -1) for x in q_table.column(name).to_pylist()], np.int64)
    stems: dict[str, int] = {}
    for i, r in enumerate(ref_paths or ref_ids):
        key = _stem_key(r)
        stems[key] = -2 if key in stems else i  # -2: ambiguous stem, never matched
    out = np.full(len(q_ids), -1, dtype=np.int64)
    for j, qid in enumerate(q_ids):
        if qid in by_id:
            out[j] = by_id[qid]
            continue
        out[j] = stems.get(_stem_key((q_paths or q_ids)[j]), -1)
    return np.where(out >= 0, out, -1)


def _name_keys(ids: list[str], paths: list[str] | None) -> dict[str, int]:
    """id, id's file name and path's file name -> row (names shared by two rows are dropped)."""
    keys: dict[str, int] = {}
    for i, rid in enumerate(ids):
        names = {rid, Path(rid).name} | ({Path(paths[i]).name} if paths else set())
        for key in names:
            keys[key] = -2 if keys.get(key, i) != i else i
    return {k: v for k, v in keys.items() if v >= 0}


def match_from_csv(gt_path: str, ref_ids: list[str], ref_paths: list[str] | None, q_ids: list[str],
                   q_paths: list[str] | None) -> np.ndarray:
    """Reference row per query from a ground-truth CSV with columns query and ref (ids or file
    names, as ``neardup eval --ground-truth`` takes); queries without a ref are negatives (-1)."""
    import csv
    p = Path(gt_path)
    if not p.is_file():
        raise BenchError(f"ground-truth CSV not found: {p}")
    with p.open(newline="") as fh:
        reader = csv.DictReader(fh)
        cols = {c.lower().strip(): c for c in reader.fieldnames or []}
        qcol = next((cols[c] for c in ("query", "query_id", "q") if c in cols), None)
        rcol = next((cols[c] for c in ("ref", "ref_id", "reference") if c in cols), None)
        if not qcol or not rcol:
            raise BenchError(f"{p} needs 'query' and 'ref' columns, has {reader.fieldnames}")
        pairs = [(row[qcol].strip(), (row[rcol] or "").strip()) for row in reader]
    refs, queries = _name_keys(ref_ids, ref_paths), _name_keys(q_ids, q_paths)
    out = np.full(len(q_ids), -1, dtype=np.int64)
    for q, r in pairs:
        if r and q in queries and r in refs:
            out[queries[q]] = refs[r]
    return out


@dataclass
class RealCodes:
    """Encoded references and their matched augmented queries."""

    refs: np.ndarray
    queries: np.ndarray
    ref_index: np.ndarray  # (q,) index into refs
    unmatched: int
    path: str
    queries_path: str


def load_real_codes(refs_path: str, queries_path: str, ground_truth: str | None = None) -> RealCodes:
    """Reference and query codes (``neardup encode`` Parquets), queries matched to references by
    a ground-truth CSV, a ref_id column, or file names; unmatched queries are dropped."""
    ref_ids, ref_paths, refs, _ = read_codes(refs_path)
    q_ids, q_paths, queries, q_table = read_codes(queries_path)
    if refs.shape[1] != queries.shape[1]:
        raise BenchError(f"code widths differ: {refs.shape[1] * 8} bits in {refs_path}, "
                         f"{queries.shape[1] * 8} bits in {queries_path}")
    ref_index = (match_from_csv(ground_truth, ref_ids, ref_paths, q_ids, q_paths) if ground_truth
                 else match_queries(ref_ids, ref_paths, q_ids, q_paths, q_table))
    keep = ref_index >= 0
    if not keep.any():
        raise BenchError(f"no query in {queries_path} matches a reference in {refs_path} (give "
                         f"--real-ground-truth, a ref_id column, or name copies <original>__<edit>.<ext>)")
    return RealCodes(refs, queries[keep], ref_index[keep], int((~keep).sum()), str(refs_path),
                     str(queries_path))


def real_workload(n: int, real: RealCodes, seed: int) -> Workload:
    """Random background codes with the real references at random rows; real augmented queries."""
    m, nbytes = real.refs.shape
    if n < m:
        raise BenchError(f"size {n} is smaller than the {m} real reference codes")
    rng = np.random.default_rng([seed, n, 1])
    codes = rng.integers(0, 256, size=(n, nbytes), dtype=np.uint8)
    rows = rng.choice(n, size=m, replace=False).astype(np.int64)
    codes[rows] = real.refs
    expected = rows[real.ref_index]
    dists = np.bitwise_count(real.queries ^ codes[expected]).sum(axis=1).astype(np.int32)
    return Workload(codes, real.queries.copy(), expected, dists, "real")


def bucket_labels(dists: np.ndarray, source: str) -> list[tuple[str, np.ndarray]]:
    """(label, mask) per distance bucket: '4','8','12','16' (upper bounds), then '>16' and '<=16'."""
    out, lower = [], -1
    for b in BUCKETS:
        mask = (dists > lower) & (dists <= b)
        if mask.any():
            out.append((str(b), mask))
        lower = b
    far = dists > BUCKETS[-1]
    if far.any():
        out.append((f">{BUCKETS[-1]}", far))
    near = dists <= BUCKETS[-1]
    if near.any():
        out.append((f"<={BUCKETS[-1]}", near))
    return out


# ----------------------------------------------------------------------------------------------
# ground truth
# ----------------------------------------------------------------------------------------------

def gpu_available() -> tuple[bool, str]:
    """Whether faiss can run GpuIndexBinaryFlat here, and why not."""
    import faiss
    if not hasattr(faiss, "GpuIndexBinaryFlat"):
        return False, f"faiss {faiss.__version__} has no GPU support (install faiss-gpu)"
    if faiss.get_num_gpus() < 1:
        return False, "faiss has GPU support but sees no CUDA device"
    return True, "ok"


def exact_knn(codes: np.ndarray, queries: np.ndarray, k: int, gpu: bool, batch: int = 1000
              ) -> tuple[np.ndarray, np.ndarray, str]:
    """Exact Hamming k-NN rows (D int32, I int64) with FAISS brute force, queries batched."""
    import faiss
    bits = codes.shape[1] * 8
    if gpu:
        res = faiss.StandardGpuResources()
        index = faiss.GpuIndexBinaryFlat(res, bits)
        method = "faiss GpuIndexBinaryFlat"
    else:
        index = faiss.IndexBinaryFlat(bits)
        method = "faiss IndexBinaryFlat (cpu)"
    for s in range(0, len(codes), 1 << 22):
        index.add(codes[s:s + (1 << 22)])
    k = min(k, len(codes))
    Ds, Is = [], []
    for s in range(0, len(queries), batch):
        D, I = index.search(queries[s:s + batch], k)
        Ds.append(D.astype(np.int32))
        Is.append(I.astype(np.int64))
    del index
    return np.concatenate(Ds), np.concatenate(Is), method


# ----------------------------------------------------------------------------------------------
# measuring one index
# ----------------------------------------------------------------------------------------------

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
    common.release_memory(_big(n))
    rss0 = common.rss_bytes()
    peak_reset = common.reset_peak_rss()
    index = make_index(kind, bits, **params)
    t0 = time.perf_counter()
    for s in range(0, n, add_batch):
        rows = np.arange(s, min(n, s + add_batch), dtype=np.int64)
        index.add(ids_for_rows(rows), codes[s:s + add_batch])
    seconds = time.perf_counter() - t0
    peak = common.peak_rss_bytes() if peak_reset else None
    common.release_memory(_big(n))
    rss1 = common.rss_bytes()
    index_bytes = index.memory_bytes()
    build = {"seconds": seconds, "codes_per_s": n / seconds if seconds > 0 else None,
             "add_batch": add_batch}
    memory = {"index_bytes": index_bytes, "bytes_per_code": index_bytes / n,
              "rss_delta_bytes": None if rss0 is None else rss1 - rss0,
              "rss_bytes_per_code": None if rss0 is None else (rss1 - rss0) / n,
              "peak_rss_delta_bytes": None if peak is None or rss0 is None else peak - rss0}
    if index.ntotal != n:
        raise RuntimeError(f"{kind}: built {index.ntotal} entries, expected {n}")
    return index, {"build": build, "memory": memory}


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


def _big(n: int) -> bool:
    """Sizes where memory probes are worth a full garbage collection (~0.1 s each)."""
    return n >= 100_000


def _faiss_threads() -> int:
    import faiss
    return int(faiss.omp_get_max_threads())


def choose_batch(run: "Run", label: str, n: int) -> int:
    """--batch-size, halved while the search memory seen at smaller sizes, scaled to n, would
    exceed 40% of the available memory (some kinds build per-batch candidate arrays ∝ n)."""
    batch = run.cfg.batch_size
    prev = [r for r in run.doc["results"] if r["label"] == label and r["batched"].get("peak_rss_delta_bytes")]
    avail = common.meminfo_bytes("MemAvailable")
    if not prev or avail is None:
        return batch
    last = max(prev, key=lambda r: r["n"])
    per_query_code = last["batched"]["peak_rss_delta_bytes"] / (last["n"] * last["batched"]["batch_size"])
    while batch > 1 and per_query_code * n * batch > 0.4 * avail:
        batch //= 2
    return batch


def single_query_latencies(index: Any, queries: np.ndarray, k: int, count: int, threads: int,
                           warmup: int = 20, reps: int = 1) -> np.ndarray:
    """Seconds per search() of one query, one at a time, over ``count`` queries (cycled),
    ``reps`` times over: shape (reps, count).

    FAISS runs with ``threads`` OpenMP threads meanwhile (default 1, as in a Ray actor, which gets
    OMP_NUM_THREADS=1 unless it reserves more CPUs): on a busy machine a multi-threaded OpenMP region
    for a single query waits for a core and costs tens of ms, measuring the scheduler, not the index.
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


# ----------------------------------------------------------------------------------------------
# the run
# ----------------------------------------------------------------------------------------------

class Run:
    """Holds the result document and rewrites the JSON/plot/table after every measurement."""

    def __init__(self, cfg: BenchConfig) -> None:
        self.cfg = cfg
        out = Path(cfg.out_dir)
        stem = f"shard_{cfg.date}_{cfg.tag}"
        self.json_path = out / f"{stem}.json"
        self.png_path = out / f"{stem}.png"
        self.table_path = out / (f"shard_{cfg.date}_table.md" if cfg.tag == "full" else f"{stem}_table.md")
        from shards.index import DEFAULT_KIND
        self.doc: dict[str, Any] = {
            "bench": "shard", "schema": 1, "tag": cfg.tag, "status": "running",
            "started": common.utc_now(), "finished": None,
            "machine": common.machine_info(), "params": asdict(cfg),
            "code": common.file_digests(["shards/index.py", "bench/shard_bench.py"]),
            "default_kind": DEFAULT_KIND, "targets": TARGETS,
            "notes": [
                "Every figure under 'results' and 'ground_truth' is measured; 'fits' and "
                "'extrapolated' are computed from them and are extrapolations.",
                "recall_at_k: fraction of queries whose planted/true duplicate is in the top k "
                "(or k results at least as close were returned), per distance bucket: '4', '8', "
                "'12', '16' hold duplicates at distance (previous, bound]; '<=16' pools them.",
                "With real codes recall is capped by the encoder; ground_truth.exact_search_recall "
                "is that ceiling (exact search scored the same way).",
                "knn_recall_at_k: tie-aware recall of the exact k nearest neighbours (for random "
                "codes the 2nd..kth neighbours are ~30+ bits away, which near-duplicate indexes do "
                "not aim to find).",
                "Latency: one query per search() call, in this process, no network, FAISS with "
                "latency_threads OpenMP threads (1 = a Ray actor's default); latency_reps passes "
                "over latency_queries queries; P50/P99 = the median over passes of each pass's "
                "percentile (pooled: p99_ms_pooled; quantiles_ms are pooled, every 1% in results before "
                "2026-11-26 kernel runs, every 0.1% since). QPS: batch_size queries per call, FAISS on all cores (--threads).",
                "Build: add() in add_batch chunks, FAISS on all cores (--threads); mihc builds in "
                "numpy and searches with a compiled numba kernel (one core).",
                "bytes_per_code = index.memory_bytes() / n; rss_bytes_per_code = the process RSS "
                "delta across the build (after gc and malloc_trim) / n, a cross-check.",
                "load_avg_1m before/after each measurement and other_cpu_users record background "
                "load; other_load is set when the 1-min load average exceeded 1 + cores/4 (the bench "
                "itself adds about 1); figures measured with other load present are noisy.",
            ],
            "sizes_done": [], "ground_truth": [], "results": [], "skipped": [],
            "fits": [], "extrapolated": [],
        }
        self._rendered = -1

    def add_result(self, entry: dict) -> None:
        self.doc["results"].append(entry)
        self.flush(outputs=False)

    def flush(self, final: bool = False, outputs: bool = True) -> None:
        """Rewrite the JSON after every measurement; fits, plot and table when ``outputs`` (slower)."""
        if final:
            self.doc["finished"] = common.utc_now()
        fresh = outputs and len(self.doc["results"]) != self._rendered
        if fresh:
            analyse(self.doc, self.cfg)
        common.write_json(self.json_path, self.doc)
        if fresh and self.doc["results"]:
            write_plot(self.doc, self.png_path)
            self.table_path.write_text(markdown_table(self.doc))
            self._rendered = len(self.doc["results"])


def _grid(cfg: BenchConfig) -> list[BuildSpec]:
    specs = list(GRIDS[cfg.grid])
    if cfg.kinds:
        specs = [s for s in specs if s.kind in cfg.kinds]
    return specs


def _expand(spec: BuildSpec, retunable: bool) -> Iterator[tuple[dict, list[dict]]]:
    """(build params, search variants measured on that build): one build, or one per variant."""
    if retunable:
        yield spec.params, list(spec.variants)
    else:
        for v in spec.variants:
            yield {**spec.params, **v}, [{}]


def _load_state() -> dict:
    return {"load_avg": common.loadavg()}


def run_size(run: Run, n: int, real: RealCodes | None) -> None:
    cfg = run.cfg
    log(f"== n={common.format_count(n)}: generating codes")
    work = real_workload(n, real, cfg.seed) if real else planted_workload(n, cfg.bits, cfg.queries_per_bucket,
                                                                           cfg.seed)
    bits = work.codes.shape[1] * 8
    busy = common.other_cpu_users(interval=1.0 if _big(n) else 0.2)
    t0 = time.perf_counter()
    gt_D, gt_I, method = exact_knn(work.codes, work.queries, cfg.k, cfg.gpu, cfg.batch_size)
    gt_s = time.perf_counter() - t0
    nearest_ok = gt_D[:, 0] == work.distances
    ceiling = recall_report(gt_D, ids_for_rows(gt_I), work, gt_D, cfg.k)  # exact search's own recall
    run.doc["ground_truth"].append({
        "n": n, "source": "measured", "method": method, "seconds": gt_s, "queries": len(work.queries),
        "query_source": work.source, "bits": bits,
        "duplicate_is_nearest": float(nearest_ok.mean()),
        "exact_search_recall": {key: ceiling[key] for key in ceiling if key.startswith("recall_at_")},
        "duplicate_distance_hist": {lab: int(m.sum()) for lab, m in bucket_labels(work.distances, work.source)},
        "other_cpu_users": busy, "load_avg": common.loadavg()})
    log(f"   ground truth: {method}, {len(work.queries)} queries in {gt_s:.1f}s; duplicate is the "
        f"exact nearest for {nearest_ok.mean():.4f} of queries; other CPU users: "
        + (", ".join(f"{u['name']}({u['cpu_percent']:.0f}%)" for u in busy) or "none"))
    del gt_I
    for spec in _grid(cfg):
        measure_spec(run, spec, n, bits, work, gt_D)
    run.doc["sizes_done"].append(n)
    run.flush()


def _should_skip(run: Run, kind: str, params: dict, n: int) -> str | None:
    """A reason to skip this build at size n (projected build time or memory), else None."""
    cfg = run.cfg
    prev = [r for r in run.doc["results"] if r["kind"] == kind and r["build_params"] == params]
    skipped = [s for s in run.doc["skipped"] if s["kind"] == kind and s["build_params"] == params
               and s["n"] < n]
    if skipped:
        return f"skipped at a smaller size ({common.format_count(skipped[0]['n'])})"
    if not prev:
        return None
    last = max(prev, key=lambda r: r["n"])
    rate = last["build"]["codes_per_s"]
    if rate and n / rate > cfg.max_build_seconds:
        return (f"projected build {n / rate:.0f}s at {rate:,.0f} codes/s exceeds --max-build-seconds "
                f"{cfg.max_build_seconds:.0f}")
    need = max(last["memory"]["bytes_per_code"], last["memory"]["rss_bytes_per_code"] or 0) * n * 1.3
    avail = common.meminfo_bytes("MemAvailable")
    if avail is not None and need > avail:
        return f"projected memory {need / 2 ** 30:.1f} GiB exceeds available {avail / 2 ** 30:.1f} GiB"
    return None


def measure_spec(run: Run, spec: BuildSpec, n: int, bits: int, work: Workload, gt_D: np.ndarray) -> None:
    from shards.index import make_index
    cfg = run.cfg
    retunable = retune(make_index(spec.kind, bits, **spec.params), spec.variants[-1])
    for build_params, variants in _expand(spec, retunable):
        reason = _should_skip(run, spec.kind, build_params, n)
        if reason:
            log(f"   {label_of(spec.kind, build_params)}: SKIPPED ({reason})")
            run.doc["skipped"].append({"n": n, "kind": spec.kind, "build_params": build_params,
                                       "reason": reason})
            run.flush(outputs=False)
            continue
        before = _load_state()
        log(f"   {label_of(spec.kind, build_params)}: building {common.format_count(n)} codes "
            f"(load {before['load_avg']})")
        index, built = build_index(spec.kind, build_params, bits, work.codes, cfg.add_batch)
        log(f"      built in {built['build']['seconds']:.1f}s ({built['build']['codes_per_s']:,.0f} codes/s), "
            f"{built['memory']['bytes_per_code']:.1f} B/code (RSS {built['memory']['rss_bytes_per_code'] or 0:.1f})")
        entries = []
        for variant in variants:
            retune(index, variant)
            entries.append(measure_search(run, index, spec.kind, build_params, variant, n, work, gt_D, built))
            if hasattr(index, "geometry"):  # mihc: the chunking it chose at this size
                entries[-1]["geometry"] = index.info()["geometry"]
        saved, loaded = ({}, {})
        if cfg.save_load:  # the built index is dropped before loading: never two copies in memory
            probe = work.queries[:min(100, len(work.queries))]
            tmp = Path(tempfile.mkdtemp(prefix="shard_bench_", dir=cfg.tmp_dir))
            try:
                saved, reference = timed_save(index, tmp / "idx", probe, cfg.k)
                del index
                loaded = timed_load(tmp / "idx", probe, cfg.k, reference, _big(n))
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
            log(f"      save {saved['seconds']:.2f}s ({saved['disk_bytes'] / 2 ** 20:.0f} MiB), load "
                f"{loaded['seconds']:.2f}s, same results after load: {loaded['same_results']}")
        else:
            del index
        common.release_memory(_big(n))
        for e in entries:
            e["save"], e["load"] = saved, loaded
            e["load_avg_1m"]["build_before"] = before["load_avg"][0] if before["load_avg"] else None
            run.add_result(e)


def measure_search(run: Run, index: Any, kind: str, build_params: dict, variant: dict, n: int,
                   work: Workload, gt_D: np.ndarray, built: dict) -> dict:
    cfg = run.cfg
    params = {**build_params, **variant}
    la0 = common.loadavg()
    label = label_of(kind, params)
    batch = choose_batch(run, label, n)
    if batch < cfg.batch_size:
        log(f"      {label}: batch of {batch} queries (not {cfg.batch_size}) to bound search memory")
    D, I, secs, peak = search_batched(index, work.queries, cfg.k, batch)
    rec = recall_report(D, I, work, gt_D, cfg.k)
    lat = latency_summary(single_query_latencies(index, work.queries, cfg.k, cfg.latency_queries,
                                                 cfg.latency_threads, reps=cfg.latency_reps))
    lat["faiss_threads"] = cfg.latency_threads
    la1 = common.loadavg()
    entry = {
        "n": n, "kind": kind, "params": params, "build_params": build_params, "label": label_of(kind, params),
        "source": "measured", "query_source": work.source, "k": cfg.k, **rec,
        "latency": lat,
        "batched": {"qps": len(work.queries) / secs, "batch_size": min(batch, len(work.queries)),
                    "n_queries": len(work.queries), "peak_rss_delta_bytes": peak,
                    "faiss_threads": _faiss_threads()},
        "build": built["build"], "memory": built["memory"],
        "load_avg_1m": {"before": la0[0] if la0 else None, "after": la1[0] if la1 else None},
        "other_load": bool(la0 and la1 and max(la0[0], la1[0]) > 1 + 0.25 * common.usable_cores()),
    }
    r10 = rec[f"recall_at_{cfg.k}"]
    log(f"      {entry['label']}: recall@{cfg.k} " + " ".join(f"{b}:{v:.3f}" for b, v in r10.items())
        + f" | P50 {lat['p50_ms']:.3f} ms P99 {lat['p99_ms']:.3f} ms | {entry['batched']['qps']:,.0f} QPS"
        + (f" | {rec['distance_errors']} WRONG DISTANCES" if rec["distance_errors"] else ""))
    return entry


# ----------------------------------------------------------------------------------------------
# fits and extrapolation
# ----------------------------------------------------------------------------------------------

_FIT_METRICS = {
    "p50_ms": lambda r: r["latency"]["p50_ms"],
    "p99_ms": lambda r: r["latency"]["p99_ms"],
    "memory_bytes": lambda r: r["memory"]["index_bytes"],
    "rss_delta_bytes": lambda r: r["memory"]["rss_delta_bytes"],
    "build_seconds": lambda r: r["build"]["seconds"],
    "batched_seconds_per_query": lambda r: 1.0 / r["batched"]["qps"],
}


def _fallback_model(kind: str, metric: str) -> str:
    """The model theory expects, used when too few sizes were measured to choose by fit: a graph
    search (hnsw) costs ~log n per query, its build ~n log n; scans and bucket probes grow ~n."""
    if kind == "hnsw":
        return "nlogn" if metric == "build_seconds" else ("log" if metric.endswith(("_ms", "per_query")) else "linear")
    return "linear"


def fanout_tail(quantiles_ms: list[float], scale: float, shards: int, seed: int = 0,
                draws: int = 50_000) -> dict:
    """P50/P99 of the slowest of ``shards`` iid shard latencies drawn from a quantile function
    (``quantiles_ms`` at evenly spaced levels from 0 to 100%, any number of them)."""
    rng = np.random.default_rng(seed)
    u = rng.random((draws, shards)) * (len(quantiles_ms) - 1)
    samples = np.interp(u, np.arange(len(quantiles_ms)), np.asarray(quantiles_ms) * scale)
    worst = samples.max(axis=1)
    return {"p50_ms": float(np.percentile(worst, 50)), "p99_ms": float(np.percentile(worst, 99))}


def analyse(doc: dict, cfg: BenchConfig) -> None:
    """Recompute fits and extrapolations from the measured results (idempotent)."""
    by_label: dict[str, list[dict]] = {}
    for r in doc["results"]:
        by_label.setdefault(r["label"], []).append(r)
    fits, extra = [], []
    target_n, shards = cfg.extrapolate_to, cfg.fanout_shards
    for label, rows in by_label.items():
        rows = sorted(rows, key=lambda r: r["n"])
        # an auto-sized mihc changes its chunking as it grows: fit only the sizes that share the
        # largest size's geometry (the one a 200M shard keeps)
        rows = [r for r in rows if r.get("geometry") == rows[-1].get("geometry")]
        ns = [r["n"] for r in rows]
        f = {}
        for metric, get in _FIT_METRICS.items():
            fit = common.fit_cost_curve(ns, [get(r) for r in rows], fallback=_fallback_model(rows[0]["kind"], metric))
            if fit:
                f[metric] = fit
                fits.append({"label": label, "kind": rows[0]["kind"], "params": rows[0]["params"],
                             "metric": metric, "source": "fit", **fit})
        if "p50_ms" not in f:
            continue
        last = rows[-1]
        p50 = common.eval_cost_curve(f["p50_ms"], target_n)
        # the tail keeps its measured shape: P99 = fitted P50 x measured P99/P50 (the same scaling
        # as the fan-out simulation; a direct fit of noisy P99s can even land below P50)
        p99 = p50 * last["latency"]["p99_ms"] / last["latency"]["p50_ms"]
        p99_direct = common.eval_cost_curve(f["p99_ms"], target_n) if "p99_ms" in f else None
        mem = common.eval_cost_curve(f["memory_bytes"], target_n) if "memory_bytes" in f else None
        build_s = common.eval_cost_curve(f["build_seconds"], target_n) if "build_seconds" in f else None
        bspq = f.get("batched_seconds_per_query")
        scale = p50 / last["latency"]["p50_ms"] if last["latency"]["p50_ms"] else 1.0
        tail = fanout_tail(last["latency"]["quantiles_ms"], scale, shards)
        extra.append({
            "label": label, "kind": last["kind"], "params": last["params"], "source": "extrapolated",
            "n": target_n, "from_sizes": ns, "low_confidence": f["p50_ms"]["low_confidence"],
            "p50_ms": p50, "p99_ms": p99, "p99_ms_direct_fit": p99_direct,
            "p50_model": f["p50_ms"]["model"],
            "memory_bytes": mem, "bytes_per_code": None if mem is None else mem / target_n,
            "build_seconds": build_s,
            "build_codes_per_s": None if not build_s else target_n / build_s,
            "batched_qps": None if not bspq else 1.0 / common.eval_cost_curve(bspq, target_n),
            "recall_at_10_le16_measured_at_largest": last[f"recall_at_{cfg.k}"].get("<=16"),
            "fanout": {"shards": shards, "codes_total": target_n * shards, "source": "extrapolated",
                       "method": f"max of {shards} iid draws from the latency distribution measured at "
                                 f"n={last['n']}, scaled by the fitted P50 ratio {scale:.2f}; excludes "
                                 f"network, encode and merge", **tail},
        })
    doc["fits"], doc["extrapolated"] = fits, extra
    doc["summary"] = summarise(doc, cfg)


def _default_label(doc: dict) -> str | None:
    """The default kind's default configuration (built with no params), else its first result."""
    rows = [r for r in doc["results"] if r["kind"] == doc["default_kind"]]
    plain = [r for r in rows if not r["params"]]
    return (plain or rows)[0]["label"] if rows else None


def summarise(doc: dict, cfg: BenchConfig) -> dict:
    """Default kind against the targets at TARGET_N (else its largest size), and HNSW beside it
    at its largest size."""
    out: dict[str, Any] = {}
    dl = _default_label(doc)

    def at(rs: list[dict], n_pref: int | None) -> list[dict]:
        sizes = {r["n"] for r in rs}
        n = n_pref if n_pref in sizes else max(sizes, default=0)
        return [r for r in rs if r["n"] == n]

    for name, pick in (("default", at([r for r in doc["results"] if r["label"] == dl], TARGET_N)),
                       ("hnsw", at([r for r in doc["results"] if r["kind"] == "hnsw"], None))):
        if not pick:
            continue
        for r in pick:
            rec = r[f"recall_at_{cfg.k}"].get("<=16")
            checks = {"recall_at_10_le16": rec is not None and rec >= TARGETS["recall_at_10_le16"],
                      "p99_ms": r["latency"]["p99_ms"] <= TARGETS["p99_ms"],
                      "bytes_per_code": r["memory"]["bytes_per_code"] <= TARGETS["bytes_per_code"],
                      "build_codes_per_s": r["build"]["codes_per_s"] >= TARGETS["build_codes_per_s"]}
            out.setdefault(name, []).append({
                "label": r["label"], "n": r["n"], "source": "measured", "recall_at_10_le16": rec,
                "p50_ms": r["latency"]["p50_ms"], "p99_ms": r["latency"]["p99_ms"],
                "bytes_per_code": r["memory"]["bytes_per_code"],
                "rss_bytes_per_code": r["memory"]["rss_bytes_per_code"],
                "build_codes_per_s": r["build"]["codes_per_s"], "meets_target": checks,
                "other_load": r["other_load"]})
    return out


# ----------------------------------------------------------------------------------------------
# outputs: plot and Markdown table
# ----------------------------------------------------------------------------------------------

def _representatives(doc: dict) -> dict[str, str]:
    """One label per kind for the plot: the config with the fewest/plainest params."""
    reps: dict[str, str] = {}
    for r in doc["results"]:
        cur = reps.get(r["kind"])
        if cur is None:
            reps[r["kind"]] = r["label"]
    dl = _default_label(doc)
    if dl:
        reps[doc["default_kind"]] = dl
    for r in doc["results"]:  # hnsw: prefer the design card's M=32, efSearch=128 when measured
        if r["kind"] == "hnsw" and r["params"].get("M") == 32 and r["params"].get("efSearch") == 128:
            reps["hnsw"] = r["label"]
    return reps


def write_plot(doc: dict, path: Path) -> None:
    """Latency, memory and recall against size, one line per kind (dashed: extrapolated)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    reps = _representatives(doc)
    fits = {(f["label"], f["metric"]): f for f in doc["fits"]}
    target_n = doc["params"]["extrapolate_to"]
    fig, axes = plt.subplots(1, 3, figsize=(17, 5.2))
    panels = (("p50_ms", "P99 single-query latency (ms)", lambda r: r["latency"]["p99_ms"]),
              ("memory_bytes", "bytes per code (index.memory_bytes / n)",
               lambda r: r["memory"]["bytes_per_code"]),
              (None, "recall@10, duplicates <= 16 bits", lambda r: r[f"recall_at_{r['k']}"].get("<=16")))
    for ax, (metric, title, get) in zip(axes, panels):
        for i, (kind, label) in enumerate(sorted(reps.items())):
            rows = sorted((r for r in doc["results"] if r["label"] == label), key=lambda r: r["n"])
            color = f"C{i}"
            ax.plot([r["n"] for r in rows], [get(r) for r in rows], "o-", color=color,
                    label=label + (" [default]" if kind == doc["default_kind"] else ""))
            fit = fits.get((label, metric)) if metric else None
            if fit and rows:
                xs = np.geomspace(rows[0]["n"], target_n, 40)
                ys = [common.eval_cost_curve(fit, x) for x in xs]
                if metric == "memory_bytes":
                    ys = [y / x for x, y in zip(xs, ys)]
                else:  # P99 = fitted P50 x the measured P99/P50 ratio at the largest size
                    ys = [y * rows[-1]["latency"]["p99_ms"] / rows[-1]["latency"]["p50_ms"] for y in ys]
                ax.plot(xs, ys, "--", color=color, alpha=0.6)
        ax.set_xscale("log")
        if metric:
            ax.set_yscale("log")
        ax.set_xlabel("codes in the shard (n); dashed = extrapolated fit")
        ax.set_title(title)
        ax.grid(True, which="both", alpha=0.3)
    axes[0].axhline(TARGETS["p99_ms"], color="k", lw=0.8, ls=":")
    axes[1].axhline(TARGETS["bytes_per_code"], color="k", lw=0.8, ls=":")
    axes[2].axhline(TARGETS["recall_at_10_le16"], color="k", lw=0.8, ls=":")
    axes[2].set_ylim(0, 1.02)
    axes[0].legend(fontsize=8)
    m = doc["machine"]
    fig.suptitle(f"neardup shard bench ({doc['tag']}, {m['date'][:10]}, {m['cpu_model']}, {m['cores']} cores, "
                 f"git {str(m['git']['commit'])[:8]}); dotted = target", fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _kilo(rate: float) -> str:
    """Codes/s as thousands: 2 significant digits below 10k (2,213 -> '2.2'), else whole."""
    return f"{rate / 1e3:.1f}" if rate < 10_000 else f"{rate / 1e3:,.0f}"


def _f(x: Any, fmt: str, dash: str = "—") -> str:
    return dash if x is None else format(x, fmt)


def markdown_table(doc: dict) -> str:
    """README-ready table: each config at its largest measured size, and extrapolated to
    ``extrapolate_to`` codes per node and ``fanout_shards`` shards."""
    if not doc["results"]:
        return ""
    k = doc["params"]["k"]
    nt = common.format_count(doc["params"]["extrapolate_to"])
    shards = doc["params"]["fanout_shards"]
    extra = {e["label"]: e for e in doc["extrapolated"]}
    m = doc["machine"]
    busy = any(r["other_load"] for r in doc["results"])
    dl = _default_label(doc)
    largest: dict[str, dict] = {}
    for r in doc["results"]:
        if r["label"] not in largest or r["n"] > largest[r["label"]]["n"]:
            largest[r["label"]] = r
    source = ("uniform random codes with planted duplicates" if doc["results"][0]["query_source"] == "planted"
              else "real codes in random background codes")
    lines = [f"Shard index benchmark, {m['date'][:10]}: {m['cpu_model']} ({m['cores']} cores, {m['ram_gb']} GB), "
             f"faiss {m['faiss']}, git {str(m['git']['commit'])[:8]}; {doc['params']['bits']}-bit {source}."
             + "".join(f" Merged from {mg['file']} (git {str(mg['machine']['git']['commit'])[:8]}, "
                       f"{mg['machine']['date'][:10]}): {mg['results']} results"
                       + (f", replacing {mg['replaced']} earlier measurements" if mg.get("replaced") else "")
                       + "." for mg in doc.get("merged", []) if mg.get("machine"))
             + (" Other processes were using the CPU during some measurements (see load_avg_1m in the "
                "JSON): tail latencies are noisy." if busy else ""),
             "", f"Columns marked *measured* are at the size in the n column (the largest measured for that "
             f"configuration); *extrapolated* columns come from cost curves fitted over the measured sizes, "
             f"to {nt} codes per node and {common.format_count(doc['params']['extrapolate_to'] * shards)} codes "
             f"over {shards} shards (P99 of the slowest shard, excluding network, encode and merge).", "",
             f"| kind | params | n | recall@{k}, dup ≤16 bits | P50 / P99 ms | QPS (batch {doc['params']['batch_size']}) | "
             f"build k codes/s | bytes/code (RSS) | P50 / P99 ms at {nt} | GB at {nt} | "
             f"P99 ms, {shards}-shard fan-out |",
             "|---|---|---|---|---|---|---|---|---|---|---|",
             "| | | | *measured* | *measured* | *measured* | *measured* | *measured* | *extrapolated* | "
             "*extrapolated* | *extrapolated* |"]
    rows = sorted(largest.values(), key=lambda r: (r["label"] != dl, r["kind"], str(sorted(r["params"].items()))))
    at_target = [r for r in doc["results"] if r["label"] == dl and r["n"] == TARGET_N]
    if at_target and rows and rows[0]["label"] == dl and rows[0]["n"] != TARGET_N:
        rows.insert(0, at_target[0])  # the default also at the size its targets are set for
    for r in rows:
        e = extra.get(r["label"], {})
        mark = " †" if e.get("low_confidence") else ""
        params = ", ".join(f"{a}={b}" for a, b in sorted(r["params"].items())) or "defaults"
        kind = f"**{r['kind']}** (default)" if r["label"] == dl else r["kind"]
        rss = r["memory"]["rss_bytes_per_code"]
        lines.append(
            f"| {kind} | {params} | {common.format_count(r['n'])} | {_f(r[f'recall_at_{k}'].get('<=16'), '.3f')} | "
            f"{r['latency']['p50_ms']:.2f} / {r['latency']['p99_ms']:.2f} | {r['batched']['qps']:,.0f} | "
            f"{_kilo(r['build']['codes_per_s'])} | {r['memory']['bytes_per_code']:.0f} ({_f(rss, '.0f')}) | "
            f"{_f(e.get('p50_ms'), '.2f')} / {_f(e.get('p99_ms'), '.2f')}{mark} | "
            f"{_f(None if e.get('memory_bytes') is None else e['memory_bytes'] / 1e9, '.1f')}{mark} | "
            f"{_f(e.get('fanout', {}).get('p99_ms'), '.2f')}{mark} |")
    skipped = sorted({(label_of(s["kind"], s["build_params"]), s["n"], s["reason"]) for s in doc["skipped"]
                      if s["kind"] != "*" and not s["reason"].startswith("skipped at a smaller size")})
    if skipped:
        lines += ["", "Not measured above n: " + "; ".join(
            f"{lab} at {common.format_count(n)} ({why})" for lab, n, why in skipped) + "."]
    falling = []
    for label, r in largest.items():
        first = min((x for x in doc["results"] if x["label"] == label), key=lambda x: x["n"])
        a, b = first[f"recall_at_{k}"].get("<=16"), r[f"recall_at_{k}"].get("<=16")
        if a is not None and b is not None and a - b > 0.02:
            falling.append(f"{label} {a:.3f} at {common.format_count(first['n'])} → {b:.3f} at "
                           f"{common.format_count(r['n'])}")
    if falling:
        lines += ["", "Recall falls as the shard grows (not extrapolated; expect lower at "
                  f"{nt}): " + "; ".join(falling) + "."]
    if any(e.get("low_confidence") for e in extra.values()):
        lines += ["", "† fitted on fewer than 3 sizes: the model theory expects (hnsw: log n per query; others: "
                  "linear), low confidence."]
    lines += ["", f"P99 at {nt} = fitted P50 × the P99/P50 ratio measured at the largest size; the fan-out "
              f"column is the P99 of the slowest of {shards} shards, simulated by drawing from that scaled "
              f"distribution. QPS uses all cores; single-query latency uses one FAISS thread."]
    summary = (doc.get("summary") or {}).get("default") or []
    if summary:
        d = summary[0]
        ok = d["meets_target"]
        yes = lambda b: "met" if b else "**not met**"  # noqa: E731
        lines += ["", f"Targets for the default kind at {common.format_count(d['n'])}: recall@{k} ≥ "
                  f"{TARGETS['recall_at_10_le16']} for duplicates ≤ 16 bits ({d['recall_at_10_le16']:.3f}: "
                  f"{yes(ok['recall_at_10_le16'])}), P99 ≤ {TARGETS['p99_ms']} ms ({d['p99_ms']:.2f}: "
                  f"{yes(ok['p99_ms'])}), ≤ {TARGETS['bytes_per_code']:.0f} bytes/code "
                  f"({d['bytes_per_code']:.1f}: {yes(ok['bytes_per_code'])}), build ≥ "
                  f"{TARGETS['build_codes_per_s'] // 1000}k codes/s ({d['build_codes_per_s'] / 1e3:,.0f}k: "
                  f"{yes(ok['build_codes_per_s'])})."]
    return "\n".join(lines) + "\n"


def _read_doc(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise BenchError(f"cannot read results {path}: {exc}") from None


def render(json_path: str, merge: list[str] | None = None) -> int:
    """Re-fit, re-plot and re-tabulate an existing result JSON (e.g. after a killed run).

    ``merge``: result JSONs of other runs (e.g. one large size run alone, or a re-measurement
    of one kind after a code change) whose measurements join this document's before fitting;
    a merged result replaces this document's result for the same configuration and size, and
    records the file it came from.
    """
    p = Path(json_path)
    doc = _read_doc(p)
    merged = {m["file"]: m for m in doc.get("merged", [])}
    for other in merge or []:
        extra, name = _read_doc(Path(other)), Path(other).name
        new = {(r["label"], r["n"]): {**r, "merged_from": name} for r in extra["results"]}
        replaced = sum(1 for r in doc["results"]
                       if (r["label"], r["n"]) in new and r.get("merged_from") != name)
        doc["results"] = [r for r in doc["results"] if (r["label"], r["n"]) not in new] + list(new.values())
        merged[name] = {"file": name, "results": len(new), "machine": extra.get("machine"),
                        "replaced": replaced + merged.get(name, {}).get("replaced", 0)}
    if merged:
        doc["merged"] = list(merged.values())
    cfg = BenchConfig(**doc["params"])
    analyse(doc, cfg)
    common.write_json(p, doc)
    write_plot(doc, p.with_suffix(".png"))
    table = markdown_table(doc)
    stem = p.stem
    table_name = (f"shard_{cfg.date}_table.md" if cfg.tag == "full" else f"{stem}_table.md")
    (p.parent / table_name).write_text(table)
    print(table, flush=True)
    return 0


# ----------------------------------------------------------------------------------------------
# command line
# ----------------------------------------------------------------------------------------------

def parse_args(argv: list[str] | None) -> BenchConfig:
    p = argparse.ArgumentParser(prog="python -m bench.shard_bench", description=__doc__.split("\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--sizes", default="1M,2M,5M,10M", help="comma-separated sizes (k/M suffixes)")
    p.add_argument("--quick", action="store_true", help="sizes 100k,200k and the quick grid (smoke/CI)")
    p.add_argument("--kinds", default=None, help="comma-separated subset of index kinds")
    p.add_argument("--grid", choices=sorted(GRIDS), default=None, help="parameter grid (default: full)")
    p.add_argument("--bits", type=int, default=128)
    p.add_argument("--queries-per-bucket", type=int, default=500)
    p.add_argument("--latency-queries", type=int, default=1000)
    p.add_argument("--latency-reps", type=int, default=3,
                   help="passes over the latency queries; P50/P99 = median over passes")
    p.add_argument("--batch-size", type=int, default=1000, help="queries per call for batched QPS")
    p.add_argument("--add-batch", type=int, default=100_000, help="codes per add() call while building")
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--real-codes", default=None, help="Parquet of reference codes (neardup encode output)")
    p.add_argument("--real-queries", default=None, help="Parquet of codes of augmented copies")
    p.add_argument("--real-ground-truth", default=None,
                   help="CSV with query,ref columns (ids or file names) matching queries to references")
    p.add_argument("--gpu", action="store_true", help="exact baseline on GPU; sizes up to 200M")
    p.add_argument("--max-size", default=None, help="refuse sizes above this (default 20M, 200M with --gpu)")
    p.add_argument("--max-build-seconds", type=float, default=1800.0,
                   help="skip a build whose projected time (from the previous size) exceeds this")
    p.add_argument("--threads", type=int, default=None,
                   help="FAISS OpenMP threads (default: all usable cores)")
    p.add_argument("--latency-threads", type=int, default=1,
                   help="FAISS OpenMP threads while timing single queries (a Ray actor's default is 1)")
    p.add_argument("--no-save-load", action="store_true", help="skip the save/load timing")
    p.add_argument("--tmp-dir", default=None, help="where save/load writes (default: system temp)")
    p.add_argument("--extrapolate-to", default="200M")
    p.add_argument("--fanout-shards", type=int, default=5)
    p.add_argument("--out-dir", default=str(common.RESULTS_DIR))
    p.add_argument("--tag", default=None, help="file tag (default: quick/full, +real, +gpu)")
    a = p.parse_args(argv)
    try:
        sizes = sorted({common.parse_count(s) for s in ("100k,200k" if a.quick else a.sizes).split(",") if s.strip()})
        max_size = common.parse_count(a.max_size) if a.max_size else (200_000_000 if a.gpu else 20_000_000)
        extrapolate_to = common.parse_count(a.extrapolate_to)
    except ValueError as exc:
        raise BenchError(str(exc)) from None
    from shards.index import INDEX_KINDS
    kinds = [x.strip() for x in a.kinds.split(",") if x.strip()] if a.kinds else None
    for kind in kinds or []:
        if kind not in INDEX_KINDS:
            raise BenchError(f"unknown index kind {kind!r}; choose from {', '.join(INDEX_KINDS)}")
    if not sizes:
        raise BenchError("no sizes given")
    if sizes[-1] > max_size:
        raise BenchError(f"size {common.format_count(sizes[-1])} is above --max-size "
                         f"{common.format_count(max_size)}" + ("" if a.gpu else " (use --gpu for up to 200M)"))
    if bool(a.real_codes) != bool(a.real_queries):
        raise BenchError("--real-codes and --real-queries go together")
    if a.real_ground_truth and not a.real_codes:
        raise BenchError("--real-ground-truth needs --real-codes and --real-queries")
    if a.latency_threads < 1:
        raise BenchError("--latency-threads must be >= 1")
    if a.threads is not None and a.threads < 1:
        raise BenchError("--threads must be >= 1")
    for name in ("queries_per_bucket", "latency_queries", "latency_reps", "batch_size", "add_batch", "k",
                 "fanout_shards"):
        if getattr(a, name) < 1:
            raise BenchError(f"--{name.replace('_', '-')} must be >= 1")
    if a.bits <= 0 or a.bits % 8:
        raise BenchError(f"--bits must be a positive multiple of 8, got {a.bits}")
    tag = a.tag or ("quick" if a.quick else "full") + ("_real" if a.real_codes else "") + ("_gpu" if a.gpu else "")
    return BenchConfig(sizes=sizes, bits=a.bits, kinds=kinds, grid=a.grid or ("quick" if a.quick else "full"),
                       queries_per_bucket=a.queries_per_bucket, latency_queries=a.latency_queries,
                       latency_reps=a.latency_reps,
                       batch_size=a.batch_size, add_batch=a.add_batch, k=a.k, seed=a.seed,
                       real_codes=a.real_codes, real_queries=a.real_queries,
                       real_ground_truth=a.real_ground_truth, gpu=a.gpu, max_size=max_size,
                       max_build_seconds=a.max_build_seconds, threads=a.threads,
                       latency_threads=a.latency_threads, save_load=not a.no_save_load,
                       tmp_dir=a.tmp_dir, extrapolate_to=extrapolate_to, fanout_shards=a.fanout_shards,
                       out_dir=a.out_dir, tag=tag)


def run_bench(cfg: BenchConfig) -> dict:
    """Run every size in increasing order; returns the result document (also written to disk)."""
    import faiss
    if cfg.threads:
        faiss.omp_set_num_threads(cfg.threads)
    real = load_real_codes(cfg.real_codes, cfg.real_queries, cfg.real_ground_truth) if cfg.real_codes else None
    if real:
        cfg.bits = real.refs.shape[1] * 8
        log(f"real codes: {len(real.refs)} references, {len(real.queries)} matched queries "
            f"({real.unmatched} unmatched), {cfg.bits} bits")
    run = Run(cfg)
    if real:
        run.doc["real_codes"] = {"refs": real.path, "queries": real.queries_path,
                                 "ground_truth": cfg.real_ground_truth, "n_refs": len(real.refs),
                                 "n_queries": len(real.queries), "unmatched_queries": real.unmatched,
                                 "bits": cfg.bits}
    log(f"shard bench: sizes {', '.join(common.format_count(s) for s in cfg.sizes)}, grid {cfg.grid}, "
        f"results -> {run.json_path}")
    try:
        for n in cfg.sizes:
            avail = common.meminfo_bytes("MemAvailable")
            need = 3 * n * (cfg.bits // 8 + 8)
            if avail is not None and need > avail:
                log(f"stopping before n={common.format_count(n)}: workload needs ~{need / 2 ** 30:.1f} GiB, "
                    f"{avail / 2 ** 30:.1f} GiB available")
                run.doc["skipped"].append({"n": n, "kind": "*", "build_params": {}, "reason": "not enough memory"})
                break
            run_size(run, n, real)
        run.doc["status"] = "complete"
    except KeyboardInterrupt:
        run.doc["status"] = "interrupted"
        raise
    finally:
        if run.doc["status"] == "running":
            run.doc["status"] = "failed"
        run.flush(final=True)
        log(f"wrote {run.json_path}, {run.png_path}, {run.table_path} ({run.doc['status']})")
    print(markdown_table(run.doc), flush=True)
    return run.doc


def main(argv: list[str] | None = None) -> int:
    """Entry point for ``python -m bench.shard_bench`` and ``neardup bench shard``."""
    try:
        argv = list(sys.argv[1:] if argv is None else argv)
        if argv[:1] == ["--render"]:
            if len(argv) < 2:
                raise BenchError("usage: --render RESULTS.json [MORE_RESULTS.json ...]")
            return render(argv[1], argv[2:])
        cfg = parse_args(argv)
        if cfg.gpu:
            ok, why = gpu_available()
            if not ok:
                print(f"shard bench: skipped: --gpu needs faiss GPU support: {why}", file=sys.stderr)
                return 0
        run_bench(cfg)
    except BenchError as exc:
        print(f"shard bench: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
