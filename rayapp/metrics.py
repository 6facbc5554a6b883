"""Prometheus metrics through ``ray.util.metrics``; Ray exports them to its dashboard and /metrics.

Each metric is created once per process on first use (Ray metrics need a connected worker).
Outside a Ray worker or driver every call is a silent no-op, so library code can always record.
Ray prefixes custom metrics with ``ray_`` and histograms add ``_bucket``/``_sum``/``_count``:
:func:`exported_names` lists what a Prometheus scrape of a node shows.

Where each is recorded: query latency, queries and errors in the Serve ingress; per-shard codes,
memory and WAL fsync latency in each shard actor's process (on its node); ingest counts and rate
in the ingest job's driver.

Ray exports metrics every ``metrics_report_interval_ms`` (its system config, 10 s by default) and
drops a gauge from the scrape two export intervals after its last ``set`` (Ray 2.60), so gauges
are set through :func:`_set_gauge`, which re-sets the last value of each series every half
interval (:func:`gauge_refresh_s`) from a daemon thread: a finished ingest keeps showing its
final rate (0).

Per-request records (:func:`observe_query`, :func:`count_error`, :func:`observe_wal_fsync`) are
handed to a daemon thread (:func:`_defer`) rather than recorded on the caller's event loop:
Ray's record call releases the GIL, and inside a busy Serve replica, whose other threads hold
it, waiting to get it back made one observation cost far more than the record itself, on the
path of every request (docs/performance.md).
"""
from __future__ import annotations

import queue
import threading
import time
from functools import lru_cache
from typing import Callable

import ray
from ray.util.metrics import Counter, Gauge, Histogram

LATENCY_MS_BOUNDARIES = [0.5, 1, 2, 5, 10, 20, 30, 50, 75, 100, 200, 500, 1000, 2000, 5000]
PREFIX = "ray_"  # added by Ray's exporter

#: name -> (kind, description, tag keys)
METRICS: dict[str, tuple[str, str, tuple[str, ...]]] = {
    "neardup_query_latency_ms": ("histogram", "Request latency in ms, by route.", ("route",)),
    "neardup_queries_total": ("counter", "Requests, by route and status.", ("route", "status")),
    "neardup_errors_total": ("counter", "Errors, by type.", ("type",)),
    "neardup_shard_codes": ("gauge", "Codes held by each shard.", ("shard",)),
    "neardup_shard_memory_bytes": ("gauge", "Resident bytes of each shard's index and store.",
                                   ("shard",)),
    "neardup_wal_fsync_ms": ("histogram", "WAL fsync latency in ms, by shard.", ("shard",)),
    "neardup_ingest_images_total": ("counter", "Images ingested, by outcome.", ("outcome",)),
    "neardup_ingest_images_per_s": ("gauge", "Current ingest throughput.", ()),
}
_lock = threading.Lock()
DEFAULT_EXPORT_INTERVAL_S = 10.0  # Ray's default metrics_report_interval_ms
_gauge_values: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}  # (name, tags) -> last value
_refresher: threading.Thread | None = None
_pending: queue.SimpleQueue = queue.SimpleQueue()  # (function, args) recorded by _recorder
_recorder: threading.Thread | None = None


def exported_names() -> list[str]:
    """The series names Prometheus scrapes (histograms by their ``_count`` series)."""
    return sorted(PREFIX + name + ("_count" if kind == "histogram" else "")
                  for name, (kind, _, _) in METRICS.items())


@lru_cache(maxsize=None)
def _metric(name: str):
    kind, description, tag_keys = METRICS[name]
    with _lock:
        if kind == "counter":
            return Counter(name, description=description, tag_keys=tag_keys)
        if kind == "gauge":
            return Gauge(name, description=description, tag_keys=tag_keys)
        return Histogram(name, description=description, boundaries=LATENCY_MS_BOUNDARIES,
                         tag_keys=tag_keys)


def _enabled() -> bool:
    return ray.is_initialized()


def export_interval_s() -> float:
    """How often Ray exports this process's metrics: its ``metrics_report_interval_ms``, at
    least 1 s as Ray applies it (the default when Ray is not up)."""
    try:
        return max(ray._config.metrics_report_interval_ms(), 1000) / 1000.0
    except Exception:  # noqa: BLE001 - no Ray config in this process
        return DEFAULT_EXPORT_INTERVAL_S


def gauge_refresh_s() -> float:
    """Half an export interval: every export carries each gauge, so Ray never drops one."""
    return export_interval_s() / 2


def _set_gauge(name: str, value: float, tags: dict[str, str] | None = None) -> None:
    """Set a gauge series and keep it alive (see the module docstring)."""
    global _refresher
    _metric(name).set(value, tags=tags)
    with _lock:
        _gauge_values[(name, tuple(sorted((tags or {}).items())))] = float(value)
        if _refresher is None:
            _refresher = threading.Thread(target=_refresh_gauges, name="neardup-gauges", daemon=True)
            _refresher.start()


def _refresh_gauges() -> None:
    while True:
        time.sleep(gauge_refresh_s())
        with _lock:
            series = list(_gauge_values.items())
        for (name, tags), value in series:
            if _enabled():
                try:
                    _metric(name).set(value, tags=dict(tags) or None)
                except Exception:  # noqa: BLE001 - e.g. Ray shut down in between: try again later
                    pass


def _defer(record: Callable[..., None], *args) -> None:
    """Record later, on the recorder thread (see the module docstring); started on first use."""
    global _recorder
    _pending.put((record, args))
    if _recorder is None:
        with _lock:
            if _recorder is None:
                _recorder = threading.Thread(target=_record_pending, name="neardup-metrics", daemon=True)
                _recorder.start()


def _record_pending() -> None:
    while True:
        record, args = _pending.get()
        if _enabled():
            try:
                record(*args)
            except Exception:  # noqa: BLE001 - e.g. Ray shut down in between: drop the point
                pass


def _observe_query_now(route: str, seconds: float, status: int) -> None:
    _metric("neardup_query_latency_ms").observe(seconds * 1000.0, tags={"route": route})
    _metric("neardup_queries_total").inc(tags={"route": route, "status": str(status)})


def observe_query(route: str, seconds: float, status: int) -> None:
    """One HTTP request: latency histogram plus a count by route and status class."""
    if _enabled():
        _defer(_observe_query_now, route, seconds, status)


def _count_error_now(kind: str) -> None:
    _metric("neardup_errors_total").inc(tags={"type": kind})


def count_error(kind: str) -> None:
    """An error by type: bad_image, too_large, rate_limited, shard_timeout, unauthorized, ..."""
    if _enabled():
        _defer(_count_error_now, kind)


def set_shard_stats(shard: int, count: int, memory_bytes: int) -> None:
    """Per-shard code count and resident memory."""
    if not _enabled():
        return
    tags = {"shard": str(shard)}
    _set_gauge("neardup_shard_codes", count, tags)
    _set_gauge("neardup_shard_memory_bytes", memory_bytes, tags)


def _observe_wal_fsync_now(shard: int, seconds: float) -> None:
    _metric("neardup_wal_fsync_ms").observe(seconds * 1000.0, tags={"shard": str(shard)})


def observe_wal_fsync(shard: int, seconds: float) -> None:
    """Latency of one WAL append+fsync (what an acknowledged write waits for)."""
    if _enabled():
        _defer(_observe_wal_fsync_now, shard, seconds)


def count_ingested(n: int, errors: int = 0) -> None:
    """Images indexed by the ingest job (rate = its derivative on the dashboard)."""
    if not _enabled():
        return
    c = _metric("neardup_ingest_images_total")
    if n:
        c.inc(n, tags={"outcome": "indexed"})
    if errors:
        c.inc(errors, tags={"outcome": "error"})


def set_ingest_rate(images_per_s: float) -> None:
    if _enabled():
        _set_gauge("neardup_ingest_images_per_s", images_per_s)
