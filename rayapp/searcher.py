"""One query path: an encoded query in, ranked hits (``rayapp.hits.Hit``) with their confidence out.

Serve's ``/v1/search``, ``neardup search`` and the dedup job all search through
:class:`Searcher`, so a view, a ranking signal or a credit is written once:

1. every view's code goes to every shard (``ShardRouter.search``: Hamming top-k, side-vector
   scores, stored views folded into their image);
2. each shard merges a query's views into one list, each view paying its prior cost
   (``shards.candidates.merge_views``), and the router merges the shards' lists;
3. the top hits are spatially verified by their shards when the query has keypoints (by a
   single shard within the search call), then deeper where none is confirmed
   (``ShardRouter.verify``);
4. each hit gets its final ``rank`` and, from the model's calibration curve, its
   ``confidence`` (``with_confidence``).

>>> searcher = Searcher(router, cfg.query, confidence_curves(cfg))
>>> answer = searcher.search(QueryViews.of_code(code), k=10)
>>> answer.hits[0].id, answer.partial
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from rayapp.blocking import run_sync
from rayapp.config import QueryConfig
from rayapp.hits import Hit
from rayapp.ranking import inlier_counts, order_key, with_confidence, with_inliers
from rayapp.router import ShardRouter
from shards.verify import KEYPOINTS, VERIFY_BONUS, confirmed, verify_bonus
from shards.views import base_id, verify_id


class NeedsCalibration(ValueError):
    """A confidence floor was asked of a model that has no confidence curve."""


@dataclass
class QueryViews:
    """One query as the index sees it: the codes of its views (the query as given first),
    their names (``encoders.tta.view_names``), optional bit confidences (v, bits), int8 side
    vectors (v, d) and packed keypoints (blocks of ``shards.verify.KEYPOINT_BYTES``), and
    which confidence curve applies (``image`` or ``code``)."""

    codes: np.ndarray
    names: list[str] = field(default_factory=lambda: ["original"])
    weights: np.ndarray | None = None
    vectors: np.ndarray | None = None
    keypoints: np.ndarray | None = None
    kind: str = "image"

    def __post_init__(self) -> None:
        self.codes = np.atleast_2d(np.ascontiguousarray(self.codes, dtype=np.uint8))
        if len(self.names) != len(self.codes):
            raise ValueError(f"{len(self.codes)} view codes but {len(self.names)} view names")

    @classmethod
    def of_code(cls, code: np.ndarray) -> "QueryViews":
        """A hex-code query: one view, nothing to re-rank or verify by."""
        return cls(np.asarray(code, np.uint8)[None, :], ["original"], kind="code")

    @property
    def code(self) -> np.ndarray:
        """The code of the query as given."""
        return self.codes[0]


@dataclass
class Answer:
    """One query's hits, best first, and the shards that did not answer (then ``partial``)."""

    hits: list[Hit]
    missing: list[int]

    @property
    def partial(self) -> bool:
        return bool(self.missing)


class Searcher:
    """Searches encoded queries over a :class:`ShardRouter` with one encoder's settings
    (``rayapp.config.QueryConfig``: view costs, verification depth) and calibration curves
    (``encoders.calibration.load``; empty: hits carry no confidence)."""

    def __init__(self, router: ShardRouter, query: QueryConfig, curves: dict | None = None):
        self.router = router
        self.cfg = query
        self.curves = curves or {}

    def _depth(self, q: QueryViews) -> int:
        return max(0, int(self.cfg.verify)) if q.keypoints is not None else 0

    def curve(self, kind: str, min_confidence: float = 0.0):
        """The confidence curve of ``kind``; NeedsCalibration when a confidence floor needs one."""
        curve = self.curves.get(kind)
        if curve is None and min_confidence > 0:
            raise NeedsCalibration("min_confidence needs a calibrated model; this encoder has no "
                             "confidence curve (encoders/weights/calibration.json)")
        return curve

    def _views(self, queries: Sequence[QueryViews]) -> list[tuple[int, str, float]]:
        """Each code's (query, view name, prior cost), for the shards to merge each query's views."""
        return [(i, name, cost) for i, q in enumerate(queries)
                for name, cost in zip(q.names, self.cfg.view_costs(q.names).tolist())]

    def _finish(self, q: QueryViews, hits: list[Hit], k: int, min_confidence: float) -> list[Hit]:
        return with_confidence(hits[:k], self.curve(q.kind, min_confidence), min_confidence)

    async def asearch(self, q: QueryViews, k: int = 10, radius: int | None = None,
                      with_meta: bool = False, min_confidence: float = 0.0) -> Answer:
        """The top ``k`` stored images for one query (see the module docstring)."""
        self.curve(q.kind, min_confidence)
        depth = self._depth(q)
        fetch = max(k, self._candidates(depth))
        rows, missing = await self.router.asearch(q.codes, fetch, radius, with_meta, q.weights,
                                                  q.vectors, self._views([q]),
                                                  (depth, q.keypoints) if depth else None)
        hits = rows[0]
        if depth:  # the router had the merged top ``depth`` verified
            hits = await self._verify_more(q, sorted(hits, key=order_key), depth)
        return Answer(self._finish(q, hits, k, min_confidence), missing)

    def _candidates(self, depth: int) -> int:
        """Hits a verified query fetches: every one a verification round may reach, so that
        the top k of an answer do not depend on k."""
        return depth + max(0, int(self.cfg.verify_more)) if depth else 0

    async def _verify_more(self, q: QueryViews, hits: list[Hit], depth: int) -> list[Hit]:
        """When no verified hit is confirmed (a hard edit, or no copy stored), the next
        ``verify_more`` unverified hits are verified too: deeper only where it can matter, so
        only those the full credit could lift above the current best hit."""
        more = max(0, int(self.cfg.verify_more))
        if not more or not hits or confirmed(hits[0].inliers):
            return hits
        best = order_key(hits[0])[0]
        todo = [h for h in hits[:depth + more]
                if h.inliers is None and order_key(h)[0] - VERIFY_BONUS < best]
        checked = await self.router.averify(todo, q.keypoints, len(todo)) if todo else []
        return with_inliers(hits, {h.id: h.inliers for h in checked if h.inliers is not None})

    def search(self, q: QueryViews, k: int = 10, radius: int | None = None, with_meta: bool = False,
               min_confidence: float = 0.0) -> Answer:
        """:meth:`asearch`, waited for (the CLI)."""
        return run_sync(self.asearch(q, k, radius, with_meta, min_confidence))

    def search_many(self, queries: Sequence[QueryViews], k: int = 10, min_confidence: float = 0.0,
                    radius: int | None = None, with_meta: bool = False) -> list[Answer]:
        """Many queries in one fan-out and one verification round per shard, for batch jobs.

        Only hits that verification could lift to ``min_confidence`` are verified (under it
        now, within the full credit of it): a hit already above the floor keeps its confidence
        before verification, a lower bound. A pair without enough keypoint matches to reach the
        floor skips RANSAC (``fewest_inliers``), so a hit left under the floor may show 0
        inliers. Queries must share their view layout and kind.
        """
        if not queries:
            return []
        q0 = queries[0]
        curve = self.curve(q0.kind, min_confidence)
        stack = lambda name: (None if getattr(q0, name) is None  # noqa: E731
                              else np.concatenate([getattr(q, name) for q in queries]))
        depth = max(self._depth(q) for q in queries)
        fetch = max(k, depth)
        merged, missing = self.router.search(stack("codes"), fetch, radius, with_meta,
                                             stack("weights"), stack("vectors"), self._views(queries))
        if depth and curve is not None:
            merged = self._verify_needed(queries, merged, curve, min_confidence)
        return [Answer(self._finish(q, hits, k, min_confidence), missing)
                for q, hits in zip(queries, merged)]

    def _verify_needed(self, queries: Sequence[QueryViews], merged: list[list[Hit]], curve,
                       min_confidence: float) -> list[list[Hit]]:
        """Verify, in one call per shard, each query's hits whose confidence is under the floor
        but that the full credit of every keypoint verifying it would lift over."""
        cands = [(qi, h) for qi, hits in enumerate(merged) for h in hits[:self._depth(queries[qi])]]
        if not cands:
            return merged
        ranks = np.array([order_key(h)[0] for _, h in cands], np.float64)
        lift = (curve(ranks, inlier_counts([h for _, h in cands])) < min_confidence) \
            & (curve(ranks - VERIFY_BONUS, np.full(len(cands), KEYPOINTS)) >= min_confidence)
        pairs = [(qi, verify_id(h.id, h.ref_view)) for (qi, h), up in zip(cands, lift) if up]
        if not pairs:
            return merged
        need = fewest_inliers(curve, ranks[lift], min_confidence)
        views = [h.variant or "original" for (_, h), up in zip(cands, lift) if up]
        counts = self.router.verify_pairs(pairs, [queries[qi].keypoints for qi, _ in pairs], need.tolist(), views)
        by_query: list[dict[str, int | None]] = [{} for _ in merged]
        for (qi, stored_id), n in zip(pairs, counts):
            by_query[qi][base_id(stored_id)] = n
        return [with_inliers(hits, c) if c else hits for hits, c in zip(merged, by_query)]


def fewest_inliers(curve, ranks: np.ndarray, min_confidence: float) -> np.ndarray:
    """For unverified hits at ``ranks``, the fewest verified keypoints that lift each to
    ``min_confidence`` (credit and confidence grow with the count; ``KEYPOINTS`` is known to): a
    batch job need not count a pair's inliers exactly below that (``inliers_many``'s ``at_least``)."""
    def lifted(n: np.ndarray) -> np.ndarray:
        return curve(ranks - verify_bonus(n), n.astype(np.float64)) >= min_confidence
    lo, hi = np.full(len(ranks), -1), np.full(len(ranks), KEYPOINTS)  # lo never lifts, hi does
    while (hi - lo > 1).any():
        mid = (lo + hi) // 2
        up, open_ = lifted(mid), hi - lo > 1
        hi, lo = np.where(open_ & up, mid, hi), np.where(open_ & ~up, mid, lo)
    return hi


def encode_query(encoder, img, query: QueryConfig, rank: str | None = None, tta: str | None = None,
                 keypoints: bool = True) -> QueryViews:
    """A decoded image -> its QueryViews, encoded in this process: the configured views
    (``encoders.tta.query_variants``), bit confidences for weighted ranking, side vectors for
    vector ranking, and keypoints (as given, mirrored, and each searched crop's) when hits are
    verified."""
    return encode_queries(encoder, [img], query, rank, tta, keypoints)[0]


def encode_queries(encoder, imgs: Sequence, query: QueryConfig, rank: str | None = None,
                   tta: str | None = None, keypoints: bool = True) -> list[QueryViews]:
    """Decoded images -> each one's QueryViews (``encode_query``), every view of every image
    encoded in one batch: how eval encodes its queries, at batch speed."""
    from encoders.keypoints import extract_query_views
    from encoders.tta import content_boxes, query_variants, searched_boxes
    rank = rank or query.rank
    found = [content_boxes(img, query.content) for img in imgs]
    views = [query_variants(img, encoder.preprocess, tta or query.tta, query.content, f)
             for img, f in zip(imgs, found)]
    codes, weights, vectors = encoder.encode_vectors(np.concatenate([a for arrays, _ in views for a in arrays]))
    weights = weights if rank != "hamming" else None
    vectors = vectors if rank == "vector" else None
    verify = keypoints and int(query.verify) > 0
    out, start = [], 0
    for img, (_, names), f in zip(imgs, views, found):
        rows = slice(start, start + len(names))
        start = rows.stop
        out.append(QueryViews(codes[rows], list(names), None if weights is None else weights[rows],
                              None if vectors is None else vectors[rows],
                              extract_query_views(img, searched_boxes(f)) if verify else None))
    return out
