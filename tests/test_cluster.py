"""Ray on several nodes. First `ray job submit` of the ingest job to a `ray start` head, then
a simulated multi-node cluster (ray.cluster_utils.Cluster: a head plus 3 shard nodes): one
shard actor per node, node loss and return, SIGKILLed shard processes during concurrent
writes, per-node metrics, and an ingest job killed mid-way then run again.

One simulated cluster for the module (starting nodes is slow on 2 cores); its tests run in
order and share the shards of ``cfg``.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import httpx
import numpy as np
import pyarrow as pa
import pytest
import ray

from bench.chaos import ChaosParams, run_chaos
from rayapp.cluster import (INDEX_META, add_shard_node, ensure_shards, get_shards, kill_shards,
                            shard_dir, shard_name, start_local_cluster, stop_local_cluster)
from rayapp.config import Config
from rayapp.hits import Hit
from rayapp.ingest import read_manifest
from rayapp.router import ShardRouter

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = ROOT / "rayapp" / "samples"
pytestmark = pytest.mark.ray  # several nodes (ray.cluster_utils.Cluster) and `ray start`: its own Ray

BITS = 256  # pdq
N = 300


@pytest.fixture(scope="module")
def cluster():
    c = start_local_cluster(shard_nodes=3, head_cpus=2)
    try:
        yield c
    finally:
        stop_local_cluster(c)


@pytest.fixture(scope="module")
def cfg(cluster, tmp_path_factory) -> Config:
    c = Config()
    c.encoder.name = "pdq"
    c.storage.index_dir = str(tmp_path_factory.mktemp("cluster-index"))
    c.storage.namespace = f"neardup-cluster-{uuid.uuid4().hex[:8]}"
    c.storage.snapshot_every = 200  # snapshots happen during the tests, and kills may hit them
    yield c
    kill_shards(c)


@pytest.fixture(scope="module")
def data():
    codes = np.random.default_rng(11).integers(0, 256, (N, BITS // 8), dtype=np.uint8)
    return [f"item-{i:04d}" for i in range(N)], codes


def _stats(handles, timeout=60) -> list[dict]:
    return ray.get([h.stats.remote() for h in handles], timeout=timeout)


def _actor_info(handle) -> dict:
    return ray._private.state.actors(handle._actor_id.hex())


def _node(cluster, node_id: str):
    return next(n for n in cluster.worker_nodes if n.node_id == node_id)


def _count(handles) -> int:
    return sum(s["count"] for s in _stats(handles))


def _free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


@pytest.mark.slow
def test_ray_job_submit_runs_the_ingest_job():
    """The documented commands (docs/cluster.md): `ray start --head` with a shard resource,
    then `ray job submit --working-dir . -- python -m rayapp.ingest ...` (a glob source).
    Runs before the module's simulated cluster starts; stops only the head it started."""
    tmp = Path(tempfile.mkdtemp(prefix="ndj", dir="/tmp"))  # short: Ray's socket paths are capped
    bin_dir = Path(sys.executable).parent
    gcs, dash, client, agent, met = _free_ports(5)
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
           "RAY_AUTH_MODE": "disabled"}  # same mode for head and client, token file or not
    env.pop("RAY_ADDRESS", None)
    head = subprocess.Popen(
        [str(bin_dir / "ray"), "start", "--head", "--block", "--temp-dir", str(tmp / "ray"),
         "--port", str(gcs), "--dashboard-host", "127.0.0.1", "--dashboard-port", str(dash),
         "--ray-client-server-port", str(client), "--dashboard-agent-listen-port", str(agent),
         "--metrics-export-port", str(met), "--num-cpus", "2", "--resources", '{"shard": 1}',
         "--disable-usage-stats"],
        env=env, stdout=open(tmp / "head.log", "w"), stderr=subprocess.STDOUT, cwd=tmp)
    try:
        address = f"http://127.0.0.1:{dash}"
        deadline = time.monotonic() + 120
        while True:  # the job API answers once the dashboard is up
            try:
                if httpx.get(f"{address}/api/version", timeout=5).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert head.poll() is None, (tmp / "head.log").read_text()
            assert time.monotonic() < deadline, "ray start --head: no dashboard in 120 s"
            time.sleep(0.2)
        job = subprocess.run(
            [str(bin_dir / "ray"), "job", "submit", "--address", address, "--working-dir", ".",
             "--", "python", "-m", "rayapp.ingest", "rayapp/samples/pypi-*.jpg", "--index-dir",
             str(tmp / "index"), "--encoder", "pdq", "--quiet"],
            cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
        out = job.stdout + job.stderr
        assert job.returncode == 0, out
        assert re.search(r"listed 5, skipped 0 already indexed, indexed 5, errors 0", out), out
        assert "succeeded" in out
        assert json.loads((tmp / "index" / INDEX_META).read_text())["num_shards"] == 1
        job = subprocess.run(  # the dedup job over that index, through the same job API
            [str(bin_dir / "ray"), "job", "submit", "--address", address, "--working-dir", ".",
             "--", "python", "-m", "rayapp.dedup", "--index-dir", str(tmp / "index"),
             "--out", str(tmp / "dedup"), "--quiet"],
            cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
        out = job.stdout + job.stderr
        assert job.returncode == 0 and "succeeded" in out, out
        assert re.search(r"\d+ groups among 5 images", out), out
        assert (tmp / "dedup" / "groups.csv").is_file() and (tmp / "dedup" / "report.html").is_file()
    finally:
        head.kill()  # with --block, every process the head started shares its fate
        head.wait(timeout=60)
        shutil.rmtree(tmp, ignore_errors=True)


def test_one_shard_actor_per_shard_node(cluster, cfg, data):
    ids, codes = data
    handles = ensure_shards(cfg)
    assert len(handles) == 3
    meta = json.loads((Path(cfg.storage.index_dir) / INDEX_META).read_text())
    assert meta["num_shards"] == 3 and meta["bits"] == BITS and meta["encoder"] == "pdq"

    stats = _stats(handles)
    shard_nodes = {n.node_id for n in cluster.worker_nodes}
    placed = [s["node_id"] for s in stats]
    assert len(set(placed)) == 3 and set(placed) == shard_nodes  # one per node, none on the head
    for i, (h, st) in enumerate(zip(handles, stats)):
        assert st["shard_id"] == i and st["state"] == "ready"
        assert st["data_dir"] == shard_dir(cfg, i)
        assert (Path(st["data_dir"]) / "shard.json").is_file()
        info = _actor_info(h)
        assert info["Name"] == shard_name(i) and info["IsDetached"] is True
        assert info["State"] == "ALIVE" and info["Address"]["NodeID"] == st["node_id"]

    router = ShardRouter(handles, timeout_s=10)
    assert router.add(ids, codes, [{"n": i} for i in range(N)])["added"] == N
    for i, h in enumerate(handles):
        assert ray.get(h.contains.remote(ids)) == [router.shard_for(x) == i for x in ids]

    # Detached and named: a new driver finds the same actors, with their data.
    address = cluster.address
    ray.shutdown()
    ray.init(address=address, log_to_driver=False, logging_level="WARNING")
    found = get_shards(cfg)
    assert [_stats([h])[0]["pid"] for h in found] == [s["pid"] for s in stats]
    assert _count(found) == N
    again = ensure_shards(cfg)  # idempotent: the same actors, not new ones
    assert [h._actor_id for h in again] == [h._actor_id for h in handles]


def test_node_loss_gives_partial_answers_and_its_return_restores_them(cluster, cfg, data):
    ids, codes = data
    handles = get_shards(cfg)
    router = ShardRouter(handles, timeout_s=2.0)
    before = _stats(handles)
    victim = 1
    cluster.remove_node(_node(cluster, before[victim]["node_id"]))

    t0 = time.monotonic()
    results, missing = router.search(codes[:20], k=3)
    assert missing == [victim] and time.monotonic() - t0 < 10
    for q, hits in enumerate(results):
        owner = router.shard_for(ids[q])
        assert all(h.shard != victim for h in hits)
        if owner != victim:  # what the live shards hold is still found exactly
            assert hits[0] == Hit(ids[q], 0, shard=owner)
    t0 = time.monotonic()
    assert router.search(codes[:1], k=3)[1] == [victim] and time.monotonic() - t0 < 10
    assert router.stats()[victim]["state"] == "unavailable"

    # The shard count is fixed by the index: a restart (Serve, a job) during the outage still
    # routes over 3 shards and does not hang waiting for the missing one.
    t0 = time.monotonic()
    assert len(ensure_shards(cfg, wait_s=2.0)) == 3
    assert time.monotonic() - t0 < 30

    # A node with the same disk joins: the actor restarts there and answers are complete again.
    new_node = add_shard_node(cluster)
    deadline = time.monotonic() + 120
    while True:
        results, missing = router.search(codes[:20], k=1)
        if not missing or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert missing == [], "shard did not come back within 120 s"
    assert [hits[0].id for hits in results] == ids[:20]
    after = _stats(handles)
    assert after[victim]["node_id"] == new_node.node_id
    assert [s["count"] for s in after] == [s["count"] for s in before]
    assert _actor_info(handles[victim])["NumRestarts"] >= 1
    assert sum(ray.get([h.contains.remote(ids) for h in handles]), []).count(True) == N


def test_sigkill_during_concurrent_adds_loses_nothing(cluster, cfg, data):
    ids, _ = data
    handles = get_shards(cfg)
    nodes = [s["node_id"] for s in _stats(handles)]
    report = run_chaos(handles, BITS, ChaosParams(kills=3, writers=3, batch=20, seed=5),
                       prefix="t-chaos-", say=lambda m: None)
    assert report["kills"] == 3 and report["kills_with_writes_in_flight"] >= 1
    assert report["acknowledged_adds"] > 0 and report["acknowledged_deletes"] > 0
    assert (report["lost_adds"], report["resurrected_deletes"], report["changed_codes"]) == (0, 0, 0)
    assert report["code_checks"] > 0
    after = _stats(handles)
    assert [s["node_id"] for s in after] == nodes  # restarted in place, on its own node
    assert sum(ray.get([h.contains.remote(ids) for h in handles]), []).count(True) == N


def _scrape(port: int) -> str:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
    except httpx.HTTPError:
        return ""


def test_shard_metrics_are_exported_by_each_shard_node(cluster, cfg):
    handles = get_shards(cfg)
    router = ShardRouter(handles, timeout_s=10)
    fresh = [f"metrics-{i}" for i in range(30)]  # a WAL fsync in every (restarted) shard process
    router.add(fresh, np.zeros((30, BITS // 8), np.uint8))
    assert {router.shard_for(i) for i in fresh} == {0, 1, 2}
    ports = {n["NodeID"]: n["MetricsExportPort"] for n in ray.nodes() if n["Alive"]}
    want = {s["node_id"]: s["shard_id"] for s in _stats(handles)}
    pattern = {node: re.compile(r'^ray_neardup_(wal_fsync_ms_count|shard_codes)\{[^}]*shard="%d"'
                                % shard, re.M) for node, shard in want.items()}
    seen: dict[str, set] = {node: set() for node in want}
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        for node in want:
            seen[node] |= set(pattern[node].findall(_scrape(ports[node])))
        if all(v == {"wal_fsync_ms_count", "shard_codes"} for v in seen.values()):
            break
        time.sleep(2)
    assert all(v == {"wal_fsync_ms_count", "shard_codes"} for v in seen.values()), seen


def _kill_once_written(cmd: list[str], env: dict, folder: Path, pattern: str, log: Path) -> None:
    """Run ``cmd`` and SIGKILL it as soon as a file matching ``pattern`` appears in ``folder``."""
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 240
        while not list(folder.glob(pattern)):
            assert proc.poll() is None, f"the job ended before it was killed:\n{log.read_text()}"
            assert time.monotonic() < deadline, f"no {pattern} within 240 s"
            time.sleep(0.01)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait(timeout=60)


def test_ingest_killed_midway_then_rerun_is_exact(cluster, tmp_path):
    index_dir = tmp_path / "index"
    ns = f"neardup-ingest-{uuid.uuid4().hex[:8]}"
    env = {**os.environ, "NEARDUP_STORAGE_PLACEMENT": "local", "NEARDUP_STORAGE_NAMESPACE": ns,
           "PYTHONPATH": str(ROOT)}
    env.pop("RAY_ADDRESS", None)
    cmd = [sys.executable, "-m", "rayapp.ingest", str(SAMPLES), "--index-dir", str(index_dir),
           "--encoder", "pdq", "--shards", "2", "--address", cluster.address,
           "--batch-size", "4", "--flush-rows", "4", "--quiet"]
    images = len([p for p in SAMPLES.iterdir() if p.suffix.lower() in (".jpg", ".png")])
    manifest = index_dir / "manifest"

    _kill_once_written(cmd, env, manifest, "part-*.parquet", tmp_path / "ingest.log")
    done_before = read_manifest(str(manifest)).num_rows
    assert 0 < done_before < images, "the job was not killed mid-way"

    rerun = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=400)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    assert f"listed {images}, skipped {done_before} already indexed" in rerun.stdout

    table = read_manifest(str(manifest))
    ok = table.filter(pa.compute.is_null(table["error"]))
    assert table.num_rows == images and len(set(table["id"].to_pylist())) == images
    cfg2 = Config()
    cfg2.storage.index_dir, cfg2.storage.namespace = str(index_dir), ns
    shards = get_shards(cfg2)
    try:
        assert len(shards) == 2 and _count(shards) == ok.num_rows
        router = ShardRouter(shards, timeout_s=30)
        for row in ok.slice(0, 5).to_pylist():
            assert router.get(row["id"])["code"] == row["code"].hex()
    finally:
        kill_shards(cfg2)


def test_dedup_job_killed_midway_then_rerun_has_every_edge_once(cluster, tmp_path):
    """The dedup job on the simulated cluster (2 shards, deephash, real photos and edited copies):
    killed once its first page is written, then run again, it finishes the other pages only and
    every matching pair appears once; the copies are grouped with their originals."""
    from PIL import Image
    from tests.helpers_images import edited_copy
    photos = tmp_path / "photos"
    photos.mkdir()
    originals = sorted(SAMPLES.glob("*.jpg"))[:10]
    for f in originals:
        shutil.copy(f, photos / f.name)
    for f in originals[:3]:
        with Image.open(f) as im:
            edited_copy(im, "jpeg").save(photos / f"{f.stem}__copy.jpg", quality=90)
    ns = f"neardup-dedup-{uuid.uuid4().hex[:8]}"
    env = {**os.environ, "NEARDUP_STORAGE_PLACEMENT": "local", "NEARDUP_STORAGE_NAMESPACE": ns,
           "PYTHONPATH": str(ROOT)}
    env.pop("RAY_ADDRESS", None)
    index_dir, out = tmp_path / "index", tmp_path / "dedup"
    ingest = subprocess.run([sys.executable, "-m", "rayapp.ingest", str(photos), "--index-dir", str(index_dir),
                             "--shards", "2", "--address", cluster.address, "--quiet"],
                            cwd=ROOT, env=env, capture_output=True, text=True, timeout=400)
    assert ingest.returncode == 0, ingest.stdout + ingest.stderr
    cmd = [sys.executable, "-m", "rayapp.dedup", "--index-dir", str(index_dir), "--out", str(out),
           "--batch", "1", "--address", cluster.address, "--quiet"]
    _kill_once_written(cmd, env, out / "parts", "*.edges.parquet", tmp_path / "dedup.log")
    pages = len(json.loads((out / "parts" / "plan.json").read_text())["pages"])
    done_before = len(list((out / "parts").glob("*.edges.parquet")))
    assert 0 < done_before < pages, "the job was not killed mid-way"

    rerun = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=400)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    assert len(list((out / "parts").glob("*.edges.parquet"))) == pages
    import pyarrow.parquet as pq
    edges = pq.read_table(out / "edges.parquet").to_pylist()
    pairs = [(e["a"], e["b"]) for e in edges]
    assert len(pairs) == len(set(pairs))
    for f in originals[:3]:
        assert (f.name, f"{f.stem}__copy.jpg") in pairs or (f"{f.stem}__copy.jpg", f.name) in pairs
    assert "groups among 13 images" in rerun.stdout
    cfg2 = Config()
    cfg2.storage.index_dir, cfg2.storage.namespace = str(index_dir), ns
    kill_shards(cfg2)
