"""Prometheus metrics through ``ray.util.metrics``; Ray exports them to its dashboard and /metrics.

Each metric is created once per process on first use (Ray metrics need a connected worker).
Outside a Ray worker or driver every call is a silent no-op, so library code can always record.
"""
from __future__ import annotations

import threading
from functools import lru_cache

import ray
from ray.util.metrics import Counter, Gauge, Histogram

LATENCY_MS_BOUNDARIES = [0.5, 1, 2, 5, 10, 20, 30, 50, 75, 100, 200, 500, 1000, 2000, 5000]
_lock = threading.Lock()


@lru_cache(maxsize=None)
def _metric(kind: str, name: str, description: str, tag_keys: tuple[str, ...]):
    with _lock:
        if kind == "counter":
            return Counter(name, description=description, tag_keys=tag_keys)
        if kind == "gauge":
            return Gauge(name, description=description, tag_keys=tag_keys)
        return Histogram(name, description=description, boundaries=LATENCY_MS_BOUNDARIES,
                         tag_keys=tag_keys)


def _enabled() -> bool:
    return ray.is_initialized()


def observe_query(route: str, seconds: float, status: int) -> None:
    """One HTTP request: latency histogram plus a count by route and status class."""
    if not _enabled():
        return
    _metric("histogram", "neardup_query_latency_ms", "Request latency in ms, by route.",
            ("route",)).observe(seconds * 1000.0, tags={"route": route})
    _metric("counter", "neardup_queries_total", "Requests, by route and status.",
            ("route", "status")).inc(tags={"route": route, "status": str(status)})


def count_error(kind: str) -> None:
    """An error by type: bad_image, too_large, rate_limited, shard_timeout, unauthorized, ..."""
    if _enabled():
        _metric("counter", "neardup_errors_total", "Errors, by type.", ("type",)).inc(
            tags={"type": kind})


def set_shard_stats(shard: int, count: int, memory_bytes: int) -> None:
    """Per-shard code count and resident memory."""
    if not _enabled():
        return
    tags = {"shard": str(shard)}
    _metric("gauge", "neardup_shard_codes", "Codes held by each shard.", ("shard",)).set(
        count, tags=tags)
    _metric("gauge", "neardup_shard_memory_bytes", "Resident bytes of each shard's index and store.",
            ("shard",)).set(memory_bytes, tags=tags)


def observe_wal_fsync(shard: int, seconds: float) -> None:
    """Latency of one WAL append+fsync (what an acknowledged write waits for)."""
    if _enabled():
        _metric("histogram", "neardup_wal_fsync_ms", "WAL fsync latency in ms, by shard.",
                ("shard",)).observe(seconds * 1000.0, tags={"shard": str(shard)})


def count_ingested(n: int, errors: int = 0) -> None:
    """Images indexed by the ingest job (rate = its derivative on the dashboard)."""
    if not _enabled():
        return
    c = _metric("counter", "neardup_ingest_images_total", "Images ingested, by outcome.", ("outcome",))
    if n:
        c.inc(n, tags={"outcome": "indexed"})
    if errors:
        c.inc(errors, tags={"outcome": "error"})


def set_ingest_rate(images_per_s: float) -> None:
    if _enabled():
        _metric("gauge", "neardup_ingest_images_per_s", "Current ingest throughput.", ()).set(
            images_per_s)
