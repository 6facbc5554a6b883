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

This module is the command line. The rest lives beside it: ``shard_config`` (grids, targets,
the run's configuration), ``shard_workload`` and ``shard_real_codes`` (codes and queries),
``shard_exact`` (ground truth), ``shard_measure`` (one index's measurements), ``shard_run`` (sizes
and configurations, the result document), ``shard_fits`` (cost curves, extrapolation) and
``shard_report`` (plot, table and ``--render``).
"""
from __future__ import annotations

import argparse
import sys

from bench import common
from bench.shard_config import GRIDS, BenchConfig, BenchError
from bench.shard_exact import gpu_available
from bench.shard_report import render
from bench.shard_run import run_bench

_AT_LEAST_ONE = ("queries_per_bucket", "latency_queries", "latency_reps", "batch_size", "add_batch", "k",
                 "fanout_shards")


def _parser() -> argparse.ArgumentParser:
    """Every flag of the bench, with its default shown in --help."""
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
    return p


def _counts(a: argparse.Namespace) -> tuple[list[int], int, int]:
    """(sizes, max size, extrapolation target) from their k/M/B-suffixed flags."""
    try:
        sizes = sorted({common.parse_count(s) for s in ("100k,200k" if a.quick else a.sizes).split(",") if s.strip()})
        max_size = common.parse_count(a.max_size) if a.max_size else (200_000_000 if a.gpu else 20_000_000)
        extrapolate_to = common.parse_count(a.extrapolate_to)
    except ValueError as exc:
        raise BenchError(str(exc)) from None
    return sizes, max_size, extrapolate_to


def _kinds(a: argparse.Namespace) -> list[str] | None:
    """The --kinds subset, each checked against the index kinds shards.index knows."""
    from shards.index import INDEX_KINDS
    kinds = [x.strip() for x in a.kinds.split(",") if x.strip()] if a.kinds else None
    for kind in kinds or []:
        if kind not in INDEX_KINDS:
            raise BenchError(f"unknown index kind {kind!r}; choose from {', '.join(INDEX_KINDS)}")
    return kinds


def _check(a: argparse.Namespace, sizes: list[int], max_size: int) -> None:
    """Refuse flag combinations and values a run could not honour, before anything is measured."""
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
    for name in _AT_LEAST_ONE:
        if getattr(a, name) < 1:
            raise BenchError(f"--{name.replace('_', '-')} must be >= 1")
    if a.bits <= 0 or a.bits % 8:
        raise BenchError(f"--bits must be a positive multiple of 8, got {a.bits}")


def parse_args(argv: list[str] | None) -> BenchConfig:
    """The run's configuration from the command line; a BenchError names the first bad flag."""
    a = _parser().parse_args(argv)
    sizes, max_size, extrapolate_to = _counts(a)
    kinds = _kinds(a)
    _check(a, sizes, max_size)
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
