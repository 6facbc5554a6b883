"""How hits are ordered, in one place: the rank key, the merge of the shards' results,
the verification credit and the calibrated confidence.

Every answer (``/v1/search``, ``neardup search``, dedup, eval) is ranked by ``order_key``: the
side-vector ``score`` or else the ``weighted`` Hamming distance or else the distance, plus the
prior ``cost`` of the views that matched (a mirrored, turned or cropped view must match clearly
better than the query as given), less the credit of a spatially verified hit. Nothing else ranks.
"""
from __future__ import annotations

import heapq
from itertools import islice
from operator import itemgetter

import numpy as np

from rayapp.hits import Hit
from shards.candidates import reply_key
from shards.verify import verify_bonus


def merge_results(replies: dict[int, list[list[dict]]], num_queries: int, k: int,
                  radius: int | None = None) -> list[list[Hit]]:
    """k-way merge of the shards' replies (per shard, per query, plain hit dicts as
    ``ShardActor.search`` returns them) by the rank key: each query's top k within ``radius``,
    as Hits tagged with their shard. Only the kept hits become Hits: an image query's views
    bring back thousands of candidates, most of which the merge drops."""
    merged: list[list[Hit]] = []
    for q in range(num_queries):
        streams = [sorted((reply_key(raw) + (s, raw) for raw in rows[q]
                           if radius is None or raw["distance"] <= radius), key=_BY_KEY)
                   for s, rows in sorted(replies.items())]
        merged.append([Hit.from_shard(raw, s) for *_, s, raw in islice(heapq.merge(*streams, key=_BY_KEY), k)])
    return merged


_BY_KEY = itemgetter(0, 1, 2, 3)  # a merge entry's rank key and shard (the dict never compares)


def rerank_depth(k: int) -> int:
    """Hamming neighbours each shard ranks by side vector or weighted distance for the top k:
    deep enough that ranking them matches ranking every stored code (see the model card)."""
    return max(2 * k, k + 10)


def order_key(hit: Hit) -> tuple[float, int, str]:
    """Rank key: the side-vector ``score`` or else the ``weighted`` distance when present
    (from shards without side vectors), else distance, plus the prior ``cost`` of the views that matched, less
    the credit of a spatially verified hit (``inliers``); then distance, then id."""
    d = int(hit.distance)
    base = hit.score if hit.score is not None else hit.weighted if hit.weighted is not None else d
    credit = verify_bonus(hit.inliers) if hit.inliers else 0.0
    return (base + hit.cost - credit, d, hit.id)


def with_confidence(hits: list[Hit], curve=None, min_confidence: float = 0.0) -> list[Hit]:
    """Each hit with its final rank value (``rank``: lower is better, what hits are ordered
    by) and, given a calibration curve (``encoders.calibration``), its ``confidence``: the
    estimated precision of a hit at that rank value and keypoint count. Hits under
    ``min_confidence`` drop out. The curve is read once for all the hits (a batch job reads
    it for tens of thousands)."""
    ranks = [round(float(order_key(h)[0]), 4) for h in hits]
    if curve is None:
        return [h.but(rank=r) for h, r in zip(hits, ranks)]
    confs = [round(float(c), 4) for c in curve(np.array(ranks, np.float64), inlier_counts(hits))]
    return [h.but(rank=r, confidence=c) for h, r, c in zip(hits, ranks, confs) if c >= min_confidence]


def inlier_counts(hits: list[Hit]) -> np.ndarray:
    """The hits' verified keypoints as an array, 0 where a hit was not verified."""
    return np.array([h.inliers or 0 for h in hits], np.float64)


def with_inliers(hits: list[Hit], counts: dict[str, int | None]) -> list[Hit]:
    """One query's hits with each verified one's ``inliers`` (``counts`` by id; None: the shard
    holds no keypoints for it), re-ordered by the credit that earns."""
    out = [h.but(inliers=counts[h.id]) if counts.get(h.id) is not None else h for h in hits]
    return sorted(out, key=order_key)
