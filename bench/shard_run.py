"""The shard benchmark's run: every size in increasing order, every index configuration of the grid
at each size, and the result document that records it all as it goes.

The document is rewritten after every measurement, so a killed run keeps what it measured, and
configurations that would not finish (projected time or memory) are skipped with the reason.
"""
from __future__ import annotations

import shutil
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from bench import common
from bench.shard_config import GRIDS, TARGETS, BenchConfig, BuildSpec, label_of, log, table_name
from bench.shard_exact import exact_knn
from bench.shard_fits import analyse
from bench.shard_measure import (build_index, faiss_threads, latency_summary, recall_report, retune,
                                 search_batched, single_query_latencies, timed_load, timed_save,
                                 worth_collecting)
from bench.shard_real_codes import RealCodes, load_real_codes
from bench.shard_report import markdown_table, write_plot
from bench.shard_workload import Workload, bucket_labels, ids_for_rows, planted_workload, real_workload

# the code a result's figures depend on, digested into its "code" field
CODE_FILES = ["shards/index.py", "bench/shard_bench.py", "bench/shard_config.py", "bench/shard_exact.py",
              "bench/shard_fits.py", "bench/shard_measure.py", "bench/shard_real_codes.py",
              "bench/shard_report.py", "bench/shard_run.py", "bench/shard_workload.py"]

NOTES = [
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
]


def new_document(cfg: BenchConfig) -> dict[str, Any]:
    """The result document before anything is measured: machine, params, code digests, notes."""
    from shards.index import DEFAULT_KIND
    return {
        "bench": "shard", "schema": 1, "tag": cfg.tag, "status": "running",
        "started": common.utc_now(), "finished": None,
        "machine": common.machine_info(), "params": asdict(cfg),
        "code": common.file_digests(CODE_FILES),
        "default_kind": DEFAULT_KIND, "targets": TARGETS,
        "notes": list(NOTES),
        "sizes_done": [], "ground_truth": [], "results": [], "skipped": [],
        "fits": [], "extrapolated": [],
    }


class Run:
    """Holds the result document and rewrites the JSON/plot/table after every measurement."""

    def __init__(self, cfg: BenchConfig) -> None:
        self.cfg = cfg
        out = Path(cfg.out_dir)
        stem = f"shard_{cfg.date}_{cfg.tag}"
        self.json_path = out / f"{stem}.json"
        self.png_path = out / f"{stem}.png"
        self.table_path = out / table_name(cfg.date, cfg.tag, stem)
        self.doc = new_document(cfg)
        self._rendered = -1

    def add_result(self, entry: dict) -> None:
        """Record one measured configuration and save the JSON at once."""
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


# ----------------------------------------------------------------------------------------------
# one size
# ----------------------------------------------------------------------------------------------

def _grid(cfg: BenchConfig) -> list[BuildSpec]:
    """The grid's builds, narrowed to --kinds when given."""
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
    """Generate the workload of size n, its exact ground truth, then measure every configuration."""
    cfg = run.cfg
    log(f"== n={common.format_count(n)}: generating codes")
    work = real_workload(n, real, cfg.seed) if real else planted_workload(n, cfg.bits, cfg.queries_per_bucket,
                                                                           cfg.seed)
    bits = work.codes.shape[1] * 8
    gt_D = _ground_truth(run, work, n, bits)
    for spec in _grid(cfg):
        measure_spec(run, spec, n, bits, work, gt_D)
    run.doc["sizes_done"].append(n)
    run.flush()


def _ground_truth(run: Run, work: Workload, n: int, bits: int) -> np.ndarray:
    """Exact k-NN distances of the queries (what every index is scored against), recorded with how
    often the planted duplicate is the exact nearest and exact search's own recall."""
    cfg = run.cfg
    busy = common.other_cpu_users(interval=1.0 if worth_collecting(n) else 0.2)
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
    return gt_D


# ----------------------------------------------------------------------------------------------
# one index configuration
# ----------------------------------------------------------------------------------------------

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
    """Measure one grid entry at size n: one build with its search variants retuned in place, or
    one build per variant when the kind cannot be retuned after building."""
    from shards.index import make_index
    retunable = retune(make_index(spec.kind, bits, **spec.params), spec.variants[-1])
    for build_params, variants in _expand(spec, retunable):
        reason = _should_skip(run, spec.kind, build_params, n)
        if reason:
            log(f"   {label_of(spec.kind, build_params)}: SKIPPED ({reason})")
            run.doc["skipped"].append({"n": n, "kind": spec.kind, "build_params": build_params,
                                       "reason": reason})
            run.flush(outputs=False)
            continue
        _measure_build(run, spec.kind, build_params, variants, n, bits, work, gt_D)


def _measure_build(run: Run, kind: str, build_params: dict, variants: list[dict], n: int, bits: int,
                   work: Workload, gt_D: np.ndarray) -> None:
    """Build once, measure each search variant, then time save and load; records one result per
    variant."""
    cfg = run.cfg
    before = _load_state()
    log(f"   {label_of(kind, build_params)}: building {common.format_count(n)} codes "
        f"(load {before['load_avg']})")
    index, built = build_index(kind, build_params, bits, work.codes, cfg.add_batch)
    log(f"      built in {built['build']['seconds']:.1f}s ({built['build']['codes_per_s']:,.0f} codes/s), "
        f"{built['memory']['bytes_per_code']:.1f} B/code (RSS {built['memory']['rss_bytes_per_code'] or 0:.1f})")
    entries = []
    for variant in variants:
        retune(index, variant)
        entries.append(measure_search(run, index, kind, build_params, variant, n, work, gt_D, built))
        if hasattr(index, "geometry"):  # mihc: the chunking it chose at this size
            entries[-1]["geometry"] = index.info()["geometry"]
    saved, loaded = ({}, {})
    if cfg.save_load:  # the built index is dropped before loading: never two copies in memory
        probe = work.queries[:min(100, len(work.queries))]
        tmp = Path(tempfile.mkdtemp(prefix="shard_bench_", dir=cfg.tmp_dir))
        try:
            saved, reference = timed_save(index, tmp / "idx", probe, cfg.k)
            del index
            loaded = timed_load(tmp / "idx", probe, cfg.k, reference, worth_collecting(n))
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        log(f"      save {saved['seconds']:.2f}s ({saved['disk_bytes'] / 2 ** 20:.0f} MiB), load "
            f"{loaded['seconds']:.2f}s, same results after load: {loaded['same_results']}")
    else:
        del index
    common.release_memory(worth_collecting(n))
    for e in entries:
        e["save"], e["load"] = saved, loaded
        e["load_avg_1m"]["build_before"] = before["load_avg"][0] if before["load_avg"] else None
        run.add_result(e)


def choose_batch(run: Run, label: str, n: int) -> int:
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


def measure_search(run: Run, index: Any, kind: str, build_params: dict, variant: dict, n: int,
                   work: Workload, gt_D: np.ndarray, built: dict) -> dict:
    """One search variant of a built index: recall, single-query latency and batched QPS, with
    the build's figures and the background load beside them (one result entry)."""
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
                    "faiss_threads": faiss_threads()},
        "build": built["build"], "memory": built["memory"],
        "load_avg_1m": {"before": la0[0] if la0 else None, "after": la1[0] if la1 else None},
        "other_load": bool(la0 and la1 and max(la0[0], la1[0]) > 1 + 0.25 * common.usable_cores()),
    }
    _log_entry(entry, rec, cfg.k)
    return entry


def _log_entry(entry: dict, rec: dict, k: int) -> None:
    r10 = rec[f"recall_at_{k}"]
    lat = entry["latency"]
    log(f"      {entry['label']}: recall@{k} " + " ".join(f"{b}:{v:.3f}" for b, v in r10.items())
        + f" | P50 {lat['p50_ms']:.3f} ms P99 {lat['p99_ms']:.3f} ms | {entry['batched']['qps']:,.0f} QPS"
        + (f" | {rec['distance_errors']} WRONG DISTANCES" if rec["distance_errors"] else ""))


# ----------------------------------------------------------------------------------------------
# the whole run
# ----------------------------------------------------------------------------------------------

def _load_real(cfg: BenchConfig) -> RealCodes | None:
    """The real codes of --real-codes/--real-queries (which set the code width), else None."""
    if not cfg.real_codes:
        return None
    real = load_real_codes(cfg.real_codes, cfg.real_queries, cfg.real_ground_truth)
    cfg.bits = real.refs.shape[1] * 8
    log(f"real codes: {len(real.refs)} references, {len(real.queries)} matched queries "
        f"({real.unmatched} unmatched), {cfg.bits} bits")
    return real


def _real_codes_record(real: RealCodes, cfg: BenchConfig) -> dict:
    return {"refs": real.path, "queries": real.queries_path, "ground_truth": cfg.real_ground_truth,
            "n_refs": len(real.refs), "n_queries": len(real.queries), "unmatched_queries": real.unmatched,
            "bits": cfg.bits}


def _no_room(run: Run, n: int) -> bool:
    """Whether the workload of size n would not fit in available memory (recorded as skipped)."""
    avail = common.meminfo_bytes("MemAvailable")
    need = 3 * n * (run.cfg.bits // 8 + 8)
    if avail is None or need <= avail:
        return False
    log(f"stopping before n={common.format_count(n)}: workload needs ~{need / 2 ** 30:.1f} GiB, "
        f"{avail / 2 ** 30:.1f} GiB available")
    run.doc["skipped"].append({"n": n, "kind": "*", "build_params": {}, "reason": "not enough memory"})
    return True


def run_bench(cfg: BenchConfig) -> dict:
    """Run every size in increasing order; returns the result document (also written to disk)."""
    import faiss
    if cfg.threads:
        faiss.omp_set_num_threads(cfg.threads)
    real = _load_real(cfg)
    run = Run(cfg)
    if real:
        run.doc["real_codes"] = _real_codes_record(real, cfg)
    log(f"shard bench: sizes {', '.join(common.format_count(s) for s in cfg.sizes)}, grid {cfg.grid}, "
        f"results -> {run.json_path}")
    try:
        for n in cfg.sizes:
            if _no_room(run, n):
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
