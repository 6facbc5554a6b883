"""Side vectors: a small int8 copy of each stored image's real-valued descriptor, for re-ranking.

The binary code finds candidates fast; for the few hundred candidates of a query, the cosine of
the query's descriptor with each stored one ranks far better than (weighted) Hamming distance:
on the held-out benchmark mAP@100 0.909 -> 0.938 (model card). A stored entry is then a record
``code || vector`` (``vector_bytes``: int8 values, one per code bit for deephash, then optionally
the image's 256-bit DCT hash, ``formats.vectors``), kept in the shard's store and WAL like the
code; the index sees only the code. When both sides carry a hash, a close pair gains a credit
(``hash_credit``): a second signal that keeps copies the learned code loses (a photo partly
covered by another, stripes across it). Writers and queries may carry a hash the shard does
not keep, or lack one it keeps: each pair is scored by what both have.
"""
from __future__ import annotations

import numpy as np

from formats.vectors import split

# (1 - cosine) is scaled to weighted-Hamming units (median distances matched on the validation
# benchmark), so that the prior costs of query and stored views keep their meaning.
VECTOR_SCALE = 32.0


# A pair whose side hashes (``formats.vectors``) are close gains a credit on its score: none from
# HASH_FROM differing bits up, growing linearly to HASH_CREDIT at HASH_FULL bits. Unrelated
# photos differ in about half of the 256 bits, and in under HASH_FROM in fewer than 1 pair in
# 100. Chosen on validation sources with the independent edit suite (MODEL_CARD.md).
HASH_FROM, HASH_FULL, HASH_CREDIT = 100, 60, 8.0


def vector_distance(query: np.ndarray, stored: np.ndarray, value_width: int) -> np.ndarray:
    """One query side vector (d,) against stored ones (m, d') -> float32 (m,):
    ``(1 - cosine) * VECTOR_SCALE`` of their first ``value_width`` int8 values, less the credit
    of their side hashes when both carry one (``hash_credit``); NaN where a stored vector is all
    zero (none stored)."""
    stored = np.asarray(stored)
    return paired_distances(np.broadcast_to(query, (len(stored), len(query))), stored, value_width)


def paired_distances(queries: np.ndarray, stored: np.ndarray, value_width: int) -> np.ndarray:
    """Row ``i`` of ``queries`` (m, d) against row ``i`` of ``stored`` (m, d') -> float32 (m,),
    as ``vector_distance``: a shard scores all its candidates of all of a query's views (each
    row paired with its view's vector) in one pass."""
    q_values, q_hash = split(np.asarray(queries), value_width)
    s_values, s_hash = split(np.asarray(stored), value_width)
    q = q_values.astype(np.float32)
    s = s_values.astype(np.float32)
    q /= np.maximum(np.linalg.norm(q, axis=1, keepdims=True), 1e-12)
    with np.errstate(invalid="ignore", divide="ignore"):
        cos = np.einsum("ij,ij->i", q, s) / np.linalg.norm(s, axis=1)
    out = ((1.0 - cos) * VECTOR_SCALE).astype(np.float32)
    if q_hash is not None and s_hash is not None:
        out -= _credit(_hash_bits(q_hash, s_hash), q_hash, s_hash)
    return out


def vector_distances(queries: np.ndarray, stored: np.ndarray, value_width: int) -> np.ndarray:
    """Query side vectors (n, d) against stored ones (m, d') -> float32 (n, m), as
    ``vector_distance``."""
    q_values, q_hash = split(np.asarray(queries), value_width)
    s_values, s_hash = split(np.asarray(stored), value_width)
    q = q_values.astype(np.float32)
    s = s_values.astype(np.float32)
    qn = q / np.maximum(np.linalg.norm(q, axis=1, keepdims=True), 1e-12)
    norms = np.linalg.norm(s, axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        cos = (qn @ s.T) / norms[None, :]
    out = ((1.0 - cos) * VECTOR_SCALE).astype(np.float32)
    if q_hash is not None and s_hash is not None:
        out -= hash_credit(q_hash, s_hash)
    return out


def hash_credit(queries: np.ndarray, stored: np.ndarray) -> np.ndarray:
    """Packed side hashes (n, 32) and (m, 32) uint8 -> the score credit of each pair (n, m):
    0 at HASH_FROM or more differing bits, HASH_CREDIT at HASH_FULL or fewer, linear between; 0
    where either hash is all zero (none computed)."""
    q, s = np.asarray(queries)[:, None, :], np.asarray(stored)[None, :, :]
    return _credit(_hash_bits(q, s), q, s)


def _hash_bits(q: np.ndarray, s: np.ndarray) -> np.ndarray:
    """Differing bits of packed hashes, summed over the last axis (shapes broadcast)."""
    q = np.ascontiguousarray(q).view(np.uint64)
    s = np.ascontiguousarray(s).view(np.uint64)
    return np.bitwise_count(q ^ s).sum(axis=-1, dtype=np.int32)


def _credit(bits: np.ndarray, q: np.ndarray, s: np.ndarray) -> np.ndarray:
    """The credit of pairs ``bits`` apart (``hash_credit``), 0 where either hash is all zero."""
    credit = HASH_CREDIT * np.clip((HASH_FROM - bits) / float(HASH_FROM - HASH_FULL), 0.0, 1.0)
    credit[~(q.any(axis=-1) & s.any(axis=-1))] = 0.0
    return credit.astype(np.float32)


def records(codes: np.ndarray, vectors: np.ndarray | None,
            keypoints: np.ndarray | None = None) -> np.ndarray:
    """Records to store, ``code [|| vector] [|| keypoints]`` (n, ...) uint8: the codes, their
    int8 side vectors unless there are none (an encoder without them, an item added by code),
    then the images' packed keypoints (``shards.verify``) if given. A shard fits what it gets to
    what it stores (``ShardActor.add``): it zero-fills a missing part (no vector: the entry
    ranks by Hamming distance; no keypoints: it is never verified) and drops a part it does not
    keep."""
    codes = np.ascontiguousarray(codes, dtype=np.uint8)
    parts = [codes]
    for name, part in (("vectors", vectors), ("keypoints", keypoints)):
        if part is None:
            continue
        arr = np.asarray(part)
        if arr.ndim != 2 or len(arr) != len(codes):
            raise ValueError(f"{name} must have shape ({len(codes)}, d), got {arr.shape}")
        parts.append(arr.view(np.uint8) if arr.dtype.itemsize == 1 else arr.astype(np.uint8))
    return parts[0] if len(parts) == 1 else np.concatenate(parts, axis=1)
