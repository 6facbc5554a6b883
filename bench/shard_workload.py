"""The codes a shard benchmark indexes and the near-duplicate queries it asks.

Planted workloads flip an exact number of random bits in stored codes, so the right answer and its
distance are known by construction; real workloads put encoder codes of real images among random
background codes. Ids are scattered like the 64-bit id hashes a shard stores, and map back to rows.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from bench.shard_config import BUCKETS, BenchError
from bench.shard_real_codes import RealCodes

_ID_MULT = 0x9E3779B97F4A7C15  # odd: row -> id is a bijection mod 2^63 (ids look like 64-bit hashes)
_ID_MASK = (1 << 63) - 1
_ID_INV = pow(_ID_MULT, -1, 1 << 63)


def ids_for_rows(rows: np.ndarray) -> np.ndarray:
    """Scattered int64 ids (like the 64-bit id hashes a shard uses) that map back to rows."""
    return ((rows.astype(np.uint64) * np.uint64(_ID_MULT)) & np.uint64(_ID_MASK)).astype(np.int64)


def rows_for_ids(ids: np.ndarray) -> np.ndarray:
    """The inverse of ids_for_rows: the row each id was made from."""
    return ((ids.astype(np.uint64) * np.uint64(_ID_INV)) & np.uint64(_ID_MASK)).astype(np.int64)


def flip_bits(codes: np.ndarray, dists: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Copy of codes with exactly dists[i] distinct random bits flipped in row i."""
    nq, nbytes = codes.shape
    bits = nbytes * 8
    order = np.argsort(rng.random((nq, bits)), axis=1)
    mask = np.zeros((nq, bits), dtype=np.uint8)
    take = np.arange(bits)[None, :] < dists[:, None]
    mask[np.repeat(np.arange(nq), bits)[take.reshape(-1)], order[take]] = 1
    return codes ^ np.packbits(mask, axis=1)


@dataclass
class Workload:
    """Stored codes, queries, and for each query the row it duplicates and their distance."""

    codes: np.ndarray          # (n, B) uint8
    queries: np.ndarray        # (q, B) uint8
    expected_rows: np.ndarray  # (q,) int64
    distances: np.ndarray      # (q,) int32: Hamming distance query <-> expected row
    source: str                # "planted" or "real"

    @property
    def expected_ids(self) -> np.ndarray:
        """The ids the index should return for each query (the scattered ids of expected_rows)."""
        return ids_for_rows(self.expected_rows)


def planted_workload(n: int, bits: int, per_bucket: int, seed: int) -> Workload:
    """n uniform random codes; per_bucket queries at each distance in BUCKETS, shuffled."""
    rng = np.random.default_rng([seed, n])
    codes = rng.integers(0, 256, size=(n, bits // 8), dtype=np.uint8)
    nq = per_bucket * len(BUCKETS)
    rows = rng.choice(n, size=nq, replace=nq > n)
    dists = np.repeat(np.array(BUCKETS, dtype=np.int32), per_bucket)
    perm = rng.permutation(nq)
    rows, dists = rows[perm], dists[perm]
    return Workload(codes, flip_bits(codes[rows], dists, rng), rows.astype(np.int64), dists, "planted")


def real_workload(n: int, real: RealCodes, seed: int) -> Workload:
    """Random background codes with the real references at random rows; real augmented queries."""
    m, nbytes = real.refs.shape
    if n < m:
        raise BenchError(f"size {n} is smaller than the {m} real reference codes")
    rng = np.random.default_rng([seed, n, 1])
    codes = rng.integers(0, 256, size=(n, nbytes), dtype=np.uint8)
    rows = rng.choice(n, size=m, replace=False).astype(np.int64)
    codes[rows] = real.refs
    expected = rows[real.ref_index]
    dists = np.bitwise_count(real.queries ^ codes[expected]).sum(axis=1).astype(np.int32)
    return Workload(codes, real.queries.copy(), expected, dists, "real")


def bucket_labels(dists: np.ndarray, source: str) -> list[tuple[str, np.ndarray]]:
    """(label, mask) per distance bucket: '4','8','12','16' (upper bounds), then '>16' and '<=16'."""
    out, lower = [], -1
    for b in BUCKETS:
        mask = (dists > lower) & (dists <= b)
        if mask.any():
            out.append((str(b), mask))
        lower = b
    far = dists > BUCKETS[-1]
    if far.any():
        out.append((f">{BUCKETS[-1]}", far))
    near = dists <= BUCKETS[-1]
    if near.any():
        out.append((f"<={BUCKETS[-1]}", near))
    return out
