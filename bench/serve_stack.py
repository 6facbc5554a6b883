"""A real ``neardup serve`` on a simulated multi-node Ray cluster, and the bare Serve floor beside it.

The end-to-end benchmarks (``bench.serve_load``, ``bench.query_breakdown``) need the product as a
user runs it: ``neardup serve`` in its own process, attached to a cluster with one shard actor per
shard node (``rayapp.cluster.start_local_cluster``, as tests/test_cluster.py), filled over HTTP with
photos, and queried by edited copies of them. :class:`ServeStack` brings that up and down.

The floor (:mod:`bench.serve_floor`) is deployed into the same Serve instance, so both answer
through the same HTTP proxy and port, on the same nodes, in the same run.
"""
from __future__ import annotations

import argparse
import io
import os
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from bench.common import (REPO_ROOT, RESULTS_DIR, file_digests, loadavg, machine_info, today, utc_now,
                          write_json)

#: The ingress's per-client rate limit would answer 429 to a load generator on one address; the
#: benchmark measures the query path, so the limit is lifted far above any rate it offers.
BENCH_ENV = {"NEARDUP_SERVE_RATE_LIMIT_PER_S": "1000000"}
READY_TIMEOUT_S = 600.0
#: the files of the query path: their digests pin what a result measured when the tree is dirty
PATH_FILES = ["rayapp/serve.py", "rayapp/api.py", "rayapp/http.py", "rayapp/encoder_deployment.py",
              "rayapp/searcher.py", "rayapp/router.py", "rayapp/ranking.py", "rayapp/hits.py",
              "rayapp/shard_pool.py", "shards/actor.py", "encoders/tta.py", "encoders/keypoints.py"]
ADD_BATCH = 8


def wait_for_quiet(max_load: float, max_wait_s: float, poll_s: float = 60.0, say=print) -> dict:
    """Wait until the 1-minute load average is under ``max_load`` (other work on a shared machine
    skews every figure), polling every ``poll_s``, for at most ``max_wait_s`` -> what happened:
    the load seen at each poll, the seconds waited and whether it became quiet."""
    t0, seen = time.monotonic(), []
    while True:
        load = os.getloadavg()[0]
        seen.append(round(load, 2))
        if load < max_load or time.monotonic() - t0 >= max_wait_s:
            break
        say(f"load {load:.2f} >= {max_load}: waiting")
        time.sleep(poll_s)
    return {"max_load": max_load, "waited_s": round(time.monotonic() - t0), "loads": seen,
            "quiet": seen[-1] < max_load}


def add_run_args(ap: argparse.ArgumentParser) -> None:
    """The flags every end-to-end benchmark shares: what to index and query, waiting for a quiet
    machine, and where the result goes."""
    ap.add_argument("--photos", default=str(REPO_ROOT / "rayapp" / "samples"), help="folder of photos to index")
    ap.add_argument("--index-count", type=int, default=200, help="photos indexed (the first N by name)")
    ap.add_argument("--queries", type=int, default=32, help="distinct edited-copy queries, sent in turn")
    ap.add_argument("--wait-quiet", type=float, default=None, metavar="LOAD",
                    help="first wait (up to --wait-max minutes) for the 1-minute load to fall under LOAD")
    ap.add_argument("--wait-max", type=float, default=40.0, help="minutes")
    ap.add_argument("--out-dir", default=str(RESULTS_DIR))
    ap.add_argument("--tag", default="")
    ap.add_argument("--note", action="append", default=[], help="a note stored in the JSON (repeatable)")


@dataclass
class RunStart:
    """What a run starts from: its photos and queries, and the header of its result document."""

    photos: list[Path]
    queries: list[bytes]
    header: dict


def start_run(name: str, args: argparse.Namespace) -> RunStart:
    """Wait for a quiet machine if asked (noting it when it never came), pick the photos and
    make the queries -> the run's inputs and the header of its result: machine, git revision,
    digests of the query path's files, parameters, notes, load."""
    quiet = wait_for_quiet(args.wait_quiet, args.wait_max * 60) if args.wait_quiet else None
    notes = list(args.note)
    if quiet and not quiet["quiet"]:
        notes.append(f"the machine did not become quiet (1-minute load < {args.wait_quiet}) within "
                     f"{args.wait_max:g} minutes; measured anyway at load {quiet['loads'][-1]}")
    photos = list_photos(Path(args.photos), args.index_count)
    queries = edited_queries(photos, args.queries)
    header = {"benchmark": name, "date": utc_now(), "machine": machine_info(),
              "source_digests": file_digests(PATH_FILES),
              "params": {k: v for k, v in vars(args).items() if k not in ("note", "out_dir")},
              "photos": {"folder": str(args.photos), "indexed": len(photos), "queries": len(queries)},
              "load_before": loadavg(), "quiet_wait": quiet, "notes": notes}
    return RunStart(photos, queries, header)


def finish_run(name: str, args: argparse.Namespace, result: dict) -> Path:
    """Stamp the end time and load, write ``out_dir/NAME_DATE[_TAG].json`` -> its path."""
    result.update({"finished": utc_now(), "load_after": loadavg()})
    return write_json(Path(args.out_dir) / f"{name}_{today()}{'_' + args.tag if args.tag else ''}.json", result)


def free_port() -> int:
    """A TCP port nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def list_photos(folder: Path, count: int) -> list[Path]:
    """The first ``count`` JPEG/PNG files of ``folder`` in name order (a fixed, repeatable set)."""
    photos = sorted(p for p in Path(folder).iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    if not photos:
        raise ValueError(f"no photos in {folder}")
    return photos[:count]


def edited_queries(photos: list[Path], n: int) -> list[bytes]:
    """``n`` edited copies (mirror, small turns, JPEG re-compression) of the photos, as JPEG bytes:
    queries that have a true near-duplicate in the index, so every stage of the path runs."""
    from PIL import Image, ImageOps
    out = []
    for i in range(n):
        with Image.open(photos[i % len(photos)]) as im:
            im = im.convert("RGB")
            im = ImageOps.mirror(im) if i % 2 else im.rotate(3 * (i % 5))
            buf = io.BytesIO()
            im.save(buf, format="JPEG", quality=80 - i % 20)
            out.append(buf.getvalue())
    return out


@dataclass
class ServeStack:
    """One simulated cluster with ``nodes`` shard nodes and a ``neardup serve`` attached to it."""

    nodes: int
    work: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="nd-serve-", dir="/tmp")))
    port: int = field(default_factory=free_port)
    #: Serve's direct ingress on every node: the product's Ingress replica listens on ``port``
    #: and the next ingress deployed (the floor's) on ``port + 1``, neither behind the proxy
    direct: bool = False
    cluster: object = None
    proc: subprocess.Popen | None = None
    timings_s: dict = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def floor_url(self) -> str:
        """Where the floor deployed beside the product answers: behind the same proxy, or with
        direct ingress on the port after the product's."""
        return f"http://127.0.0.1:{self.port + 1}" if self.direct else self.url

    def start(self) -> "ServeStack":
        """Start the cluster (this process joins it as a driver), then the server; wait for /readyz."""
        from rayapp.cluster import start_local_cluster
        t0 = time.perf_counter()
        # Ray workers (the floor's replica among them) import bench.* from this checkout
        os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")]))
        if self.direct:  # every node's processes must see it: set before the cluster starts
            from rayapp import ingress
            os.environ.update({ingress.ENABLE: "1", ingress.MIN_PORT: str(self.port),
                               ingress.MAX_PORT: str(self.port + 2), ingress.DRAIN: ingress.DRAIN_S})
        self.cluster = start_local_cluster(shard_nodes=self.nodes, head_cpus=os.cpu_count() or 2)
        self.timings_s["cluster_start"] = round(time.perf_counter() - t0, 1)
        t0 = time.perf_counter()
        self.proc = self._launch()
        self._wait_ready()
        self.timings_s["server_ready"] = round(time.perf_counter() - t0, 1)
        return self

    def _launch(self) -> subprocess.Popen:
        env = {**os.environ, **BENCH_ENV}
        env.pop("RAY_ADDRESS", None)
        cmd = [sys.executable, "-m", "rayapp.cli", "serve", "--index-dir", str(self.work / "index"),
               "--port", str(self.port), "--address", self.cluster.address, "--no-dashboard",
               "--metrics-port", "0"]
        log = open(self.work / "server.log", "ab")
        return subprocess.Popen(cmd, cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"neardup serve exited ({self.proc.returncode}); see {self.work}/server.log")
            try:
                if httpx.get(f"{self.url}/readyz", timeout=10).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"neardup serve not ready after {READY_TIMEOUT_S:g}s; see {self.work}/server.log")

    def index(self, photos: list[Path]) -> int:
        """Add the photos over HTTP (``POST /v1/items``, a few per request) -> images stored."""
        t0 = time.perf_counter()
        added = 0
        with httpx.Client(base_url=self.url, timeout=300) as http:
            for i in range(0, len(photos), ADD_BATCH):
                files = [("file", (p.name, p.read_bytes(), "image/jpeg")) for p in photos[i:i + ADD_BATCH]]
                r = http.post("/v1/items", files=files)
                r.raise_for_status()
                added += int(r.json()["added"])
        self.timings_s["index"] = round(time.perf_counter() - t0, 1)
        return added

    def codes_of(self, images: list[bytes]) -> list[str]:
        """The hex code of each image (``POST /v1/hash``): the by-code queries."""
        with httpx.Client(base_url=self.url, timeout=60) as http:
            return [http.post("/v1/hash", files={"file": ("q.jpg", b, "image/jpeg")}).json()["code"]
                    for b in images]

    def shard_node_ids(self) -> list[str]:
        """Node ids of the shard nodes (those offering the ``shard`` resource)."""
        import ray
        from rayapp.cluster import SHARD_RESOURCE
        return [n["NodeID"] for n in ray.nodes() if n.get("Alive") and n["Resources"].get(SHARD_RESOURCE)]

    def stop(self) -> None:
        """SIGTERM the server (it shuts Serve down), then stop the cluster."""
        from rayapp.cluster import stop_local_cluster
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=120)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=30)
        if self.cluster is not None:
            stop_local_cluster(self.cluster)
            self.cluster = None

    def __enter__(self) -> "ServeStack":
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc) -> None:
        self.stop()
