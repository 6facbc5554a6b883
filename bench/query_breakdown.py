"""Where one image query's time goes: decode, views, encode, keypoints, fan-out, shard search,
merge, verification and serialisation, measured two ways in one run.

1. **The live server, profiled.** A real ``neardup serve`` on a simulated cluster (``--nodes``
   shard nodes, ``bench.serve_stack``) answers image queries one at a time over HTTP while
   py-spy samples every server process (``bench.pyspy_stages``): CPU milliseconds per query by
   stage and by process, from outside, with no hook in the product.
2. **The same steps, timed one by one.** This process (a driver on the same cluster) runs the
   product's own functions in the order the server runs them (``load_image``,
   ``query_variants``, ``encode_vectors``, ``extract_query``, ``ShardRouter.search`` against the
   same shard actors, each merging the query's views, ``ShardRouter.verify``, ``with_confidence``, FastAPI's
   JSON rendering) and times each: wall milliseconds per stage. Torch runs with as many threads
   as the server's encoder replica has (its OMP_NUM_THREADS).

The client's own wall time per query, less the timed stages on the server's critical path
(keypoints overlap the encoding there), is what the hops between processes, HTTP and Serve
cost. The JSON goes to bench/results/query_breakdown_DATE[_TAG].json.

    python -m bench.query_breakdown --photos /path/to/photos --index-count 200
"""
from __future__ import annotations

import argparse
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import httpx
import numpy as np

from bench.cpu_share import CpuShare
from bench.pyspy_stages import attribute, record, server_processes
from bench.serve_stack import ServeStack, add_run_args, finish_run, start_run

WARM_UP = 5
K = 10


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m bench.query_breakdown", description=__doc__.splitlines()[0])
    ap.add_argument("--nodes", type=int, default=2, help="shard nodes (one shard each)")
    ap.add_argument("--profile-seconds", type=float, default=20.0, help="py-spy window (queries run inside it)")
    ap.add_argument("--rate", type=int, default=100, help="py-spy samples per second")
    ap.add_argument("--timed", type=int, default=30, help="queries timed stage by stage in this process")
    add_run_args(ap)
    return ap.parse_args(argv)


def _pct(ms: list[float]) -> dict:
    a = np.asarray(ms, dtype=float)
    return {"p50_ms": round(float(np.median(a)), 2), "p99_ms": round(float(np.percentile(a, 99)), 2),
            "mean_ms": round(float(a.mean()), 2), "n": int(a.size)}


def client_queries(url: str, images: list[bytes], seconds: float) -> dict:
    """One client, one image query at a time for ``seconds`` -> wall and ``took_ms`` figures."""
    wall, took = [], []
    with httpx.Client(base_url=url, timeout=60) as http:
        t_end = time.perf_counter() + seconds
        while time.perf_counter() < t_end:
            data = images[len(wall) % len(images)]
            t0 = time.perf_counter()
            r = http.post("/v1/search", files={"file": ("q.jpg", data, "image/jpeg")}, data={"k": str(K)})
            wall.append((time.perf_counter() - t0) * 1000)
            r.raise_for_status()
            took.append(float(r.json()["took_ms"]))
    return {"queries": len(wall), "wall": _pct(wall), "took_ms": _pct(took)}


def profile_server(url: str, images: list[bytes], args, work: Path) -> dict:
    """Sequential image queries inside a py-spy window over every server process."""
    pids = server_processes()
    share = CpuShare()
    spies = record(pids, args.profile_seconds, args.rate, work / "pyspy")
    time.sleep(1.0)  # py-spy attaches
    client = client_queries(url, images, max(1.0, args.profile_seconds - 3.0))
    for spy in spies:
        spy.wait()
    cpu = attribute(work / "pyspy", args.rate, client["queries"])
    return {"client": client, "processes": sorted(pids.values()), "cpu_share": share.stop(), **cpu}


def encoder_threads(pids: dict[int, str]) -> int:
    """OMP_NUM_THREADS of the process that encodes, the encoder replica or the ingress (Ray sets
    it from the replica's CPUs), else 1."""
    for pid, role in sorted(pids.items(), key=lambda kv: kv[1] != "encoder"):
        if role not in ("encoder", "ingress"):
            continue
        try:
            env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except OSError:
            break
        for kv in env:
            if kv.startswith(b"OMP_NUM_THREADS="):
                return int(kv.split(b"=", 1)[1] or 1)
    return 1


class TimedPath:
    """The server's query path, step by step, in this process (see the module docstring)."""

    def __init__(self, index_dir: str, threads: int):
        import torch
        from encoders.registry import get_encoder
        from rayapp.cluster import confidence_curves, get_shards
        from rayapp.config import load_config
        from rayapp.router import ShardRouter
        torch.set_num_threads(threads)
        self.cfg = load_config(None, overrides={"storage": {"index_dir": index_dir}})
        e = self.cfg.encoder
        self.encoder = get_encoder(e.name, weights=e.weights, device="cpu", runtime=e.runtime)
        self.shards = get_shards(self.cfg)
        self.router = ShardRouter(self.shards, timeout_s=self.cfg.serve.shard_timeout_s,
                                  ref_views=len(self.cfg.storage.ref_views),
                                  ref_view_cost=self.cfg.query.ref_view_cost)
        self.curve = confidence_curves(self.cfg).get("image")

    def query(self, data: bytes) -> dict[str, float]:
        """One image query through every step -> wall ms per step."""
        from encoders.decode import load_image
        from encoders.keypoints import extract_query
        from encoders.tta import query_variants
        from rayapp.ranking import with_confidence
        e, t = self.cfg.query, {}
        img = _timed(t, "decode", load_image, data, self.cfg.encoder.max_pixels)
        arrays, names = _timed(t, "views", query_variants, img, self.encoder.preprocess, e.tta, e.content)
        codes, weights, vectors = _timed(t, "encode", self.encoder.encode_vectors, np.concatenate(arrays))
        keypoints = _timed(t, "keypoints", extract_query, img)
        depth, fetch = max(0, int(e.verify)), max(K, int(e.verify))
        views = [(0, name, cost) for name, cost in zip(names, e.view_costs(names).tolist())]
        rows, _ = _timed(t, "fan-out, shard search and merge", self.router.search, codes, fetch, None, False,
                         weights if e.rank != "hamming" else None, vectors if e.rank == "vector" else None,
                         views)
        hits = rows[0]
        hits = _timed(t, "verification (with its fan-out)", self.router.verify, hits, keypoints, depth)
        hits = _timed(t, "confidence", with_confidence, hits[:K], self.curve, 0.0)
        _timed(t, "serialisation", _render, hits, codes[0])
        return t

    def hops(self, images: list[bytes], n: int) -> dict:
        """Wall ms of one Ray round trip to a shard (``ping``) and, where the encoder is a
        replica of its own, of its whole ``encode_image`` through its Serve handle (decode to
        keypoints, one hop); None where the ingress encodes."""
        import ray
        from ray import serve
        try:
            handle = serve.get_deployment_handle("Encoder", app_name="neardup")
        except Exception:  # noqa: BLE001 - no Encoder deployment: the ingress encodes
            handle = None
        ping, call = [], []
        for i in range(WARM_UP + n):
            t0 = time.perf_counter()
            ray.get(self.shards[i % len(self.shards)].ping.remote())
            t1 = time.perf_counter()
            if handle is not None:
                handle.encode_image.remote(images[i % len(images)], True).result()
            if i >= WARM_UP:
                ping.append((t1 - t0) * 1000)
                call.append((time.perf_counter() - t1) * 1000)
        return {"shard ping": _pct(ping), "encoder replica call": _pct(call) if handle else None}


def _timed(times: dict, name: str, fn, *args):
    t0 = time.perf_counter()
    out = fn(*args)
    times[name] = (time.perf_counter() - t0) * 1000
    return out


def _render(hits: list, code: np.ndarray) -> bytes:
    """The /v1/search answer as FastAPI renders it (jsonable_encoder, then JSONResponse)."""
    from fastapi.encoders import jsonable_encoder
    from fastapi.responses import JSONResponse
    from encoders.base import code_to_hex
    payload = {"results": [h.to_json() if hasattr(h, "to_json") else h for h in hits], "partial": False,
               "missing_shards": [], "code": code_to_hex(code), "took_ms": 0.0}
    return JSONResponse(content=jsonable_encoder(payload)).body


def time_stages(path: TimedPath, images: list[bytes], n: int) -> dict:
    """P50/P99/mean wall ms of every step over ``n`` queries (after a warm-up)."""
    times: dict[str, list[float]] = defaultdict(list)
    for i in range(WARM_UP + n):
        t = path.query(images[i % len(images)])
        if i >= WARM_UP:
            for k, v in t.items():
                times[k].append(v)
    return {k: _pct(v) for k, v in times.items()}


def critical_path_ms(stages: dict) -> float:
    """The server's critical path from the timed P50s: keypoints run beside the encoding."""
    p = {k: v["p50_ms"] for k, v in stages.items()}
    parallel = max(p["encode"], p["keypoints"])
    return round(sum(v for k, v in p.items() if k not in ("encode", "keypoints")) + parallel, 2)


def run(args: argparse.Namespace) -> dict:
    """Profile the served path, then time its steps here -> the result document."""
    begin = start_run("query_breakdown", args)
    images = begin.queries
    with ServeStack(args.nodes) as stack:
        indexed = stack.index(begin.photos)
        client_queries(stack.url, images, 2.0)  # warm-up
        served = profile_server(stack.url, images, args, Path(tempfile.mkdtemp(prefix="nd-breakdown-")))
        threads = encoder_threads(server_processes())
        path = TimedPath(str(stack.work / "index"), threads)
        share = CpuShare()
        stages = time_stages(path, images, args.timed)
        stages_share = share.stop()
        hops = path.hops(images, min(args.timed, 20))
    on_path = critical_path_ms(stages)
    wall = served["client"]["wall"]["p50_ms"]
    return {**begin.header, "indexed_images": indexed, "torch_threads": threads, "served": served,
            "timed_stages": stages, "timed_stages_cpu_share": stages_share, "hops": hops,
            "timed_critical_path_p50_ms": on_path, "client_wall_p50_ms": wall, "hops_http_and_serve_by_difference_ms": round(wall - on_path, 2)}


def table(result: dict) -> str:
    """A Markdown table: the client's and the server's totals, the encoder replica's call and the
    shard ping, then each stage's timed wall P50 beside its CPU per query in the server."""
    cpu = result["served"]["cpu_ms_per_query_by_stage"]
    client, hops = result["served"]["client"], result["hops"]
    rows = ["| part of one image query | wall P50 ms | CPU ms/query in the server (py-spy) |", "|---|---|---|",
            f"| client: HTTP request to answer | {client['wall']['p50_ms']} | "
            f"{result['served']['cpu_ms_per_query_total']} (all processes) |",
            f"| server: `took_ms` (ingress) | {client['took_ms']['p50_ms']} | |",
            f"| encoder replica call through Serve (decode to keypoints) | "
            f"{(hops['encoder replica call'] or {}).get('p50_ms', 'none: the ingress encodes')} | |",
            f"| Ray round trip to a shard (`ping`) | {hops['shard ping']['p50_ms']} | |"]
    names = {"fan-out, shard search and merge": ("fan-out", "shard search", "merge and rank"),
             "verification (with its fan-out)": ("verification",)}
    for stage, s in result["timed_stages"].items():
        spent = sum(cpu.get(n, 0.0) for n in names.get(stage, (stage,)))
        rows.append(f"| {stage} | {s['p50_ms']} | {round(spent, 1)} |")
    for stage in ("request parsing", "encoder hop", "http proxy", "serve/ray other"):
        rows.append(f"| {stage} | | {cpu.get(stage, 0.0)} |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    result = run(args)
    out = finish_run("query_breakdown", args, {**result, "table_md": table(result)})
    print(table(result))
    print(f"client wall P50 {result['client_wall_p50_ms']} ms; timed critical path "
          f"{result['timed_critical_path_p50_ms']} ms; wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
