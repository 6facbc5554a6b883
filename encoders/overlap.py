"""Does the aligned overlap of two images agree? A dense check for look-alikes that keypoints pass.

Two photos of different shirts on one bed sheet share the sheet's corners: keypoint verification
(``shards.verify``) counts ten or twenty inliers on it and the pair looks like a copy. A copy and
its source agree almost everywhere once aligned; the look-alikes agree only on the shared
background. :func:`agreement` aligns the first image onto the second (ORB matches, a RANSAC
similarity, refined to a homography where enough matches agree, the first image mirrored
when that aligns better) and returns the share of the overlap's textured tiles whose
normalised cross-correlation is high. Correlation of blurred grey tiles ignores brightness,
contrast and colour edits and small misalignments; flat tiles (sky, a plain wall) say nothing
and are not counted.

It needs both images' pixels, so the batch dedup job runs it where it reads the files again
(``rayapp.dedup_overlap``); a query against stored records cannot.

>>> from PIL import Image
>>> a = Image.open("rayapp/samples/clothing-dataset-small_00016.jpg")
>>> agreement(a, a.resize((a.width // 2, a.height // 2))).share > 0.9
True
"""
from __future__ import annotations

from typing import NamedTuple, Sequence

import cv2
import numpy as np
from PIL import Image, ImageOps

from encoders.keypoints import detect

RATIO = 0.85        # Lowe's ratio test, as in shards.verify
REPROJ_PX = 4.0     # RANSAC inlier threshold, pixels at the keypoint scale
MIN_MATCHES = 5     # fewer one-to-one matches: no alignment, so no evidence either way
HOMOGRAPHY_FROM = 8  # matches needed before the similarity is refined to a homography
TILE = 16           # tile side, pixels at the keypoint scale (at most 320 on the long side)
BLUR = 1.0          # Gaussian sigma before correlating: JPEG blocks and pixelation average out
FLAT_STD = 6.0      # a tile flatter than this in both images is not counted
AGREE_NCC = 0.5     # a tile agrees when its correlation exceeds this
MIN_COVER = 0.95    # a tile counts only when this share of it lies inside the warped image


class Agreement(NamedTuple):
    """``share`` of the ``textured`` overlap tiles that agree, and the alignment's ``inliers``."""
    share: float
    textured: int
    inliers: int


class Features(NamedTuple):
    """An image's grey pixels at the keypoint scale, its ORB keypoints' positions and descriptors."""
    grey: np.ndarray
    xy: np.ndarray
    descriptors: np.ndarray


def features(image: Image.Image) -> Features | None:
    """What :func:`aligned_agreement` needs of one image (None: too few keypoints to align)."""
    found = detect(image)
    if found is None:
        return None
    grey, kps, des = found
    if des is None or len(kps) < MIN_MATCHES:
        return None
    return Features(grey, np.array([k.pt for k in kps], np.float32), des)


class _Similarity(NamedTuple):
    transform: np.ndarray  # 3x3, a's keypoint-scale pixels -> b's
    inliers: int
    src: np.ndarray
    dst: np.ndarray
    source: Features


def _similarity(a: Features, b: Features) -> _Similarity | None:
    """One-to-one ORB matches from a to b and the RANSAC similarity most of them agree on."""
    pairs = cv2.BFMatcher(cv2.NORM_HAMMING).knnMatch(a.descriptors, b.descriptors, k=2)
    good = sorted((p[0] for p in pairs if len(p) == 2 and p[0].distance < RATIO * p[1].distance),
                  key=lambda m: m.distance)
    one_to_one = list({m.trainIdx: m for m in reversed(good)}.values())  # the nearest per stored point
    if len(one_to_one) < MIN_MATCHES:
        return None
    src = a.xy[[m.queryIdx for m in one_to_one]]
    dst = b.xy[[m.trainIdx for m in one_to_one]]
    sim, mask = cv2.estimateAffinePartial2D(src, dst, method=cv2.RANSAC, ransacReprojThreshold=REPROJ_PX,
                                            maxIters=2000, refineIters=0)
    if sim is None:
        return None
    return _Similarity(np.vstack([sim, [0.0, 0.0, 1.0]]), int(mask.sum()), src, dst, a)


def _refined(found: _Similarity) -> np.ndarray:
    """The similarity refined to a homography where at least as many matches agree on one (a
    copy through a perspective or aspect edit is not a similarity of its source)."""
    if len(found.src) < HOMOGRAPHY_FROM:
        return found.transform
    hom, mask = cv2.findHomography(found.src, found.dst, cv2.RANSAC, REPROJ_PX, maxIters=2000)
    if hom is None or int(mask.sum()) < max(HOMOGRAPHY_FROM, found.inliers):
        return found.transform
    return hom


def _tiles(x: np.ndarray) -> np.ndarray:
    """(h, w) with both divisible by TILE -> one row of TILE * TILE pixels per tile."""
    h, w = x.shape
    return x.reshape(h // TILE, TILE, w // TILE, TILE).swapaxes(1, 2).reshape(-1, TILE * TILE)


def tile_share(warped: np.ndarray, cover: np.ndarray, target: np.ndarray) -> tuple[float, int]:
    """Share of the textured, covered TILE x TILE tiles where ``warped`` and ``target`` (float
    grey, same shape) correlate above AGREE_NCC, and how many tiles were textured."""
    h, w = (s - s % TILE for s in target.shape)
    p, q, c = (_tiles(x[:h, :w]) for x in (warped, target, cover))
    p = p - p.mean(1, keepdims=True)
    q = q - q.mean(1, keepdims=True)
    sp, sq = p.std(1), q.std(1)
    counted = (c.mean(1) >= MIN_COVER) & ((sp >= FLAT_STD) | (sq >= FLAT_STD))
    ncc = (p * q).mean(1) / np.maximum(sp * sq, 1e-6)
    textured = int(counted.sum())
    return (float((ncc[counted] > AGREE_NCC).sum()) / textured if textured else 0.0), textured


def agreement(a: Image.Image, b: Image.Image) -> Agreement | None:
    """How well ``a`` (as given or mirrored, whichever aligns better), aligned onto ``b``, agrees
    with it tile by tile; None when the two have too few keypoint matches to align (no evidence
    either way)."""
    return aligned_agreement([features(a), features(ImageOps.mirror(a))], features(b))


def aligned_agreement(candidates: Sequence[Features | None], fb: Features | None) -> Agreement | None:
    """:func:`agreement` from :func:`features`: of the ``candidates`` (one image as given and
    mirrored, say) the one whose similarity to ``fb`` has the most inliers is aligned and compared."""
    found = [_similarity(fa, fb) for fa in candidates if fa is not None and fb is not None]
    found = [f for f in found if f is not None]
    if not found:
        return None
    best = max(found, key=lambda f: f.inliers)
    transform, grey_a, size = _refined(best), best.source.grey, fb.grey.shape[::-1]
    # compare at the coarser of the two resolutions: an image enlarged onto the other is blurred
    # by its enlargement, so the other is blurred as much (and the other way round)
    scale = float(np.sqrt(abs(np.linalg.det(transform[:2, :2]))))
    blur = lambda g, s: cv2.GaussianBlur(g.astype(np.float32), (0, 0), BLUR * s)  # noqa: E731
    warped = cv2.warpPerspective(blur(grey_a, max(1.0, 1.0 / max(scale, 1e-3))), transform, size,
                                 flags=cv2.INTER_LINEAR)
    cover = cv2.warpPerspective(np.ones(grey_a.shape, np.float32), transform, size, flags=cv2.INTER_NEAREST)
    share, textured = tile_share(warped, cover, blur(fb.grey, max(1.0, scale)))
    return Agreement(share, textured, best.inliers)
