"""ORB keypoints of a decoded image, packed for storage and spatial verification
(layout: ``formats.keypoints``; matching and scoring: ``shards.verify``)."""
from __future__ import annotations

from typing import Sequence

import cv2
import numpy as np
from PIL import Image

from formats.keypoints import KEYPOINT_BYTES, KEYPOINT_SIDE, KEYPOINTS, pack

cv2.setNumThreads(1)
_ORB = None
SCALE_FACTOR = 1.2  # ORB's pyramid: each level 1.2 times smaller
MIN_SIDE = 32  # ORB's pyramid and edge margin need this many pixels on the short side
# A thumbnail is enlarged to this long side before detection: at its own size ORB's pyramid
# finds too few corners to verify it (chosen on validation sources, independent suite).
ENLARGE_TO = 160
MIN_ENLARGE = 16  # an image thinner than this is not enlarged (1xN strips stay without keypoints)


def _orb():
    global _ORB
    if _ORB is None:  # small patches: keypoints survive near the edges of a crop
        _ORB = cv2.ORB_create(nfeatures=KEYPOINTS, scaleFactor=SCALE_FACTOR, nlevels=8, edgeThreshold=15,
                              patchSize=15, fastThreshold=10)
    return _ORB


def _detection_scale(grey: Image.Image) -> Image.Image:
    """``grey`` shrunk to KEYPOINT_SIDE on its long side, or enlarged to ENLARGE_TO when its
    long side is shorter and its short side at least MIN_ENLARGE."""
    w, h = grey.size
    if max(w, h) < ENLARGE_TO and min(w, h) >= MIN_ENLARGE:
        f = ENLARGE_TO / max(w, h)
        return grey.resize((round(w * f), round(h * f)), Image.BICUBIC)
    grey.thumbnail((KEYPOINT_SIDE, KEYPOINT_SIDE), Image.BILINEAR)
    return grey


def _grey(image: Image.Image) -> np.ndarray | None:
    """The grey image ORB runs on (``_detection_scale``), or None when it is thinner than
    MIN_SIDE there (1x1, 1xN strips): such an image is still encoded, just never verified."""
    grey = _detection_scale(image.convert("L"))
    return np.asarray(grey) if min(grey.size) >= MIN_SIDE else None


def _packed(kps, des) -> np.ndarray:
    if des is None or not kps:
        return np.zeros(KEYPOINT_BYTES, np.uint8)
    return pack(np.array([k.pt for k in kps], np.float32), des)


def _mirrored(kps, width: int) -> list:
    """ORB keypoints of an image, as the same corners of its left-right mirror: x mirrored in
    its own pyramid level (a level is round(width / 1.2**octave) wide), orientation reflected
    about the vertical (theta -> 180 - theta degrees)."""
    out = []
    for k in kps:
        scale = SCALE_FACTOR ** k.octave
        x = (round(width / scale) - 1 - k.pt[0] / scale) * scale
        out.append(cv2.KeyPoint(x, k.pt[1], k.size, (180.0 - k.angle) % 360.0, k.response, k.octave, k.class_id))
    return out


def detect(image: Image.Image) -> tuple[np.ndarray, list, np.ndarray | None] | None:
    """ORB on a decoded image -> (the grey image it ran on, its keypoints, their descriptors),
    detected on the grey image scaled to KEYPOINT_SIDE on its longest side, or enlarged to
    ENLARGE_TO when it is a smaller thumbnail; None for an image too thin to detect on (``_grey``)."""
    grey = _grey(image)
    return None if grey is None else (grey, *_orb().detectAndCompute(grey, None))


def extract(image: Image.Image) -> np.ndarray:
    """A decoded image -> its packed ORB keypoints (KEYPOINT_BYTES,) uint8 (:func:`detect`); all
    zeros for an image too thin to detect on."""
    found = detect(image)
    return np.zeros(KEYPOINT_BYTES, np.uint8) if found is None else _packed(*found[1:])


def extract_query(image: Image.Image) -> np.ndarray:
    """A query image's packed keypoints as given and mirrored -> (2, KEYPOINT_BYTES) uint8.
    ORB is not mirror-invariant, so a hit that matched through a mirrored view is verified
    with the mirrored image's keypoints too (``rayapp.router.ShardRouter.verify``). FAST corners
    are, so the mirror's keypoints are the given ones mirrored, and only their descriptors are
    computed again, on the mirrored image: a third of a second detection's time."""
    found = detect(image)
    if found is None:
        return np.zeros((2, KEYPOINT_BYTES), np.uint8)
    grey, kps, des = found
    mirror = np.ascontiguousarray(grey[:, ::-1])
    return np.stack([_packed(kps, des), _packed(*_orb().compute(mirror, _mirrored(kps, grey.shape[1])))])


def extract_query_views(image: Image.Image, boxes: Sequence[tuple]) -> np.ndarray:
    """A query's keypoint blocks: ``extract_query`` of the whole image (as given, mirrored),
    then of each box's crop (``encoders.tta.searched_boxes``) -> (2 + 2 * len(boxes),
    KEYPOINT_BYTES). A framed or pasted photo's own keypoints, detected at the crop's scale,
    verify a hit that matched through its crop: most of the whole query's lie outside it."""
    return np.concatenate([extract_query(image)] + [extract_query(image.crop(b)) for b in boxes])
