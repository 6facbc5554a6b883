"""Does the aligned overlap of two images agree? A dense check for look-alikes that keypoints pass.

Two photos of different shirts on one bed sheet share the sheet's corners: keypoint verification
(``shards.verify``) counts ten or twenty inliers on it and the pair looks like a copy. A copy and
its source agree almost everywhere once aligned; the look-alikes agree only on the shared
background. :func:`agreement` aligns the first image onto the second (ORB matches, a RANSAC
similarity, refined to a homography where enough matches agree, the first image mirrored
when that aligns better) and returns the share of the overlap's textured tiles whose
normalised cross-correlation is high. Correlation of blurred grey tiles ignores brightness,
contrast and colour edits and small misalignments; flat tiles (sky, a plain wall) say nothing
and are not counted. Both images are compared at the coarser of their two resolutions: an image
shrunk onto the other, or pixelated into blocks, blurs the other as much.

Grey shapes can agree where colours do not: one cut of shirt in two colours on one hanger. So
it also returns the share of tiles that agree in colour as well, up to one linear colour map
fitted over the whole overlap (a fade, a tint, a saturation change or grayscale is such a map,
applied to every tile alike; two shirts of different colours on one white wall are not).

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
COLOUR_TOL = 30.0   # RGB distance (0-255) from the fitted colour map under which a tile's mean colour agrees
MIN_COLOUR_TILES = 8  # fewer covered tiles: no colour map is fitted and colour is not judged
MIN_TEXTURED = 8    # fewer textured tiles in the overlap (a degenerate or tiny alignment): no verdict
BLOCK_SIDES = range(3, 25)  # pixelation block sides looked for, pixels at the keypoint scale
MIN_BLOCK_RATIO = 5.0  # a block side is found when its seams differ this many times more than the rest


class Agreement(NamedTuple):
    """``share`` of the ``textured`` overlap tiles that agree, the alignment's ``inliers``, and
    the share of the textured tiles that agree in their colour too (``colour_share``)."""
    share: float
    textured: int
    inliers: int
    colour_share: float


class Features(NamedTuple):
    """An image's grey and RGB pixels at the keypoint scale, its ORB keypoints' positions and
    descriptors, and the side of its pixelation blocks there (0: not pixelated)."""
    grey: np.ndarray
    xy: np.ndarray
    descriptors: np.ndarray
    colour: np.ndarray
    block: float = 0.0


def features(image: Image.Image) -> Features | None:
    """What :func:`aligned_agreement` needs of one image (None: too few keypoints to align)."""
    found = detect(image)
    if found is None:
        return None
    grey, kps, des = found
    if des is None or len(kps) < MIN_MATCHES:
        return None
    colour = np.asarray(image.convert("RGB").resize(grey.shape[::-1], Image.BILINEAR), np.float32)
    return Features(grey, np.array([k.pt for k in kps], np.float32), des, colour, pixel_block(grey))


def pixel_block(grey: np.ndarray) -> float:
    """The side of a pixelated image's blocks, in its pixels, or 0 when it shows none. Seams
    recur every k pixels across rows and down columns: at one phase of k, the mean absolute
    difference between neighbours is many times the median phase's. The smallest such k is
    taken (its multiples recur too); JPEG's 8-pixel blocks and photo texture fall short."""
    g = np.asarray(grey, np.float32)
    steps = (np.abs(np.diff(g, axis=1)).mean(0), np.abs(np.diff(g, axis=0)).mean(1))
    best, best_ratio = 0.0, MIN_BLOCK_RATIO / 1.5
    for k in BLOCK_SIDES:
        ratios = []
        for d in steps:
            n = len(d) // k * k
            phases = d[:n].reshape(-1, k).mean(0) if n >= 2 * k else np.ones(k)
            ratios.append(float(phases.max() / (np.median(phases) + 1e-3)))
        if min(ratios) >= max(MIN_BLOCK_RATIO, 1.5 * best_ratio):
            best, best_ratio = float(k), min(ratios)
    return best


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


def _fitted_residuals(p: np.ndarray, q: np.ndarray, covered: np.ndarray) -> np.ndarray | None:
    """Tile mean colours (n, 3) -> each tile's RGB distance from the linear colour map p -> q (3x3
    plus offset) that fits the covered tiles best, refitted twice without the tiles far off it
    (an overlay or a different object is not part of a global colour edit); None when too few
    tiles are covered to fit one."""
    x = np.hstack([p, np.ones((len(p), 1), np.float32)])
    keep, residuals = covered, None
    for _ in range(3):
        if keep.sum() < MIN_COLOUR_TILES:
            return None
        colour_map = np.linalg.lstsq(x[keep], q[keep], rcond=None)[0]
        residuals = np.linalg.norm(q - x @ colour_map, axis=1)
        keep = covered & (residuals <= max(2.5 * float(np.median(residuals[covered])), 1e-3))
    return residuals


def _colour_residuals(p: np.ndarray, q: np.ndarray, covered: np.ndarray) -> np.ndarray | None:
    """:func:`_fitted_residuals` in the direction that fits better: a grayscale copy maps from
    its colour source, not to it."""
    found = [r for r in (_fitted_residuals(p, q, covered), _fitted_residuals(q, p, covered)) if r is not None]
    return min(found, key=lambda r: float(np.median(r[covered]))) if found else None


def tile_share(warped: np.ndarray, cover: np.ndarray, target: np.ndarray,
               colours: tuple[np.ndarray, np.ndarray] | None = None) -> tuple[float, int, float]:
    """Share of the textured, covered TILE x TILE tiles where ``warped`` and ``target`` (float
    grey, same shape) correlate above AGREE_NCC, how many tiles were textured, and the share
    that also agree in colour (``colours``: the two images' (h, w, 3) RGB, aligned like the
    grey ones; without them, or with too few tiles to fit a colour map, the grey share)."""
    h, w = (s - s % TILE for s in target.shape)
    p, q, c = (_tiles(x[:h, :w]) for x in (warped, target, cover))
    covered = c.mean(1) >= MIN_COVER
    p = p - p.mean(1, keepdims=True)
    q = q - q.mean(1, keepdims=True)
    sp, sq = p.std(1), q.std(1)
    counted = covered & ((sp >= FLAT_STD) | (sq >= FLAT_STD))
    agree = (p * q).mean(1) / np.maximum(sp * sq, 1e-6) > AGREE_NCC
    textured = int(counted.sum())
    if not textured:
        return 0.0, 0, 0.0
    share = float(agree[counted].sum()) / textured
    means = None if colours is None else [np.stack([_tiles(x[:h, :w, k]).mean(1) for k in range(3)], 1)
                                          for x in colours]
    residuals = None if means is None else _colour_residuals(*means, covered)
    if residuals is None:
        return share, textured, share
    return share, textured, float((agree & (residuals < COLOUR_TOL))[counted].sum()) / textured


def agreement(a: Image.Image, b: Image.Image) -> Agreement | None:
    """How well ``a`` (as given or mirrored, whichever aligns better), aligned onto ``b``, agrees
    with it tile by tile; None when the two have too few keypoint matches to align (no evidence
    either way)."""
    return aligned_agreement([features(a), features(ImageOps.mirror(a))], features(b))


def aligned_agreement(candidates: Sequence[Features | None], fb: Features | None) -> Agreement | None:
    """:func:`agreement` from :func:`features`: of the ``candidates`` (one image as given and
    mirrored, say) the one whose similarity to ``fb`` has the most inliers is aligned and compared.
    None when no candidate aligns, or when the aligned overlap holds under MIN_TEXTURED textured
    tiles (an alignment that shrinks one image to a few pixels of the other says nothing)."""
    found = [_similarity(fa, fb) for fa in candidates if fa is not None and fb is not None]
    found = [f for f in found if f is not None]
    if not found:
        return None
    best = max(found, key=lambda f: f.inliers)
    transform, grey_a, size = _refined(best), best.source.grey, fb.grey.shape[::-1]
    # compare at the coarser of the two resolutions: an image enlarged onto the other is blurred
    # by its enlargement, so the other is blurred as much (and the other way round); a pixelated
    # image's blocks are its resolution, so both are blurred over half a block
    scale = max(float(np.sqrt(abs(np.linalg.det(transform[:2, :2])))), 1e-3)
    ka, kb = best.source.block, fb.block
    sigma_b = max(BLUR * max(1.0, scale), 0.5 * kb, 0.5 * ka * scale)
    sigma_a = max(BLUR * max(1.0, 1.0 / scale), 0.5 * ka, 0.5 * kb / scale)
    warp = lambda x, flags=cv2.INTER_LINEAR: cv2.warpPerspective(x, transform, size, flags=flags)  # noqa: E731
    blur = lambda x, sigma: cv2.GaussianBlur(x.astype(np.float32), (0, 0), sigma)  # noqa: E731
    cover = warp(np.ones(grey_a.shape, np.float32), cv2.INTER_NEAREST)
    colours = (warp(blur(best.source.colour, sigma_a)), blur(fb.colour, sigma_b))
    share, textured, colour_share = tile_share(warp(blur(grey_a, sigma_a)), cover, blur(fb.grey, sigma_b), colours)
    if textured < MIN_TEXTURED:  # the aligned overlap is too small to judge: no evidence either way
        return None
    return Agreement(share, textured, best.inliers, colour_share)
