"""Count the keypoint matches one similarity transform explains, within a tolerance in both images.

OpenCV's RANSAC (``cv2.estimateAffinePartial2D``) measures each match's error in the stored
image only. A transform that shrinks the query to a speck (scale 0.1) then maps every query
keypoint within a few stored pixels of many stored ones, and unrelated photos reach 6-9
"inliers": as many as a hard copy, and enough for spatial verification's credit. Measured in the
query's pixels, that same tolerance is ten times looser.

Here a match is an inlier when it lands within ``px`` pixels in the stored image *and* within
``px`` in the query: the stored-side tolerance is ``px * min(1, scale)``. OpenCV's search runs
first, as it is fast, and its count stands when its transform does not shrink the query (the
two tolerances are then the same test) or when the count is under ``recount_from``: OpenCV's
tolerance is the looser, so the count here would be no higher, and a caller that gives nothing
under that count (spatial verification's credit starts at ``BONUS_FROM``) loses nothing.
Otherwise the shrinking transform is counted the strict way and two-match hypotheses (every
pair of a few matches, else a seeded sample, as many as RANSAC's stopping rule asks) are scored
all at once with numpy.

>>> import numpy as np
>>> query = np.random.default_rng(0).uniform(0, 320, (40, 2))
>>> similarity_inliers(query, query * 0.5 + 10, 4.0, 2000)  # a crop, enlarged twice
40
>>> speck = np.random.default_rng(1).uniform(150, 158, (40, 2))  # unrelated, in one patch
>>> similarity_inliers(query, speck, 4.0, 2000) <= 3
True
"""
from __future__ import annotations

import math

import cv2
import numpy as np

SHRINK_DRAWS = 500  # most hypotheses tried when OpenCV's transform shrinks the query
MISS = 1e-3  # chance of missing a transform that more matches agree on than OpenCV's does


def similarity_inliers(src: np.ndarray, dst: np.ndarray, px: float, draws: int, recount_from: int = 0) -> int:
    """Matches (query ``src`` -> stored ``dst``, (m, 2) pixel positions) one similarity transform
    maps within ``px`` pixels in both images; ``draws``: OpenCV's RANSAC iterations. A count
    under ``recount_from`` is OpenCV's, an upper bound (see the module docstring)."""
    src, dst = np.asarray(src, np.float32), np.asarray(dst, np.float32)
    model, mask = cv2.estimateAffinePartial2D(src, dst, method=cv2.RANSAC, ransacReprojThreshold=px,
                                              maxIters=draws, refineIters=0)
    if model is None:
        return 0
    count = int(mask.sum())
    if count < recount_from or np.hypot(model[0, 0], model[1, 0]) >= 1.0:
        return count
    a, b = src[:, 0] + 1j * src[:, 1], dst[:, 0] + 1j * dst[:, 1]
    found = int(_counts(a, b, px, np.array([model[0, 0] + 1j * model[1, 0]]),
                        np.array([model[0, 2] + 1j * model[1, 2]]))[0])
    # OpenCV's transform, counted here, is often the true one shrunk (a crop): a few draws confirm it
    return max(found, _search(a, b, px, ransac_draws(found / len(a), MISS, min(draws, SHRINK_DRAWS))))


def ransac_draws(share: float, miss: float, most: int, least: int = 1) -> int:
    """Two-match draws that find a transform ``share`` of the matches agree on with all but
    ``miss`` probability (RANSAC's stopping rule), between ``least`` and ``most``; ``most`` when
    the share is unknown (0)."""
    if share <= 0.0:
        return most
    return int(min(most, max(least, math.ceil(math.log(miss) / math.log1p(-min(share * share, 0.999))))))


def _search(a: np.ndarray, b: np.ndarray, px: float, draws: int) -> int:
    """The best count over two-match hypotheses (query ``a`` -> stored ``b``, complex positions)."""
    i, j = _pairs(len(a), draws)
    da = a[j] - a[i]
    ok = np.abs(da) > 1e-3
    z = (b[j[ok]] - b[i[ok]]) / da[ok]  # scale and turn, as one complex factor
    t = b[i[ok]] - z * a[i[ok]]
    return int(_counts(a, b, px, z, t).max(initial=0))


def _counts(a: np.ndarray, b: np.ndarray, px: float, z: np.ndarray, t: np.ndarray) -> np.ndarray:
    """Matches each transform (``z * a + t``) maps within ``px * min(1, |z|)`` stored pixels."""
    err = np.abs(z[:, None] * a[None, :] + t[:, None] - b[None, :])
    return (err <= px * np.minimum(1.0, np.abs(z))[:, None]).sum(axis=1)


def _pairs(m: int, draws: int) -> tuple[np.ndarray, np.ndarray]:
    """Every pair of ``m`` matches when there are at most ``draws``, else ``draws`` pairs drawn
    with a fixed seed (the same matches always give the same count)."""
    if m * (m - 1) // 2 <= draws:
        return np.triu_indices(m, 1)
    rng = np.random.default_rng(m)
    i = rng.integers(0, m, draws)
    j = rng.integers(0, m - 1, draws)
    return i, j + (j >= i)
