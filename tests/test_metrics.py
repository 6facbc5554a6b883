"""Metrics: no-ops without Ray; with Ray, an ingest job and real HTTP requests show up as
``ray_neardup_*`` series on Ray's Prometheus endpoint (what the dashboard reads)."""
from __future__ import annotations

import re
import shutil
import time
import uuid
from pathlib import Path

import httpx
import pytest
import ray
from ray import serve

from rayapp import metrics
from rayapp.config import Config
from tests.helpers_net import free_port

SAMPLES = Path(__file__).resolve().parents[1] / "rayapp" / "samples"
#: Ray's metrics export interval here (its floor; the default is 10 s), set through the
#: environment so that every Ray process has it, the metrics agent too: series show up, and a
#: gauge that is not kept alive drops (two intervals after its last export), within seconds
EXPORT_S = 1.0
POLL_S = 0.5


def _scrape(port: int) -> str:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
    except httpx.HTTPError:
        return ""


def _series(text: str) -> dict[str, list[tuple[str, float]]]:
    """name -> [(labels, value)] for the neardup series of a Prometheus text scrape."""
    out: dict[str, list[tuple[str, float]]] = {}
    for m in re.finditer(r"^(ray_neardup_\w+)(\{[^}]*\})? (\S+)$", text, re.M):
        out.setdefault(m.group(1), []).append((m.group(2) or "", float(m.group(3))))
    return out


def test_exported_names():
    names = metrics.exported_names()
    assert "ray_neardup_query_latency_ms_count" in names
    assert "ray_neardup_wal_fsync_ms_count" in names
    assert {"ray_neardup_queries_total", "ray_neardup_errors_total", "ray_neardup_shard_codes",
            "ray_neardup_shard_memory_bytes", "ray_neardup_ingest_images_total",
            "ray_neardup_ingest_images_per_s"} <= set(names)


def test_recording_without_ray_is_a_no_op():
    assert not ray.is_initialized()
    metrics.observe_query("/v1/search", 0.01, 200)
    metrics.count_error("bad_image")
    metrics.set_shard_stats(0, 10, 1000)
    metrics.observe_wal_fsync(0, 0.002)
    metrics.count_ingested(5, 1)
    metrics.set_ingest_rate(12.5)


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    port = free_port()
    with pytest.MonkeyPatch.context() as env:
        env.setenv("RAY_metrics_report_interval_ms", str(int(EXPORT_S * 1000)))
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, _metrics_export_port=port)
    cfg = Config()
    cfg.encoder.name = "pdq"
    cfg.storage.index_dir = str(tmp_path_factory.mktemp("metrics-index"))
    cfg.storage.num_shards = 1
    cfg.storage.index_kind = "flat"
    cfg.storage.namespace = f"neardup-metrics-{uuid.uuid4().hex[:8]}"
    cfg.serve.port = free_port()
    try:
        yield cfg, port
    finally:
        from rayapp.cluster import kill_shards
        try:
            serve.shutdown()
            kill_shards(cfg)
        finally:
            ray.shutdown()


@pytest.mark.ray  # its own Ray: a metrics export port, counters no other test has touched
def test_metrics_reach_the_prometheus_endpoint(served, tmp_path):
    from rayapp.ingest import IngestOptions, run_ingest
    from rayapp.lifecycle import run_server
    cfg, port = served
    src = tmp_path / "src"
    src.mkdir()
    for f in sorted(SAMPLES.glob("*.jpg"))[:6]:
        shutil.copy(f, src / f.name)
    report = run_ingest(cfg, [str(src)], IngestOptions(progress=False, batch_size=3))
    ingest_done = time.monotonic()
    assert report.indexed == 6

    url = run_server(cfg)
    with httpx.Client(base_url=url, timeout=30) as client:
        image = (src / sorted(p.name for p in src.iterdir())[0]).read_bytes()
        assert client.post("/v1/items", json={"id": "added-by-http", "code": "ab" * 32}).status_code == 200
        found = client.post("/v1/search", files={"file": ("q.jpg", image, "image/jpeg")})
        assert found.status_code == 200 and found.json()["results"][0]["distance"] == 0
        assert client.post("/v1/search", content=b"not an image",
                           headers={"content-type": "image/jpeg"}).status_code in (400, 422)
        assert client.get("/v1/status").json()["total_count"] == 7

    want = set(metrics.exported_names())
    deadline = time.monotonic() + 90
    while True:
        series = _series(_scrape(port))
        if want <= set(series) or time.monotonic() > deadline:
            break
        time.sleep(POLL_S)
    assert want <= set(series), f"missing: {sorted(want - set(series))}"

    def values(name: str, label: str) -> list[float]:
        return [v for labels, v in series[name] if label in labels]

    assert sum(values("ray_neardup_query_latency_ms_count", 'route="/v1/search"')) >= 2
    assert sum(values("ray_neardup_queries_total", 'status="200"')) >= 2
    assert sum(values("ray_neardup_errors_total", 'type="bad_image"')) >= 1
    assert sum(values("ray_neardup_wal_fsync_ms_count", 'shard="0"')) >= 2
    assert sum(values("ray_neardup_ingest_images_total", 'outcome="indexed"')) == 6
    # The shard actor publishes its count every half export interval (and /v1/status sets it
    # from the ingress): wait until every series shows the last add. Codes, not images: the 6
    # ingested images are each stored with their centre crop, plus the one added by code.
    deadline = time.monotonic() + 60
    while set(values("ray_neardup_shard_codes", 'shard="0"')) != {13.0} \
            and time.monotonic() < deadline:
        time.sleep(POLL_S)
        series = _series(_scrape(port))
    assert set(values("ray_neardup_shard_codes", 'shard="0"')) == {13.0}
    assert values("ray_neardup_shard_memory_bytes", 'shard="0"')[0] > 0

    # Ray drops a gauge two export intervals after its last set: long past that, the driver has
    # kept its gauges alive, and a finished ingest reads as rate 0
    time.sleep(max(0.0, ingest_done + 10 * EXPORT_S - time.monotonic()))
    series = _series(_scrape(port))
    assert values("ray_neardup_ingest_images_per_s", "") == [0.0]
