"""The dense bucket tables of compact multi-index hashing (``shards.mihc``), as plain arrays.

A code is cut into ``nhash`` chunks of ``b`` bits; table t maps each chunk value v to a bucket
``post[starts[t, v] : starts[t, v] + counts[t, v]]`` of uint32 row numbers, with spare room up
to ``starts[t, v + 1]``. Bucket numbers over all tables are flat: ``t * 2^b + v``. These
functions hold the array arithmetic (chunk keys, filling spare room, re-laying out with slack)
apart from the index's bookkeeping of rows, tombstones and pending entries.
"""
from __future__ import annotations

import numpy as np

from shards.base import concat_ranges


def chunk_keys(codes: np.ndarray, bits: int, b: int, nhash: int) -> np.ndarray:
    """(n, B) packed codes -> (n, nhash) int64 chunk values (MSB-first bit order, like
    np.packbits)."""
    mask = (1 << b) - 1
    if len(codes) == 1:  # the latency path: plain integers beat a dozen tiny numpy calls
        x = int.from_bytes(codes[0].tobytes(), "big")
        return np.array([[(x >> (bits - (t + 1) * b)) & mask for t in range(nhash)]],
                        dtype=np.int64)
    if b % 8 == 0:  # byte-aligned chunks: combine whole bytes, all tables at once
        parts = codes[:, : nhash * b // 8].reshape(len(codes), nhash, b // 8).astype(np.int64)
        out = parts[:, :, 0]
        for j in range(1, b // 8):
            out = (out << 8) | parts[:, :, j]
        return np.ascontiguousarray(out)
    out = np.empty((len(codes), nhash), dtype=np.int64)
    for t in range(nhash):
        s = t * b
        first, last = s // 8, (s + b - 1) // 8
        acc = np.zeros(len(codes), dtype=np.int64)
        for j in range(first, last + 1):
            acc = (acc << 8) | codes[:, j]
        out[:, t] = (acc >> ((last + 1) * 8 - (s + b))) & mask
    return out


def place(buckets: np.ndarray, rows: np.ndarray, starts: np.ndarray, counts: np.ndarray,
          post: np.ndarray, nbuckets: int) -> tuple[np.ndarray, np.ndarray]:
    """Write entries (flat bucket number, row) into their buckets' spare room, in place (``post``
    and ``counts``); returns the (buckets as uint32, rows) of the entries that did not fit."""
    counts, starts = counts.reshape(-1), starts.reshape(-1)
    order = np.argsort(buckets)
    c, rows = buckets[order].astype(np.int64), rows[order]
    change = np.empty(len(c), dtype=bool)
    change[0] = True
    np.not_equal(c[1:], c[:-1], out=change[1:])
    head = np.flatnonzero(change)
    size = np.diff(head, append=len(c))
    rank = np.arange(len(c)) - np.repeat(head, size)
    u = c[head]
    used = counts[u].astype(np.int64)
    first = starts[u + u // nbuckets].astype(np.int64)  # starts has 2^b + 1 entries per table
    room = np.maximum(starts[u + u // nbuckets + 1].astype(np.int64) - first - used, 0)
    fits = rank < np.repeat(room, size)
    post[(np.repeat(first + used, size) + rank)[fits]] = rows[fits]
    counts[u] += np.minimum(size, room).astype(np.uint32)
    return c[~fits].astype(np.uint32), rows[~fits]


def relayout(starts: np.ndarray, counts: np.ndarray, post: np.ndarray, extra: np.ndarray,
             growth: float) -> tuple[np.ndarray, np.ndarray]:
    """New bucket capacities = need * growth (randomly rounded); move the postings over ->
    (new post, new starts).

    ``extra`` (nhash, 2^b) counts the entries about to arrive per bucket. Done table by table.
    Capacities never shrink, so the new table is the old one with extra slots inserted at bucket
    ends: one boolean-mask copy per table.
    """
    nh, nb = counts.shape
    total_bound = (int(counts.sum(dtype=np.int64)) + int(extra.sum())) * growth + nh * nb + len(post)
    new_starts = np.empty_like(starts, dtype=np.uint32 if total_bound < 2 ** 32 else np.int64)
    # per-bucket fractions in [0, 1) (Knuth multiplicative hash) for rounding the slack
    jitter = ((np.arange(nb, dtype=np.uint64) * np.uint64(2654435761)) % np.uint64(1 << 32)
              ).astype(np.float64) / float(1 << 32)
    offset = 0
    for t in range(nh):
        need = counts[t].astype(np.int64) + extra[t]
        # proportional slack, rounded up or down at random (a fixed hash of the bucket),
        # so that the many small buckets of wide chunks get (growth - 1) slack on average
        caps = need + np.floor(need * (growth - 1) + jitter).astype(np.int64)
        np.maximum(caps, np.diff(starts[t].astype(np.int64)), out=caps)
        ends = np.cumsum(caps)
        new_starts[t, 1:] = offset + ends
        new_starts[t, 0] = offset
        offset += int(ends[-1])
    new_post = np.empty(offset, dtype=np.uint32)
    for t in range(nh):
        old_t = starts[t].astype(np.int64)
        new_t = new_starts[t].astype(np.int64)
        old_caps = np.diff(old_t)
        gaps = np.diff(new_t) - old_caps  # slots added at the end of each bucket
        keep = np.ones(new_t[-1] - new_t[0], dtype=bool)
        keep[concat_ranges(new_t[:-1] - new_t[0] + old_caps, gaps)] = False
        new_post[new_t[0]:new_t[-1]][keep] = post[old_t[0]:old_t[-1]]
    return new_post, new_starts
