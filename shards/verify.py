"""Spatial verification: do a query and a stored image share many keypoints under one geometry?

A crop of 35-55% of an image holds too little of it for a global descriptor, but its corners and
blobs are still the stored image's, at one scale, rotation and offset. Each stored image keeps
up to ``KEYPOINTS`` ORB keypoints (``encoders.keypoints``) in its record, after the code and the
side vector; the router asks the shards to verify only a query's top ``verify`` hits.
:func:`inliers` matches ORB descriptors (each query keypoint's two nearest stored ones from
FAISS's full Hamming matrix, ratio test, each stored keypoint used by one match at most) and
counts the matches one similarity transform explains (OpenCV RANSAC); :func:`verify_bonus`
turns the count into a distance credit.

Matches are one-to-one because many query keypoints landing on one stored keypoint is what a
degenerate transform (a scale near zero maps every point onto one) explains for free: with
many-to-one matches unrelated photos reached tens of inliers, as many as an overlaid copy.

The packed layout (``KEYPOINT_BYTES``, ``pack``/``unpack``) is ``formats.keypoints``.
"""
from __future__ import annotations

import cv2
import faiss
import numpy as np

from formats.keypoints import KEYPOINT_BYTES, KEYPOINT_SIDE, KEYPOINTS, pack, unpack  # noqa: F401

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

cv2.setNumThreads(1)  # callers run many in parallel (Ray workers, Serve replicas)


def inliers(query: np.ndarray | bytes, stored: np.ndarray | bytes) -> int:
    """How many of the query's keypoints one similarity transform (scale, rotation, offset) maps
    onto the stored image's matching keypoints: 0 for unrelated images, tens for copies."""
    (q_xy, q_des), (s_xy, s_des) = unpack(query), unpack(stored)
    if len(q_des) < MIN_MATCHES or len(s_des) < 2:
        return 0
    first, second, nearest = two_nearest(q_des, s_des)
    good = _one_to_one(np.flatnonzero(first < RATIO * second), first, nearest)
    if len(good) < MIN_MATCHES:
        return 0
    # only the count is used: the transform is not refined (refining moves the model, not the mask)
    _, mask = cv2.estimateAffinePartial2D(q_xy[good], s_xy[nearest[good]], method=cv2.RANSAC,
                                          ransacReprojThreshold=REPROJ_PX, refineIters=0)
    return 0 if mask is None else int(mask.sum())


def two_nearest(query: np.ndarray, stored: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each query descriptor's nearest and second-nearest Hamming distance to the stored ones,
    and the nearest's index (the first of equals: a tie fails the ratio test anyway).

    One full (m, n) distance matrix (FAISS ``hammings``) and two row minima: for a few hundred
    descriptors a side, faster than FAISS's k-NN heap on one thread, with the same distances.
    """
    query, stored = np.ascontiguousarray(query, np.uint8), np.ascontiguousarray(stored, np.uint8)
    dist = np.empty((len(query), len(stored)), np.int32)
    faiss.hammings(faiss.swig_ptr(query), faiss.swig_ptr(stored), len(query), len(stored),
                   query.shape[1], faiss.swig_ptr(dist))
    rows = np.arange(len(query))
    nearest = dist.argmin(axis=1)
    first = dist[rows, nearest]
    dist[rows, nearest] = np.iinfo(np.int32).max
    return first, dist.min(axis=1), nearest


def _one_to_one(good: np.ndarray, dist: np.ndarray, nearest: np.ndarray) -> np.ndarray:
    """The ``good`` query keypoints, keeping for each stored keypoint only its closest match."""
    by_dist = good[np.argsort(dist[good], kind="stable")]
    _, first = np.unique(nearest[by_dist], return_index=True)
    return np.sort(by_dist[first])


def confirmed(n_inliers: int | None) -> bool:
    """Whether a verified hit has earned the full credit: a copy beyond doubt, so a query whose
    best hit is confirmed need not verify deeper."""
    return n_inliers is not None and n_inliers >= BONUS_FULL


def verify_bonus(n_inliers: int, first: int = BONUS_FROM, full: int = BONUS_FULL,
                 bonus: float = VERIFY_BONUS) -> float:
    """Distance credit for a verified hit: 0 up to ``first`` inliers, ``bonus`` from ``full``
    on, linear between (the shipped rule by default; ``bench.tune_views`` sweeps the three)."""
    frac = (n_inliers - first) / float(full - first)
    return bonus * min(1.0, max(0.0, frac))
