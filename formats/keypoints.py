"""Packed ORB keypoints: the block an image's keypoints are stored and sent in.

``KEYPOINT_BYTES`` per image: uint16 count, uint16 reserved, ``KEYPOINTS`` (x, y) uint16 in
1/16 pixel of the image scaled to ``KEYPOINT_SIDE``, then ``KEYPOINTS`` 32-byte descriptors.
``encoders.keypoints`` packs them; ``shards.verify`` unpacks and matches them.
"""
from __future__ import annotations

import numpy as np

KEYPOINTS = 256          # ORB keypoints kept per image (validation: 64 -> 0.95, 256 -> 0.97 mAP@100)
KEYPOINT_SIDE = 320      # longest side the image is scaled to before detection
DESCRIPTOR_BYTES = 32    # ORB: 256 bits
_XY_SCALE = 16.0
KEYPOINT_BYTES = 4 + KEYPOINTS * (4 + DESCRIPTOR_BYTES)


def pack(xy: np.ndarray, descriptors: np.ndarray) -> np.ndarray:
    """(m, 2) float pixel positions and (m, 32) uint8 descriptors -> (KEYPOINT_BYTES,) uint8."""
    m = min(len(xy), KEYPOINTS)
    out = np.zeros(KEYPOINT_BYTES, np.uint8)
    out[:2] = np.frombuffer(np.uint16(m).tobytes(), np.uint8)
    pos = np.clip(np.round(np.asarray(xy[:m], np.float32) * _XY_SCALE), 0, 65535).astype("<u2")
    out[4:4 + 4 * m] = pos.view(np.uint8).ravel()
    start = 4 + 4 * KEYPOINTS
    out[start:start + DESCRIPTOR_BYTES * m] = np.asarray(descriptors[:m], np.uint8).ravel()
    return out


def unpack(packed: np.ndarray | bytes) -> tuple[np.ndarray, np.ndarray]:
    """Packed keypoints -> ((m, 2) float32 positions, (m, 32) uint8 descriptors); m = 0 for an
    all-zero block (an entry stored without keypoints)."""
    buf = np.frombuffer(bytes(packed), np.uint8) if not isinstance(packed, np.ndarray) else packed
    if len(buf) != KEYPOINT_BYTES:
        raise ValueError(f"keypoints must be {KEYPOINT_BYTES} bytes, got {len(buf)}")
    (xy,), (descriptors,), (m,) = unpack_many(buf[None])
    return xy[:m], descriptors[:m]


def unpack_many(packed: np.ndarray | list) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Several packed blocks ((n, KEYPOINT_BYTES), or a list of blocks) -> ((n, KEYPOINTS, 2)
    float32 positions, (n, KEYPOINTS, 32) uint8 descriptors, (n,) counts): each block's first
    ``count`` rows are its keypoints, the rest zeros. Views of one array, no per-block copies."""
    blocks = np.asarray(packed if isinstance(packed, np.ndarray) else
                        [np.frombuffer(bytes(p), np.uint8) if not isinstance(p, np.ndarray) else p for p in packed],
                        np.uint8).reshape(-1, KEYPOINT_BYTES)
    counts = np.minimum(blocks[:, :2].copy().view("<u2")[:, 0], KEYPOINTS).astype(np.int64)
    xy = blocks[:, 4:4 + 4 * KEYPOINTS].copy().view("<u2").reshape(-1, KEYPOINTS, 2).astype(np.float32) / _XY_SCALE
    start = 4 + 4 * KEYPOINTS
    return xy, blocks[:, start:start + DESCRIPTOR_BYTES * KEYPOINTS].reshape(-1, KEYPOINTS, DESCRIPTOR_BYTES), counts

