"""Where the soak's shard-actor RSS goes: replay a soak's shard WAL, one record at a time, into
an in-process ShardActor (no Ray), with a search and a verify after each add, from a thread pool
as wide as the actor's ``max_concurrency`` or from one thread; sample RSS, and at the end call
``malloc_trim(0)``. Each setting runs in its own process (``MALLOC_ARENA_MAX`` is read at start).

What ``malloc_trim`` gives back was freed memory the allocator kept, not the shard's data. It
also finds the WAL records at which the shard's mihc index re-laid out its bucket tables and,
from the soak's seeded request sequence, the second of the soak each happened in, to set beside
the steps in the soak's per-process RSS.

    python -m bench.soak_replay --wal /tmp/neardup-soak-XXXX/index/shard-0/wal-00000000.log
"""
from __future__ import annotations

import argparse
import ctypes
import json
import os
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from bench.common import RESULTS_DIR, REPO_ROOT, machine_info, rss_bytes, today, utc_now, write_json

SETTINGS = ({"name": "16 threads, default arenas", "threads": 16, "arenas": None},
            {"name": "16 threads, MALLOC_ARENA_MAX=2", "threads": 16, "arenas": 2},
            {"name": "1 thread, default arenas", "threads": 1, "arenas": None})


def replay_once(wal: str, passes: int, threads: int, meta: dict) -> dict:
    """Feed the WAL's records ``passes`` times (fresh ids each pass) -> RSS per pass (MiB)."""
    from shards.actor import ShardActor
    from shards.wal import OP_ADD, replay

    recs = list(replay(wal, truncate=False))
    cb, vb, kb = meta["bits"] // 8, meta["vector_bytes"], meta["keypoint_bytes"]
    shard = ShardActor(0, tempfile.mkdtemp(prefix="soak-replay-"), meta["bits"], None, None, 10**9, vb, kb)
    rng, live = np.random.default_rng(0), []

    def op(rid: str, rec, query) -> None:
        if rec.op == OP_ADD:
            shard.add([rid], np.frombuffer(rec.code, np.uint8)[None], [json.loads(rec.meta) if rec.meta else None])
        else:
            shard.remove([rid])
        if query is not None:  # what a search request costs the shard: search, then verify
            hits = shard.search(query[:, :cb], k=10, vectors=query[:, cb:cb + vb])[0]
            if hits and kb:
                shard.verify([h["id"] for h in hits[:5]], query[0, cb + vb:cb + vb + kb].tobytes())

    mib = lambda: round(rss_bytes() / 2**20, 1)  # noqa: E731
    per_pass = [mib()]
    with ThreadPoolExecutor(threads) as pool:
        for p in range(passes):
            batch = []
            for rec in recs:
                query = None
                if rec.op == OP_ADD:
                    live.append(np.frombuffer(rec.code, np.uint8)[None])
                    query = live[int(rng.integers(0, len(live)))]
                batch.append(pool.submit(op, f"{rec.id}~{p}", rec, query))
                if len(batch) >= 4:  # a few requests in flight at once, as in the soak
                    [f.result() for f in batch]
                    batch = []
            [f.result() for f in batch]
            per_pass.append(mib())
    end = mib()
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    return {"records_per_pass": len(recs), "codes": shard.stats()["codes"], "rss_mb_per_pass": per_pass,
            "growth_mb_after_first_pass": round(end - per_pass[1], 1), "rss_mb_after_malloc_trim": mib()}


def relayout_positions(wal: str, meta: dict) -> list[int]:
    """WAL record numbers at which the shard's mihc index re-lays out its bucket tables (one
    thread, records applied one by one as the server did)."""
    from shards import mihc
    from shards.actor import ShardActor
    from shards.wal import OP_ADD, replay

    at, where = [], [0]
    original = mihc.CompactMIHIndex._relayout

    def counting(self, extra):
        at.append(where[0])
        return original(self, extra)

    shard = ShardActor(0, tempfile.mkdtemp(prefix="soak-replay-"), meta["bits"], None, None, 10**9,
                       meta["vector_bytes"], meta["keypoint_bytes"])
    mihc.CompactMIHIndex._relayout = counting
    try:
        for i, rec in enumerate(replay(wal, truncate=False)):
            where[0] = i
            if rec.op == OP_ADD:
                shard.add([rec.id], np.frombuffer(rec.code, np.uint8)[None], [json.loads(rec.meta) if rec.meta else None])
            else:
                shard.remove([rec.id])
    finally:
        mihc.CompactMIHIndex._relayout = original
    return at


def soak_seconds(wal: str, positions: list[int], rate: float) -> list[float]:
    """WAL record numbers -> seconds into the soak that wrote them: the k-th write request (an
    add or delete of one image and its stored views) is the k-th run of records with one op and
    base id, and the soak's seeded sequence (``bench.soak.next_op``) says when it was sent."""
    from bench.soak import IMAGES, next_op
    from shards.views import base_id
    from shards.wal import replay

    write_of, last, k = [], None, -1
    for rec in replay(wal, truncate=False):
        key = (rec.op, base_id(rec.id))
        k += key != last
        write_of.append(k)
        last = key
    rng, live, sent_at = np.random.default_rng(0), 0, []
    i = 0
    while len(sent_at) <= k:
        op, _ = next_op(rng, live, IMAGES)
        if op == "add":
            live += 1
            sent_at.append(i)
        elif op == "delete":
            rng.integers(0, live)
            live -= 1
            sent_at.append(i)
        i += 1
    return [round(sent_at[write_of[p]] / rate, 1) for p in positions]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.soak_replay", description=__doc__.splitlines()[0])
    ap.add_argument("--wal", required=True, help="a shard WAL left by bench.soak (its index_dir in the JSON)")
    ap.add_argument("--passes", type=int, default=8)
    ap.add_argument("--rate", type=float, default=5.0, help="the soak's --rate (to map WAL positions to seconds)")
    ap.add_argument("--out", default=None)
    ap.add_argument("--one", default=None, help=argparse.SUPPRESS)  # internal: one setting, JSON to stdout
    args = ap.parse_args(argv)
    meta = json.loads((Path(args.wal).parent.parent / "neardup.json").read_text())
    if args.one:
        print(json.dumps(replay_once(args.wal, args.passes, int(args.one), meta)))
        return 0
    runs = []
    for s in SETTINGS:
        env = {**os.environ, **({"MALLOC_ARENA_MAX": str(s["arenas"])} if s["arenas"] else {})}
        if not s["arenas"]:
            env.pop("MALLOC_ARENA_MAX", None)
        out = subprocess.run([sys.executable, "-m", "bench.soak_replay", "--wal", args.wal, "--passes",
                              str(args.passes), "--one", str(s["threads"])], cwd=REPO_ROOT, env=env,
                             capture_output=True, text=True, check=True).stdout
        runs.append({**s, **json.loads(out.strip().splitlines()[-1])})
        print(runs[-1]["name"], runs[-1]["rss_mb_per_pass"], "after malloc_trim", runs[-1]["rss_mb_after_malloc_trim"])
    at = relayout_positions(args.wal, meta)
    relayouts = {"wal_records": at, "soak_seconds": soak_seconds(args.wal, at, args.rate)}
    print("mihc re-layouts at soak seconds", relayouts["soak_seconds"])
    result = {"date": utc_now(), "machine": machine_info(), "wal": args.wal, "index_meta": meta,
              "passes": args.passes, "runs": runs, "relayouts": relayouts}
    write_json(Path(args.out) if args.out else RESULTS_DIR / f"soak_replay_{today()}.json", result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
