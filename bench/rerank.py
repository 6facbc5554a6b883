"""Shard search time with side-vector scoring against the weighted path, in the same run.

    python -m bench.rerank                    # 1M entries -> bench/results/rerank_<date>.json
    python -m bench.rerank --entries 20000    # smoke size

One in-process ShardActor per mode over the same random codes: ``vector_bytes=0`` searched with
the queries' bit confidences (the shard ranks by weighted Hamming distance) and
``vector_bytes=128`` searched with query vectors (the shard scores by cosine). A query is one image's views: 6 codes, 40
candidates each (``rerank_depth(10)`` for an image stored with one crop).
"""
from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np

from bench import common
from shards.actor import ShardActor
from formats.vectors import quantize
from shards.vectors import records


def _shard(codes: np.ndarray, vectors: np.ndarray, vector_bytes: int, root: str) -> ShardActor:
    shard = ShardActor(0, root, 128, snapshot_every=10 ** 9, vector_bytes=vector_bytes)
    ids = [f"img-{i}" for i in range(len(codes))]
    for s in range(0, len(codes), 100_000):
        shard.add(ids[s:s + 100_000], records(codes[s:s + 100_000], vectors[s:s + 100_000] if vector_bytes else None))
    shard.snapshot()  # the store is then memory-mapped, as after a restart
    return shard


def _latencies(shard: ShardActor, queries: np.ndarray, qvec: np.ndarray | None, n: int) -> dict:
    ms = []
    weights = np.random.default_rng(1).uniform(0, 1, (queries.shape[1], 128)).astype(np.float32)
    for i in range(n):
        q = queries[i % len(queries)]
        ranked = {"weights": weights} if qvec is None else {"vectors": qvec[i % len(qvec)]}
        t0 = time.perf_counter()
        shard.search(q, 40, **ranked)
        ms.append((time.perf_counter() - t0) * 1000)
    return common.latency_percentiles(ms)


def run(argv: list[str] | None = None) -> Path:
    """Measure both modes and write ``bench/results/rerank_<date>.json`` -> its path."""
    args = common.small_bench_args("python -m bench.rerank", __doc__, 1_000_000, 300, argv)
    rng = np.random.default_rng(0)
    codes = rng.integers(0, 256, (args.entries, 16), dtype=np.uint8)
    vectors = quantize(rng.normal(size=(args.entries, 128)).astype(np.float32))
    picks = rng.choice(args.entries, (args.queries, 6))
    queries, qvec = codes[picks] ^ 3, vectors[picks]
    result = {"machine": common.machine_info(), "entries": args.entries, "views_per_query": 6,
              "candidates_per_view": 40}
    for name, vb in (("weighted_path", 0), ("vector_scoring", 128)):
        with tempfile.TemporaryDirectory() as root:
            shard = _shard(codes, vectors, vb, root)
            result[name] = {**_latencies(shard, queries, qvec if vb else None, args.queries),
                            "store_mapped_bytes": shard.stats()["mapped_bytes"]}
            shard.close()
        print(name, result[name], flush=True)
    result["vector_over_weighted_p50"] = round(result["vector_scoring"]["p50_ms"]
                                               / result["weighted_path"]["p50_ms"], 3)
    out = common.write_json(Path(args.out_dir) / f"rerank_{common.today()}.json", result)
    return out


main = common.main_for(run)


if __name__ == "__main__":
    raise SystemExit(main())
