"""Spatial verification: do a query and a stored image share many keypoints under one geometry?

A crop of 35-55% of an image holds too little of it for a global descriptor, but its corners and
blobs are still the stored image's, at one scale, rotation and offset. Each stored image keeps
up to ``KEYPOINTS`` ORB keypoints (``encoders.keypoints``) in its record, after the code and the
side vector; the router asks the shards to verify only a query's top ``verify`` hits.
:func:`inliers` matches ORB descriptors (each query keypoint's two nearest stored ones, found by
``shards.match_kernel`` in one pass, ratio test, each stored keypoint used by one match at most) and
counts the matches one similarity transform explains within ``REPROJ_PX`` in both images
(RANSAC, ``shards.similarity``); :func:`verify_bonus` turns the count into a distance credit.

Matches are one-to-one because many query keypoints landing on one stored keypoint is what a
degenerate transform (a scale near zero maps every point onto one) explains for free: with
many-to-one matches unrelated photos reached tens of inliers, as many as an overlaid copy. The
tolerance holds in both images for the same reason: a transform that shrinks the query to a
speck lands many one-to-one matches within a few stored pixels of one textured patch.

The packed layout (``KEYPOINT_BYTES``, ``pack``/``unpack``) is ``formats.keypoints``.
"""
from __future__ import annotations

from collections import defaultdict
from typing import Sequence

import cv2
import numpy as np

from formats.keypoints import (DESCRIPTOR_BYTES, KEYPOINT_BYTES, KEYPOINT_SIDE, KEYPOINTS, pack,  # noqa: F401
                               unpack, unpack_many)
from shards.match_kernel import two_nearest_sets
from shards.similarity import ransac_draws, similarity_inliers

RATIO = 0.85             # Lowe's ratio test on Hamming distances
REPROJ_PX = 4.0          # RANSAC inlier threshold, pixels at KEYPOINT_SIDE
MIN_MATCHES = 5
# A hit's credit grows linearly from BONUS_FROM inliers to the full VERIFY_BONUS at BONUS_FULL, in
# the side-vector score's units: one-to-one matches leave unrelated photos a handful of inliers,
# so a few more already mark a copy. Chosen on validation sources with the independent edit
# suite through ``neardup eval`` (MODEL_CARD.md).
BONUS_FROM, BONUS_FULL, VERIFY_BONUS = 6, 10, 16.0
# Hits verified per image query, after merging its views, and how many more are verified when
# none of those is confirmed (``confirmed``); chosen on validation sources (MODEL_CARD.md).
VERIFY_DEPTH = 20
VERIFY_MORE = 80

RANSAC_DRAWS = 2000  # OpenCV's default maxIters: the full RANSAC that counts a pair's inliers
MISS = 1e-4  # chance that the short RANSAC of a batch job misses a pair that reaches its floor
MIN_DRAWS = 20  # its fewest draws: a sample of two true matches may still miss a few of the rest

cv2.setNumThreads(1)  # callers run many in parallel (Ray workers, Serve replicas)


def inliers(query: np.ndarray | bytes, stored: np.ndarray | bytes) -> int:
    """How many of the query's keypoints one similarity transform (scale, rotation, offset) maps
    onto the stored image's matching keypoints: 0 for unrelated images, tens for copies."""
    return inliers_many(query, [stored])[0]


def block_rows(w: int | Sequence[int], n: int) -> Sequence[int]:
    """The query blocks one ``which`` entry names: a row, -1 for all ``n``, or a list of rows."""
    if isinstance(w, (int, np.integer)):
        return range(n) if w < 0 else (int(w),)
    return tuple(int(b) for b in w)


def verify_blocks(blocks: np.ndarray, which: list, stored: list[np.ndarray | None],
                  at_least: Sequence[int] | None = None) -> list[int | None]:
    """Each stored image's inliers (None where it has no keypoints) against its query blocks:
    ``which[i]`` is a row of ``blocks``, -1 for the best of all, or a list of rows (the best of
    those). Each block is matched against all its images in one :func:`inliers_many`
    (``at_least[i]``: see there)."""
    rows: dict[int, list[int]] = defaultdict(list)  # block -> the images it verifies
    for i, w in enumerate(which):
        for b in block_rows(w, len(blocks)) if stored[i] is not None else ():
            rows[b].append(i)
    out: list[int | None] = [None] * len(stored)
    for b, rs in rows.items():
        need = None if at_least is None else [at_least[i] for i in rs]
        for i, n in zip(rs, inliers_many(blocks[b], [stored[i] for i in rs], need)):
            out[i] = n if out[i] is None else max(out[i], n)
    return out


def inliers_many(query: np.ndarray | bytes, stored: np.ndarray | list,
                 at_least: Sequence[int] | None = None) -> list[int]:
    """:func:`inliers` of one query against several stored images ((n, KEYPOINT_BYTES) blocks,
    or a list of blocks). Their descriptors are matched in one kernel call, which runs without
    the GIL, so a shard or a job verifying many hits per query pays the per-call overhead
    once, and concurrent calls run in parallel.

    ``at_least[j]``: the fewest inliers that would change what the caller does with image j (a
    batch job keeps only hits verification lifts over its confidence floor). Where image j has
    fewer one-to-one matches than that, its inliers cannot reach it either, so RANSAC is skipped
    and 0 is returned."""
    q_xy, q_des = unpack(query)
    s_xy, s_des, counts = unpack_many(stored)
    if len(q_des) < MIN_MATCHES or not len(counts) or counts.max() < 2:
        return [0] * len(counts)
    first, second, nearest = two_nearest_sets(q_des, s_des[:, :int(counts.max())], counts)
    ok = first < RATIO * second
    return [_geometric_inliers(q_xy, s_xy[j], first[:, j], nearest[:, j], ok[:, j],
                               MIN_MATCHES if at_least is None else max(MIN_MATCHES, at_least[j]))
            if n >= 2 else 0 for j, n in enumerate(counts)]


def _geometric_inliers(q_xy: np.ndarray, s_xy: np.ndarray, first: np.ndarray, nearest: np.ndarray,
                       ok: np.ndarray, at_least: int = MIN_MATCHES) -> int:
    """The inliers of one pair from each query keypoint's nearest stored one (distance, index)
    and whether it passed the ratio test: one-to-one matches, counted under one RANSAC
    similarity transform (0 when there are fewer than ``at_least`` matches)."""
    good = _one_to_one(np.flatnonzero(ok), first, nearest)
    if len(good) < at_least:
        return 0
    src, dst = q_xy[good], s_xy[nearest[good]]
    if at_least > MIN_MATCHES and _ransac(src, dst, _draws_to_find(at_least, len(good))) < at_least:
        return 0  # a short search found no transform that at_least of the matches agree on
    return _ransac(src, dst)


def _ransac(src: np.ndarray, dst: np.ndarray, max_iters: int = RANSAC_DRAWS) -> int:
    """Matches one RANSAC similarity transform explains, within ``REPROJ_PX`` in both images
    (``shards.similarity``: a transform that shrinks the query to a speck explains nothing).
    Counts that earn no credit (under ``BONUS_FROM``) are OpenCV's, which are no lower."""
    return similarity_inliers(src, dst, REPROJ_PX, max_iters, recount_from=BONUS_FROM)


def _draws_to_find(at_least: int, matches: int) -> int:
    """RANSAC draws (two matches each) that find a transform ``at_least`` of ``matches`` agree on,
    if there is one, with all but ``MISS`` probability: fewer than ``RANSAC_DRAWS`` when the
    share is large, so a batch job rules out most pairs cheaply."""
    return ransac_draws(min(at_least / matches, 0.99), MISS, RANSAC_DRAWS, MIN_DRAWS)


def two_nearest(query: np.ndarray, stored: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each query descriptor's nearest and second-nearest Hamming distance to the stored ones,
    and the nearest's index (the first of equals: a tie fails the ratio test anyway): what
    :func:`inliers_many` computes for each stored image, for one."""
    first, second, nearest = two_nearest_sets(query, np.asarray(stored)[None], np.array([len(stored)]))
    return first[:, 0], second[:, 0], nearest[:, 0]


def _one_to_one(good: np.ndarray, dist: np.ndarray, nearest: np.ndarray) -> np.ndarray:
    """The ``good`` query keypoints, keeping for each stored keypoint only its closest match."""
    by_dist = good[np.argsort(dist[good], kind="stable")]
    _, first = np.unique(nearest[by_dist], return_index=True)
    return np.sort(by_dist[first])


def confirmed(n_inliers: int | None) -> bool:
    """Whether a verified hit has earned the full credit: a copy beyond doubt, so a query whose
    best hit is confirmed need not verify deeper."""
    return n_inliers is not None and n_inliers >= BONUS_FULL


def verify_bonus(n_inliers: int | np.ndarray, first: int = BONUS_FROM, full: int = BONUS_FULL,
                 bonus: float = VERIFY_BONUS) -> float | np.ndarray:
    """Distance credit for a verified hit: 0 up to ``first`` inliers, ``bonus`` from ``full``
    on, linear between (the shipped rule by default; ``bench.tune_views`` sweeps the three).
    An array of counts gives an array of credits."""
    frac = (n_inliers - first) / float(full - first)
    if isinstance(frac, np.ndarray):
        return bonus * np.clip(frac, 0.0, 1.0)
    return bonus * min(1.0, max(0.0, frac))
