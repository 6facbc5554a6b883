"""Side vectors as stored: int8, one row per image, for re-ranking by cosine (``shards.vectors``)."""
from __future__ import annotations

import numpy as np


def quantize(vectors: np.ndarray) -> np.ndarray:
    """float (n, d) -> int8 (n, d), each row scaled so its largest magnitude is 127 (the
    cosine does not depend on a row's scale)."""
    v = np.asarray(vectors, dtype=np.float32)
    peak = np.abs(v).max(axis=1, keepdims=True) if v.size else np.ones((len(v), 1), np.float32)
    return np.round(v * (127.0 / np.maximum(peak, 1e-12))).astype(np.int8)
