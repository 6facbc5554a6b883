"""Compiled (numba) descriptor matching for verification: each query keypoint's two nearest
stored ones, per stored image, in one pass.

Verifying a query against a few dozen stored images compares a few hundred ORB descriptors
with a few thousand. Through FAISS's full Hamming matrix, the numpy passes over it (argmin,
gather, mask, second min) and the padding of short sets cost as much as the distances. Here one
row of distances (a query keypoint against one stored image) is computed into a buffer in L1
and reduced to its best two there, so only the (query, image) answers are written; the
kernel releases the GIL so a shard's or a job's concurrent verifications run in parallel.

Compiled code is cached on disk (``cache=True``), as in ``shards.kernels``; ``warm_up``
compiles it once (``make install`` does) so no query pays the compile.
"""
from __future__ import annotations

import numpy as np
from numba import njit, types
from numba.core.extending import intrinsic

from formats.keypoints import DESCRIPTOR_BYTES

FAR = np.iinfo(np.int32).max  # the second distance of a set with a single keypoint
_NONE = np.int64(1) << np.int64(40)  # above every (distance, index) key
_INDEX_BITS = np.int64(16)  # a key is distance << 16 | index: sets hold at most 65,536 rows
_INDEX_MASK = (np.int64(1) << _INDEX_BITS) - np.int64(1)


@intrinsic
def _ctpop(typingctx, x):
    """LLVM's popcount of a uint64, which vectorises (AVX-512 ``vpopcntq`` where the CPU has it)."""
    def codegen(context, builder, signature, args):
        return builder.ctpop(args[0])
    return types.uint64(types.uint64), codegen


@njit(cache=True, nogil=True)
def _two_nearest_words(q, s, counts):
    """For query descriptors ``q`` (m, 4) uint64 and stored sets ``s`` (n, 4, width) uint64 (word
    by word, so a row of distances is one vector loop) of which set j holds ``counts[j]``
    columns: the (m, n) nearest distance, second-nearest distance and nearest index. Each
    distance is packed with its index into one key, so the smallest key is the nearest with the
    first of equals, and the smallest of the rest is the second (equal to the first on a tie):
    two branch-free minimum passes over a row held in L1."""
    m, n = q.shape[0], s.shape[0]
    first = np.empty((m, n), dtype=np.int32)
    second = np.empty((m, n), dtype=np.int32)
    nearest = np.empty((m, n), dtype=np.int64)
    keys = np.empty(s.shape[2], dtype=np.int64)
    for j in range(n):
        c = counts[j]
        s0, s1, s2, s3 = s[j, 0], s[j, 1], s[j, 2], s[j, 3]
        for i in range(m):
            q0, q1, q2, q3 = q[i, 0], q[i, 1], q[i, 2], q[i, 3]
            lo = _NONE
            for k in range(c):
                d = _ctpop(q0 ^ s0[k]) + _ctpop(q1 ^ s1[k]) + _ctpop(q2 ^ s2[k]) + _ctpop(q3 ^ s3[k])
                keys[k] = (np.int64(d) << _INDEX_BITS) | k
                lo = min(lo, keys[k])
            lo2 = _NONE
            for k in range(c):
                lo2 = min(lo2, keys[k] if keys[k] != lo else _NONE)
            first[i, j], nearest[i, j] = lo >> _INDEX_BITS, lo & _INDEX_MASK
            second[i, j] = lo2 >> _INDEX_BITS if lo2 < _NONE else FAR
    return first, second, nearest


def two_nearest_sets(query: np.ndarray, stored: np.ndarray, counts: np.ndarray
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Packed ORB descriptors (``DESCRIPTOR_BYTES``, 32: four words): ``query`` (m, 32) uint8 and
    ``stored`` (n, width, 32) uint8,
    set j's first ``counts[j]`` rows its own (the rest never read). Returns (first, second,
    nearest), each (m, n): what the full Hamming matrix's argmin and two smallest values would
    give."""
    if query.shape[1] != DESCRIPTOR_BYTES or stored.shape[2] != DESCRIPTOR_BYTES:
        raise ValueError(f"descriptors of {query.shape[1]} and {stored.shape[2]} bytes: {DESCRIPTOR_BYTES} expected")
    if stored.shape[1] > 1 << int(_INDEX_BITS):
        raise ValueError(f"sets of {stored.shape[1]} descriptors: at most {1 << int(_INDEX_BITS)}")
    q = np.ascontiguousarray(query, np.uint8).view(np.uint64)
    s = np.ascontiguousarray(np.ascontiguousarray(stored, np.uint8).view(np.uint64).transpose(0, 2, 1))
    return _two_nearest_words(q, s, np.ascontiguousarray(counts, np.int64))


def warm_up() -> None:
    """Compile (or load from the disk cache) the kernel before the first verification."""
    one = np.zeros((1, DESCRIPTOR_BYTES), np.uint8)
    two_nearest_sets(one, np.stack([one, one], axis=1), np.array([2]))
