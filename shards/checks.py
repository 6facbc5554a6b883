"""Validation of the arguments of ``ShardActor``'s calls, which arrive from other processes.

Every check raises ValueError with a message a client can act on, before the shard takes its
write lock or logs anything, so that a bad request never reaches the WAL.
"""
from __future__ import annotations

import json
from typing import Any

import numpy as np

from shards.verify import KEYPOINT_BYTES

MAX_ID_BYTES = 1024
MAX_META_BYTES = 64 * 1024
MAX_K = 10_000


def check_ids(ids: Any) -> list[str]:
    """A list of non-empty string ids, each at most ``MAX_ID_BYTES`` in UTF-8."""
    if isinstance(ids, str) or not isinstance(ids, (list, tuple)):
        raise ValueError(f"ids must be a list of strings, got {type(ids).__name__}")
    for i in ids:
        if not isinstance(i, str) or not i:
            raise ValueError(f"every id must be a non-empty string, got {i!r}")
        if len(i.encode("utf-8")) > MAX_ID_BYTES:
            raise ValueError(f"id too long ({len(i.encode('utf-8'))} bytes > {MAX_ID_BYTES}): "
                             f"{i[:40]!r}...")
    return list(ids)


def check_metas(metas: Any, n: int) -> list[str | None]:
    """JSON text per item; None = not given (a new item gets {}, an existing one keeps its)."""
    if metas is None:
        return [None] * n
    if not isinstance(metas, (list, tuple)) or len(metas) != n:
        raise ValueError(f"metas must be a list of {n} dicts (or None)")
    out: list[str | None] = []
    for m in metas:
        if m is None:
            out.append(None)
            continue
        if not isinstance(m, dict):
            raise ValueError(f"each meta must be a dict, got {type(m).__name__}")
        try:
            text = json.dumps(m, separators=(",", ":"), sort_keys=True, ensure_ascii=False)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"meta is not JSON-serialisable: {exc}") from None
        if len(text.encode("utf-8")) > MAX_META_BYTES:
            raise ValueError(f"meta too large ({len(text)} chars > {MAX_META_BYTES} bytes)")
        out.append(text)
    return out


def check_k(k: Any) -> int:
    """A search's k: an integer in 0..MAX_K."""
    if not isinstance(k, (int, np.integer)) or not 0 <= k <= MAX_K:
        raise ValueError(f"k must be an integer in 0..{MAX_K}, got {k!r}")
    return int(k)


def check_radius(radius: Any) -> int | None:
    """A search's radius: a non-negative integer, or None for no radius."""
    if radius is not None and (not isinstance(radius, (int, np.integer)) or radius < 0):
        raise ValueError(f"radius must be a non-negative integer or None, got {radius!r}")
    return radius


def check_views(views: Any, n: int) -> list[tuple[int, str, float]]:
    """A search's query views: one (query, view name, prior cost >= 0) per code, the queries
    numbered 0, 1, ... in order."""
    try:
        out = [(int(q), str(name), float(cost)) for q, name, cost in views]
    except (TypeError, ValueError):
        raise ValueError(f"views must be (query, name, cost) triples, got {views!r:.80}") from None
    queries = [q for q, _, _ in out]
    numbered = not queries or queries[0] == 0 and all(b - a in (0, 1) for a, b in zip(queries, queries[1:]))
    if len(out) != n or not numbered or any(not c >= 0 for _, _, c in out):
        raise ValueError(f"views must give one (query, name, cost >= 0) per code, queries 0, 1, ... in "
                         f"order: {n} codes, got {views!r:.80}")
    return out


def check_vectors(vectors: Any, n: int, vector_bytes: int, value_width: int) -> bool:
    """Whether a search of ``n`` queries is scored by their side ``vectors``: they are given
    and the shard stores ``vector_bytes`` > 0 of its own; then they must be (n, w) with at least
    the ``value_width`` int8 values (a side hash after them is optional on either side)."""
    scored = vectors is not None and vector_bytes > 0
    shape = np.shape(vectors)
    if scored and (len(shape) != 2 or shape[0] != n or shape[1] < value_width):
        raise ValueError(f"vectors must have shape ({n}, {vector_bytes}), got {shape}")
    return scored


def check_weights(weights: Any, n: int, bits: int) -> np.ndarray:
    """``n`` queries' bit confidences as float32 (n, bits), else ValueError."""
    shape = np.shape(weights)
    if shape != (n, bits):
        raise ValueError(f"weights must have shape ({n}, {bits}), got {shape}")
    return np.asarray(weights, dtype=np.float32)


def check_limit(limit: Any) -> int:
    """A page size: an integer in 1..MAX_K."""
    if not isinstance(limit, (int, np.integer)) or not 1 <= limit <= MAX_K:
        raise ValueError(f"limit must be an integer in 1..{MAX_K}, got {limit!r}")
    return int(limit)


def check_keypoint_blocks(keypoints: np.ndarray | bytes, which: list[int] | None,
                          n: int) -> tuple[np.ndarray, list[int]]:
    """A query's packed keypoints -> ((m, KEYPOINT_BYTES) blocks, the blocks of each of ``n``
    ids: 0 for each when ``which`` is None, -1 meaning the best of all, a list the best of
    those)."""
    blocks = np.frombuffer(bytes(keypoints), np.uint8)
    if len(blocks) == 0 or len(blocks) % KEYPOINT_BYTES:
        raise ValueError(f"keypoints must be blocks of {KEYPOINT_BYTES} bytes, got {len(blocks)}")
    blocks = blocks.reshape(-1, KEYPOINT_BYTES)
    try:
        which = [0] * n if which is None else [_block_entry(w) for w in which]
    except (TypeError, ValueError):
        which = None
    if which is None or len(which) != n or not all(_names_blocks(w, len(blocks)) for w in which):
        raise ValueError(f"which must name one of {len(blocks)} keypoint blocks, -1 or a list of blocks per id")
    return blocks, which


def _block_entry(w: Any) -> int | list[int]:
    return [int(b) for b in w] if isinstance(w, (list, tuple)) else int(w)


def _names_blocks(w: int | list[int], m: int) -> bool:
    return -1 <= w < m if isinstance(w, int) else bool(w) and all(0 <= b < m for b in w)


def check_verify(verify: Any, queries: int) -> tuple[int, bytes, dict[str, int]] | None:
    """A search's verification of its top hits: None, or (depth >= 0, the query's packed
    keypoint blocks, each view name's blocks: 0 as given, -1 the best of all, or a list) for a
    search of one image query."""
    if verify is None:
        return None
    try:
        depth, keypoints = int(verify[0]), bytes(verify[1])
        blocks = {str(k): _block_entry(v) for k, v in verify[2].items()}
    except (TypeError, ValueError, IndexError, AttributeError):
        raise ValueError(f"verify must be (depth, keypoints, view blocks), got {verify!r:.80}") from None
    if depth < 0 or queries != 1:
        raise ValueError(f"verify needs depth >= 0 and one image query, got depth {depth} for {queries}")
    return depth, keypoints, blocks
