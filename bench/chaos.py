"""Chaos bench: SIGKILL shard actor processes during concurrent adds and deletes; nothing
acknowledged may be lost.

    python -m bench.chaos                      # 12 kills on a simulated 3-shard-node cluster
    python -m bench.chaos --kills 20 --writers 6 --tag long

Writer threads add batches of random codes through :class:`rayapp.router.ShardRouter` (and
now and then delete some of their acknowledged ids) while a killer sends SIGKILL to a random
shard actor's process at random moments. Ray restarts the actor (``max_restarts=-1``), which
recovers from its snapshot and WAL; the router's in-flight adds are retried. An add or delete
counts as acknowledged only when the router call returned. At the end every acknowledged add
must be found with its code and no acknowledged delete may be found. Writes that raised are
not acknowledged and are not checked. Writes ``bench/results/chaos_<date>[_tag].json``.
"""
from __future__ import annotations

import argparse
import os
import signal
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import ray

from bench import common


@dataclass
class ChaosParams:
    kills: int = 12
    writers: int = 4            # concurrent writer threads
    batch: int = 50             # ids per add call
    delete_every: int = 4       # every n-th acknowledged batch of a writer, delete some of it
    delete_count: int = 3
    min_gap_s: float = 0.3      # random pause between one shard's recovery and the next kill
    max_gap_s: float = 1.5
    recover_timeout_s: float = 120.0
    write_timeout_s: float = 60.0
    seed: int = 0


@dataclass
class WriterLog:
    """What one writer thread saw (merged after the run)."""
    acked: dict[str, bytes] = field(default_factory=dict)   # acknowledged, to check: id -> code
    acked_adds: int = 0                                     # every acknowledged add
    deleted: set[str] = field(default_factory=set)          # acknowledged deletes
    failed_adds: int = 0
    failed_deletes: int = 0
    errors: dict[str, int] = field(default_factory=dict)    # exception type -> count


class _Writers:
    """Writer threads that add (and sometimes delete) through their own ShardRouter."""

    def __init__(self, shards: list, bits: int, params: ChaosParams, prefix: str):
        self.shards, self.code_bytes, self.p, self.prefix = shards, bits // 8, params, prefix
        self.stop = threading.Event()
        self.logs = [WriterLog() for _ in range(params.writers)]
        self.in_flight = 0
        self._lock = threading.Lock()
        self.threads = [threading.Thread(target=self._run, args=(w,), daemon=True, name=f"writer-{w}")
                        for w in range(params.writers)]

    def start(self) -> None:
        for t in self.threads:
            t.start()

    def join(self, timeout: float) -> None:
        self.stop.set()
        deadline = time.monotonic() + timeout
        for t in self.threads:
            t.join(max(0.0, deadline - time.monotonic()))
        alive = [t.name for t in self.threads if t.is_alive()]
        if alive:
            raise TimeoutError(f"writer threads did not finish: {alive}")

    def _call(self, fn, *args):
        with self._lock:
            self.in_flight += 1
        try:
            return fn(*args)
        finally:
            with self._lock:
                self.in_flight -= 1

    def _run(self, w: int) -> None:
        from rayapp.router import ShardRouter
        log, p = self.logs[w], self.p
        router = ShardRouter(self.shards, timeout_s=10.0, write_timeout_s=p.write_timeout_s)
        rng = np.random.default_rng([p.seed, w])
        seq = 0
        while not self.stop.is_set():
            ids = [f"{self.prefix}w{w}-{seq:06d}-{j:03d}" for j in range(p.batch)]
            codes = rng.integers(0, 256, (p.batch, self.code_bytes), dtype=np.uint8)
            seq += 1
            try:
                self._call(router.add, ids, codes, [{"w": w, "seq": seq}] * p.batch)
            except Exception as exc:  # noqa: BLE001 - not acknowledged: not checked
                log.failed_adds += len(ids)
                log.errors[type(exc).__name__] = log.errors.get(type(exc).__name__, 0) + 1
                continue
            log.acked.update(zip(ids, (c.tobytes() for c in codes)))
            log.acked_adds += len(ids)
            if p.delete_every and seq % p.delete_every == 0:
                victims = ids[:p.delete_count]
                try:
                    self._call(router.remove, victims)
                except Exception as exc:  # noqa: BLE001 - state unknown: check neither way
                    log.failed_deletes += len(victims)
                    log.errors[type(exc).__name__] = log.errors.get(type(exc).__name__, 0) + 1
                    for v in victims:
                        log.acked.pop(v, None)
                    continue
                for v in victims:
                    log.acked.pop(v, None)
                log.deleted.update(victims)


def _stats(handle, timeout: float) -> dict | None:
    try:
        return ray.get(handle.stats.remote(), timeout=timeout)
    except (ray.exceptions.RayError, TimeoutError):
        return None


def wait_ready(handle, timeout: float, not_pid: int | None = None) -> dict:
    """Poll ``stats()`` until the actor answers (from a process other than ``not_pid``)."""
    deadline = time.monotonic() + timeout
    while True:
        st = _stats(handle, timeout=max(1.0, min(10.0, deadline - time.monotonic())))
        if st is not None and st["pid"] != not_pid:
            return st
        if time.monotonic() > deadline:
            raise TimeoutError(f"shard did not come back within {timeout:g}s")
        time.sleep(0.1)


def kill_process(handle, timeout: float, before=None) -> tuple[int, float]:
    """SIGKILL the process of a shard actor and wait until Ray restarted it -> (pid, seconds).

    ``before()`` runs right before the signal is sent (to record what was in flight).
    """
    pid = wait_ready(handle, timeout)["pid"]
    if before is not None:
        before()
    os.kill(pid, signal.SIGKILL)
    t0 = time.monotonic()
    wait_ready(handle, timeout, not_pid=pid)
    return pid, time.monotonic() - t0


def verify(shards: list, acked: dict[str, bytes], deleted: set[str], sample: int = 200,
           seed: int = 0) -> dict:
    """Count acknowledged adds that are missing or changed and deletes that came back."""
    from rayapp.router import ShardRouter
    router = ShardRouter(shards, timeout_s=60.0, write_timeout_s=60.0)
    by_shard: dict[int, list[str]] = {}
    for i in list(acked) + list(deleted):
        by_shard.setdefault(router.shard_for(i), []).append(i)
    present: dict[str, bool] = {}
    for s, ids in by_shard.items():
        for k in range(0, len(ids), 5000):
            chunk = ids[k:k + 5000]
            present.update(zip(chunk, ray.get(shards[s].contains.remote(chunk), timeout=120)))
    lost = sorted(i for i in acked if not present[i])
    resurrected = sorted(i for i in deleted if present[i])
    rng = np.random.default_rng(seed)
    probe = [str(i) for i in rng.permutation(sorted(acked))[:sample] if present[i]]
    changed = []
    if probe:
        codes = np.stack([np.frombuffer(acked[i], dtype=np.uint8) for i in probe])
        results, missing = router.search(codes, k=1)
        if missing:
            raise RuntimeError(f"shards {missing} did not answer the verification search")
        changed = [i for i, hits in zip(probe, results)
                   if not hits or hits[0].distance != 0 or hits[0].id != i]
    return {"lost_adds": len(lost), "resurrected_deletes": len(resurrected),
            "changed_codes": len(changed), "code_checks": len(probe),
            "lost_examples": lost[:10], "resurrected_examples": resurrected[:10],
            "changed_examples": changed[:10]}


def run_chaos(shards: list, bits: int, params: ChaosParams | None = None, prefix: str = "chaos-",
              say=print) -> dict:
    """Kill shard processes ``params.kills`` times during concurrent writes; verify; report.

    ``shards`` are restartable shard actor handles (``rayapp.cluster.ensure_shards``) on a
    Ray cluster this process is connected to, all on this machine (kills use the local pid).
    """
    p = params or ChaosParams()
    rng = np.random.default_rng(p.seed)
    for h in shards:
        wait_ready(h, p.recover_timeout_s)
    writers = _Writers(shards, bits, p, prefix)
    kills: list[dict] = []
    t0 = time.monotonic()
    writers.start()
    try:
        for k in range(p.kills):
            time.sleep(rng.uniform(p.min_gap_s, p.max_gap_s))
            s = int(rng.integers(len(shards)))
            seen: dict = {}
            pid, recover_s = kill_process(shards[s], p.recover_timeout_s,
                                          before=lambda: seen.update(n=writers.in_flight))
            kills.append({"shard": s, "pid": pid, "recover_s": round(recover_s, 3),
                          "writes_in_flight": seen["n"]})
            say(f"kill {k + 1}/{p.kills}: shard {s} pid {pid} ({seen['n']} writes in flight), "
                f"back after {recover_s:.2f}s")
        time.sleep(rng.uniform(p.min_gap_s, p.max_gap_s))  # more writes after the last restart
    finally:
        writers.join(timeout=p.write_timeout_s + 30)
    duration = time.monotonic() - t0
    acked: dict[str, bytes] = {}
    deleted: set[str] = set()
    for log in writers.logs:
        acked.update(log.acked)
        deleted |= log.deleted
    for h in shards:
        wait_ready(h, p.recover_timeout_s)
    check = verify(shards, acked, deleted, seed=p.seed)
    errors: dict[str, int] = {}
    for log in writers.logs:
        for name, n in log.errors.items():
            errors[name] = errors.get(name, 0) + n
    recover = [k["recover_s"] for k in kills]
    stats = [ray.get(h.stats.remote(), timeout=60) for h in shards]
    return {
        "kills": len(kills),
        "kills_with_writes_in_flight": sum(1 for k in kills if k["writes_in_flight"] > 0),
        "acknowledged_adds": sum(log.acked_adds for log in writers.logs),
        "checked_adds": len(acked),  # acknowledged and not deleted since
        "stored_codes": sum(st["count"] for st in stats),  # = checked + failed adds that landed
        "acknowledged_deletes": len(deleted),
        "failed_adds": sum(log.failed_adds for log in writers.logs),
        "failed_deletes": sum(log.failed_deletes for log in writers.logs),
        "write_errors": errors,
        **check,
        "duration_s": round(duration, 2),
        "acked_adds_per_s": round(sum(log.acked_adds for log in writers.logs) / duration, 1),
        "recover_s": {"median": round(float(np.median(recover)), 3) if recover else None,
                      "max": max(recover) if recover else None},
        "kill_log": kills,
        "shards": [{key: st.get(key) for key in ("shard_id", "node_id", "pid", "count",
                                                  "generation", "replayed", "recovery_s")}
                   for st in stats],
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.chaos", description=__doc__.split("\n")[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    d = ChaosParams()
    ap.add_argument("--kills", type=int, default=d.kills)
    ap.add_argument("--nodes", type=int, default=3, help="simulated shard nodes (one shard each)")
    ap.add_argument("--writers", type=int, default=d.writers)
    ap.add_argument("--batch", type=int, default=d.batch)
    ap.add_argument("--bits", type=int, default=128)
    ap.add_argument("--index-kind", default=None, help="shard index kind (default: shards default)")
    ap.add_argument("--snapshot-every", type=int, default=500,
                    help="small, so that kills also land during snapshots")
    ap.add_argument("--min-gap", type=float, default=d.min_gap_s)
    ap.add_argument("--max-gap", type=float, default=d.max_gap_s)
    ap.add_argument("--seed", type=int, default=d.seed)
    ap.add_argument("--index-dir", default=None, help="default: a temporary folder")
    ap.add_argument("--tag", default="", help="suffix for the result file name")
    ap.add_argument("--out-dir", default=str(common.RESULTS_DIR))
    args = ap.parse_args(argv)
    if args.kills < 1 or args.nodes < 1 or args.writers < 1 or args.batch < 1:
        ap.error("--kills, --nodes, --writers and --batch must be >= 1")

    from rayapp.cluster import ensure_shards, kill_shards, start_local_cluster, stop_local_cluster
    from rayapp.config import Config

    params = ChaosParams(kills=args.kills, writers=args.writers, batch=args.batch,
                         min_gap_s=args.min_gap, max_gap_s=args.max_gap, seed=args.seed)
    with tempfile.TemporaryDirectory(prefix="neardup-chaos-") as tmp:
        cfg = Config()
        cfg.encoder.name = "random"  # codes are random; no encoder is loaded
        cfg.storage.index_dir = args.index_dir or str(Path(tmp) / "index")
        cfg.storage.index_kind = args.index_kind
        cfg.storage.snapshot_every = args.snapshot_every
        cfg.storage.placement = "resource"
        cfg.storage.namespace = f"neardup-chaos-{os.getpid()}"
        t0 = time.monotonic()
        cluster = start_local_cluster(shard_nodes=args.nodes)
        try:
            print(f"cluster up in {time.monotonic() - t0:.1f}s: head + {args.nodes} shard nodes",
                  flush=True)
            shards = ensure_shards(cfg, bits=args.bits)
            report = run_chaos(shards, args.bits, params, say=lambda m: print(m, flush=True))
            kill_shards(cfg)
        finally:
            stop_local_cluster(cluster)
    name = f"chaos_{common.today()}{'_' + args.tag if args.tag else ''}.json"
    doc = {"bench": "chaos", "machine": common.machine_info(), "loadavg": common.loadavg(),
           "params": {**asdict(params), "nodes": args.nodes, "bits": args.bits,
                      "index_kind": args.index_kind, "snapshot_every": args.snapshot_every},
           "result": report}
    path = common.write_json(Path(args.out_dir) / name, doc)
    ok = report["lost_adds"] == 0 and report["resurrected_deletes"] == 0 \
        and report["changed_codes"] == 0
    print(f"kills {report['kills']} ({report['kills_with_writes_in_flight']} with writes in "
          f"flight), acknowledged adds {report['acknowledged_adds']}, acknowledged deletes "
          f"{report['acknowledged_deletes']}, lost adds {report['lost_adds']}, resurrected "
          f"deletes {report['resurrected_deletes']}, changed codes {report['changed_codes']}; "
          f"recovery median {report['recover_s']['median']}s -> {path}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
