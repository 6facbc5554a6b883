"""One search fanned out to N shard actors, in process, beside the bare floor in the same run.

A local Ray starts N real shard actors (``rayapp.cluster.ensure_shards``, a few hundred random
codes each) and N no-op actors (``bench.serve_floor.NoOpShard``). One asyncio driver then times,
round after round so drifting load hits all alike:

- ``floor``: one no-op call per actor, two arguments each, gathered (what Serve's floor does);
- ``by_argument``: ``ShardActor.search`` on every shard with its ten arguments passed one by one,
  as the router called it before 2026-12-06 (Ray serialises each argument of each call);
- ``router``: ``ShardRouter.asearch`` by code, the product's path (the arguments pickled once
  for every shard: ``ShardActor.search_pickled``), merge included.

No HTTP and no Serve: this isolates what the router's fan-out adds to Ray's own round trips.
The JSON (machine, date, revision, ms per query and the ratio to the floor) goes to
bench/results/fanout_DATE[_TAG].json.

    python -m bench.fanout --shards 5 --queries 400 --rounds 3
"""
from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from functools import partial
from pathlib import Path

import numpy as np
import ray

from bench.common import RESULTS_DIR, machine_info, today, utc_now, write_json

CODES_PER_SHARD = 200


def _setup(shards: int) -> tuple:
    """(the shard handles, a router over them, the no-op actors, one query code)."""
    from bench.serve_floor import NoOpShard
    from rayapp.cluster import ensure_shards, shard_name
    from rayapp.config import load_config
    from rayapp.router import ShardRouter
    cfg = load_config(None, overrides={"storage": {"index_dir": tempfile.mkdtemp(prefix="fanout-"),
                                                   "num_shards": shards, "bits": 128},
                                       "encoder": {"name": "pdq"}})
    handles = ensure_shards(cfg, bits=128)
    codes = np.random.default_rng(0).integers(0, 256, (shards * CODES_PER_SHARD, 16), dtype=np.uint8)
    ray.get([h.add.remote([f"s{i}-{j}" for j in range(CODES_PER_SHARD)],
                          codes[i * CODES_PER_SHARD:(i + 1) * CODES_PER_SHARD])
             for i, h in enumerate(handles)])
    resolver = partial(lambda ns, i: ray.get_actor(shard_name(i), namespace=ns), cfg.storage.namespace)
    router = ShardRouter(handles, timeout_s=5.0, resolver=resolver)
    return handles, router, [NoOpShard.remote() for _ in range(shards)], codes[:1]


def _paths(handles: list, router, noops: list, q: np.ndarray) -> dict:
    """Each timed path: an async function answering one query."""
    async def floor():
        await asyncio.gather(*(a.search.remote(q, 10) for a in noops))

    async def by_argument():
        await asyncio.gather(*(h.search.remote(q, 10, None, False, None, None, 1.0, 10, None, None)
                               for h in handles))

    async def product():
        await router.asearch(q, 10)
    return {"floor": floor, "by_argument": by_argument, "router": product}


async def _time(paths: dict, queries: int, rounds: int, warm_up: int = 50) -> dict[str, list[float]]:
    """Mean ms per query of each path, one figure per round."""
    out: dict[str, list[float]] = {name: [] for name in paths}
    for _ in range(rounds):
        for name, call in paths.items():
            for _ in range(warm_up):
                await call()
            t0 = time.perf_counter()
            for _ in range(queries):
                await call()
            out[name].append(round((time.perf_counter() - t0) / queries * 1000, 3))
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.fanout", description=__doc__.splitlines()[0])
    ap.add_argument("--shards", type=int, default=5)
    ap.add_argument("--queries", type=int, default=400)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--tag", default="")
    ap.add_argument("--out-dir", default=str(RESULTS_DIR))
    args = ap.parse_args(argv)
    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR")
    try:
        rounds = asyncio.run(_time(_paths(*_setup(args.shards)), args.queries, args.rounds))
    finally:
        ray.shutdown()
    mean = {name: round(float(np.mean(v)), 3) for name, v in rounds.items()}
    result = {"benchmark": "fanout", "date": utc_now(), "machine": machine_info(),
              "shards": args.shards, "queries": args.queries, "rounds": args.rounds,
              "ms_per_query_by_round": rounds, "ms_per_query": mean,
              "ratio_to_floor": {name: round(v / mean["floor"], 3) for name, v in mean.items()}}
    print(result["ms_per_query"], result["ratio_to_floor"])
    tag = f"_{args.tag}" if args.tag else ""
    print(f"wrote {write_json(Path(args.out_dir) / f'fanout_{today()}{tag}.json', result)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
