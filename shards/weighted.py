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
    codes = np.asarray(codes, dtype=np.uint8).reshape(-1, len(query))
    weights = np.asarray(weights, np.float32)
    return paired_weighted_hamming(np.broadcast_to(query, codes.shape),
                                   np.broadcast_to(weights, (len(codes), len(weights))), codes)


def paired_weighted_hamming(queries: np.ndarray, weights: np.ndarray, codes: np.ndarray) -> np.ndarray:
    """Row ``i`` of packed ``queries`` (m, B) with its confidences ``weights`` (m, bits) against
    row ``i`` of packed ``codes`` (m, B) -> float32 (m,), as ``weighted_hamming``: a shard scores
    all its candidates of all of a query's views in one pass."""
    x = np.bitwise_xor(np.asarray(codes, dtype=np.uint8), np.asarray(queries, dtype=np.uint8))
    flips = np.unpackbits(x, axis=-1, bitorder="big").astype(np.float32)
    return np.einsum("ij,ij->i", flips, np.asarray(weights, np.float32))
