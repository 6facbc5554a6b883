"""Weighted Hamming distance: how a shard that stores no side vectors ranks its candidates for a
query that carries bit confidences (deephash's, ``Encoder.encode_with_weights``).

Stored codes stay binary; only the query keeps its real-valued confidences. A bit the encoder
was unsure of costs little when it flips, so copies rank above images that merely tie in
Hamming distance (the model card gives the figures).
"""
from __future__ import annotations

import numpy as np


def weighted_hamming(query: np.ndarray, weights: np.ndarray, codes: np.ndarray) -> np.ndarray:
    """Asymmetric distance from one query (packed (B,), its bit confidences (bits,)) to packed
    codes (m, B) -> float32 (m,): the sum of the confidences of the bits that differ."""
    x = np.bitwise_xor(np.asarray(codes, dtype=np.uint8).reshape(-1, len(query)), query[None, :])
    return np.unpackbits(x, axis=-1, bitorder="big").astype(np.float32) @ np.asarray(weights, np.float32)
