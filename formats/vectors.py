"""Side vectors as stored: int8, one row per image, for re-ranking by cosine (``shards.vectors``)."""
from __future__ import annotations

import numpy as np


def quantize(vectors: np.ndarray) -> np.ndarray:
    """float (n, d) -> int8 (n, d), each row scaled so its largest magnitude is 127 (the
    cosine does not depend on a row's scale)."""
    v = np.asarray(vectors, dtype=np.float32)
    peak = np.abs(v).max(axis=1, keepdims=True) if v.size else np.ones((len(v), 1), np.float32)
    return np.round(v * (127.0 / np.maximum(peak, 1e-12))).astype(np.int8)


# A side vector may carry, after its int8 values (one per code bit), the image's 256-bit DCT hash
# (``encoders.dct_hash``): a second signal, scored with the cosine (``shards.vectors``).
SIDE_HASH_BYTES = 32


def with_side_hash(values: np.ndarray, hashes: np.ndarray) -> np.ndarray:
    """int8 values (n, d) and packed hashes (n, SIDE_HASH_BYTES) uint8 -> side vectors
    (n, d + SIDE_HASH_BYTES) int8, the layout ``split`` reads."""
    return np.concatenate([np.asarray(values, np.int8), np.asarray(hashes, np.uint8).view(np.int8)], axis=1)


def split(vectors: np.ndarray, value_width: int) -> tuple[np.ndarray, np.ndarray | None]:
    """Side vectors (n, w) -> (their int8 values (n, value_width), their packed hashes
    (n, SIDE_HASH_BYTES) uint8, or None when the vectors carry none)."""
    v = np.asarray(vectors)
    if v.shape[1] < value_width + SIDE_HASH_BYTES:
        return v[:, :value_width], None
    return v[:, :value_width], np.ascontiguousarray(v[:, value_width:value_width + SIDE_HASH_BYTES]).view(np.uint8)
