"""ORB keypoints of a decoded image, packed for storage and spatial verification
(layout: ``formats.keypoints``; matching and scoring: ``shards.verify``)."""
from __future__ import annotations

import cv2
import numpy as np
from PIL import Image

from formats.keypoints import KEYPOINT_BYTES, KEYPOINT_SIDE, KEYPOINTS, pack

cv2.setNumThreads(1)
_ORB = None
MIN_SIDE = 32  # ORB's pyramid and edge margin need this many pixels on the short side
# A thumbnail is enlarged to this long side before detection: at its own size ORB's pyramid
# finds too few corners to verify it (chosen on validation sources, independent suite).
ENLARGE_TO = 160
MIN_ENLARGE = 16  # an image thinner than this is not enlarged (1xN strips stay without keypoints)


def _orb():
    global _ORB
    if _ORB is None:  # small patches: keypoints survive near the edges of a crop
        _ORB = cv2.ORB_create(nfeatures=KEYPOINTS, scaleFactor=1.2, nlevels=8, edgeThreshold=15,
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


def extract(image: Image.Image) -> np.ndarray:
    """A decoded image -> its packed ORB keypoints (KEYPOINT_BYTES,) uint8, detected on the
    grey image scaled to KEYPOINT_SIDE on its longest side, or enlarged to ENLARGE_TO when it is
    a smaller thumbnail. An image thinner than MIN_SIDE there (1x1, 1xN strips) has none: it is
    still encoded, just never verified."""
    grey = _detection_scale(image.convert("L"))
    if min(grey.size) < MIN_SIDE:
        return np.zeros(KEYPOINT_BYTES, np.uint8)
    kps, des = _orb().detectAndCompute(np.asarray(grey), None)
    if des is None or not kps:
        return np.zeros(KEYPOINT_BYTES, np.uint8)
    return pack(np.array([k.pt for k in kps], np.float32), des)


def extract_query(image: Image.Image) -> np.ndarray:
    """A query image's packed keypoints as given and mirrored -> (2, KEYPOINT_BYTES) uint8.
    ORB is not mirror-invariant, so a hit that matched through a mirrored view is verified
    with the mirrored image's keypoints too (``rayapp.router.ShardRouter.verify``)."""
    return np.stack([extract(image), extract(image.transpose(Image.Transpose.FLIP_LEFT_RIGHT))])
