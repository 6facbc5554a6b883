"""Cost curves and extrapolation for the shard benchmark, and the default kind against its targets.

Everything here is computed from the measured results alone (and recomputed on every flush or
re-render), so a result document can always be re-analysed without re-measuring.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from bench import common
from bench.shard_config import TARGET_N, TARGETS, BenchConfig

_FIT_METRICS = {
    "p50_ms": lambda r: r["latency"]["p50_ms"],
    "p99_ms": lambda r: r["latency"]["p99_ms"],
    "memory_bytes": lambda r: r["memory"]["index_bytes"],
    "rss_delta_bytes": lambda r: r["memory"]["rss_delta_bytes"],
    "build_seconds": lambda r: r["build"]["seconds"],
    "batched_seconds_per_query": lambda r: 1.0 / r["batched"]["qps"],
}


def _fallback_model(kind: str, metric: str) -> str:
    """The model theory expects, used when too few sizes were measured to choose by fit: a graph
    search (hnsw) costs ~log n per query, its build ~n log n; scans and bucket probes grow ~n."""
    if kind == "hnsw":
        return "nlogn" if metric == "build_seconds" else ("log" if metric.endswith(("_ms", "per_query")) else "linear")
    return "linear"


def fanout_tail(quantiles_ms: list[float], scale: float, shards: int, seed: int = 0,
                draws: int = 50_000) -> dict:
    """P50/P99 of the slowest of ``shards`` iid shard latencies drawn from a quantile function
    (``quantiles_ms`` at evenly spaced levels from 0 to 100%, any number of them)."""
    rng = np.random.default_rng(seed)
    u = rng.random((draws, shards)) * (len(quantiles_ms) - 1)
    samples = np.interp(u, np.arange(len(quantiles_ms)), np.asarray(quantiles_ms) * scale)
    worst = samples.max(axis=1)
    return {"p50_ms": float(np.percentile(worst, 50)), "p99_ms": float(np.percentile(worst, 99))}


def analyse(doc: dict, cfg: BenchConfig) -> None:
    """Recompute fits and extrapolations from the measured results (idempotent)."""
    by_label: dict[str, list[dict]] = {}
    for r in doc["results"]:
        by_label.setdefault(r["label"], []).append(r)
    fits, extra = [], []
    for label, rows in by_label.items():
        rows = sorted(rows, key=lambda r: r["n"])
        # an auto-sized mihc changes its chunking as it grows: fit only the sizes that share the
        # largest size's geometry (the one a 200M shard keeps)
        rows = [r for r in rows if r.get("geometry") == rows[-1].get("geometry")]
        f = _fit_metrics(label, rows, fits)
        if "p50_ms" in f:
            extra.append(_extrapolate(label, rows, f, cfg))
    doc["fits"], doc["extrapolated"] = fits, extra
    doc["summary"] = summarise(doc, cfg)


def _fit_metrics(label: str, rows: list[dict], fits: list[dict]) -> dict[str, dict]:
    """Fit every metric of one configuration against n; appends each fit's record to ``fits``."""
    ns = [r["n"] for r in rows]
    f = {}
    for metric, get in _FIT_METRICS.items():
        fit = common.fit_cost_curve(ns, [get(r) for r in rows], fallback=_fallback_model(rows[0]["kind"], metric))
        if fit:
            f[metric] = fit
            fits.append({"label": label, "kind": rows[0]["kind"], "params": rows[0]["params"],
                         "metric": metric, "source": "fit", **fit})
    return f


def _extrapolate(label: str, rows: list[dict], f: dict[str, dict], cfg: BenchConfig) -> dict:
    """One configuration's figures at ``extrapolate_to`` codes and over ``fanout_shards`` shards."""
    target_n, shards = cfg.extrapolate_to, cfg.fanout_shards
    last = rows[-1]

    def at_target(metric: str) -> float | None:
        return common.eval_cost_curve(f[metric], target_n) if metric in f else None

    p50 = at_target("p50_ms")
    # the tail keeps its measured shape: P99 = fitted P50 x measured P99/P50 (the same scaling
    # as the fan-out simulation; a direct fit of noisy P99s can even land below P50)
    p99 = p50 * last["latency"]["p99_ms"] / last["latency"]["p50_ms"]
    mem, build_s = at_target("memory_bytes"), at_target("build_seconds")
    bspq = f.get("batched_seconds_per_query")
    scale = p50 / last["latency"]["p50_ms"] if last["latency"]["p50_ms"] else 1.0
    tail = fanout_tail(last["latency"]["quantiles_ms"], scale, shards)
    return {
        "label": label, "kind": last["kind"], "params": last["params"], "source": "extrapolated",
        "n": target_n, "from_sizes": [r["n"] for r in rows], "low_confidence": f["p50_ms"]["low_confidence"],
        "p50_ms": p50, "p99_ms": p99, "p99_ms_direct_fit": at_target("p99_ms"),
        "p50_model": f["p50_ms"]["model"],
        "memory_bytes": mem, "bytes_per_code": None if mem is None else mem / target_n,
        "build_seconds": build_s,
        "build_codes_per_s": None if not build_s else target_n / build_s,
        "batched_qps": None if not bspq else 1.0 / common.eval_cost_curve(bspq, target_n),
        "recall_at_10_le16_measured_at_largest": last[f"recall_at_{cfg.k}"].get("<=16"),
        "fanout": {"shards": shards, "codes_total": target_n * shards, "source": "extrapolated",
                   "method": f"max of {shards} iid draws from the latency distribution measured at "
                             f"n={last['n']}, scaled by the fitted P50 ratio {scale:.2f}; excludes "
                             f"network, encode and merge", **tail},
    }


def default_label(doc: dict) -> str | None:
    """The default kind's default configuration (built with no params), else its first result."""
    rows = [r for r in doc["results"] if r["kind"] == doc["default_kind"]]
    plain = [r for r in rows if not r["params"]]
    return (plain or rows)[0]["label"] if rows else None


def _at_size(rs: list[dict], n_pref: int | None) -> list[dict]:
    """The results at n_pref if measured there, else at their largest size."""
    sizes = {r["n"] for r in rs}
    n = n_pref if n_pref in sizes else max(sizes, default=0)
    return [r for r in rs if r["n"] == n]


def _against_targets(r: dict, k: int) -> dict:
    """One measured result's headline figures and whether each meets its target."""
    rec = r[f"recall_at_{k}"].get("<=16")
    checks = {"recall_at_10_le16": rec is not None and rec >= TARGETS["recall_at_10_le16"],
              "p99_ms": r["latency"]["p99_ms"] <= TARGETS["p99_ms"],
              "bytes_per_code": r["memory"]["bytes_per_code"] <= TARGETS["bytes_per_code"],
              "build_codes_per_s": r["build"]["codes_per_s"] >= TARGETS["build_codes_per_s"]}
    return {"label": r["label"], "n": r["n"], "source": "measured", "recall_at_10_le16": rec,
            "p50_ms": r["latency"]["p50_ms"], "p99_ms": r["latency"]["p99_ms"],
            "bytes_per_code": r["memory"]["bytes_per_code"],
            "rss_bytes_per_code": r["memory"]["rss_bytes_per_code"],
            "build_codes_per_s": r["build"]["codes_per_s"], "meets_target": checks,
            "other_load": r["other_load"]}


def summarise(doc: dict, cfg: BenchConfig) -> dict:
    """Default kind against the targets at TARGET_N (else its largest size), and HNSW beside it
    at its largest size."""
    out: dict[str, Any] = {}
    dl = default_label(doc)
    for name, pick in (("default", _at_size([r for r in doc["results"] if r["label"] == dl], TARGET_N)),
                       ("hnsw", _at_size([r for r in doc["results"] if r["kind"] == "hnsw"], None))):
        for r in pick:
            out.setdefault(name, []).append(_against_targets(r, cfg.k))
    return out
