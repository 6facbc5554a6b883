"""Binary Hamming indexes behind one interface: ``make_index(kind, bits, **params)``.

Kinds (see ``INDEX_KINDS``):

- ``mihc`` (default, ``shards/mihc.py``): compact multi-index hashing in numpy. The code is cut
  into ``nhash`` chunks of ``b`` bits; each chunk value owns a bucket of row numbers (uint32) in
  one flat postings array with a little slack per bucket, so most adds write in place; entries
  that find no room wait in a bucket-sorted run until the next re-layout, which comes at
  geometric intervals (adds are O(1) amortised). A query probes every bucket within ``nflip``
  bit flips of its chunks (in the tables and in the run) and re-ranks the candidates by their
  exact Hamming distance. By the pigeonhole principle every code within ``nhash * (nflip + 1) - 1``
  bits is found. The geometry follows the size: 8 x 16 bits with 1 flip (radius 15) below 2^21
  rows, then 6 x 21 bits with 2 flips (radius 17; 2^21-entry buckets stay sparse, so a query
  reads ~5x fewer candidates at 10M and ~20x fewer at 200M). Memory: the code, its int64 id, a
  tombstone bit and ``nhash`` uint32 postings (+15% slack): ~62 bytes per 128-bit code at 10M,
  ~52 at 200M.
- ``mih``: FAISS ``IndexBinaryMultiHash``: the same idea in C++, but its hash maps hold int64
  lists in ``unordered_map`` buckets (~170-300 bytes per code resident), and no removal.
- ``hnsw``: FAISS ``IndexBinaryHNSW``. No removal and no range search in FAISS: tombstones, and
  range search is emulated by a growing top-k search (so it is only as good as the graph recall).
- ``ivf``: FAISS ``IndexBinaryIVF``. Buffers (and brute-forces) codes until it has enough to train.
- ``flat``: FAISS ``IndexBinaryFlat`` in an ``IndexBinaryIDMap``: exact, true removal, O(n) scan.

Every kind returns exact Hamming distances, sorted by (distance, id); the approximate kinds may
miss neighbours, never misreport a distance. Missing results are padded with id -1 and distance
``MISSING_DISTANCE``. Ties at the k-th distance are broken by id among the candidates the index
produced (exactly for ``mihc``, which sees all of them). Searches share a read lock and run
concurrently (FAISS and numpy release the GIL); add/remove/compact take the write lock.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from shards.base import FORMAT_VERSION, META_FILE, MISSING_DISTANCE, BinaryIndex, RangeResult
from shards.faiss_kinds import FlatIndex, HNSWIndex, IVFIndex, MultiHashIndex
from shards.mihc import CompactMIHIndex

INDEX_KINDS = ("mihc", "mih", "hnsw", "ivf", "flat")
# chosen by measurement (bench/results/shard_*): mihc finds every planted duplicate up to 16 bits
# at 1M-100M codes in ~62 B/code; faiss mih needs 2-3x the memory; hnsw misses near-duplicates
DEFAULT_KIND = "mihc"

__all__ = ["BinaryIndex", "CompactMIHIndex", "FlatIndex", "HNSWIndex", "IVFIndex", "MultiHashIndex",
           "DEFAULT_KIND", "INDEX_KINDS", "MISSING_DISTANCE", "RangeResult", "load_index", "make_index"]


_KINDS: dict[str, type[BinaryIndex]] = {
    "mihc": CompactMIHIndex, "mih": MultiHashIndex, "hnsw": HNSWIndex, "ivf": IVFIndex,
    "flat": FlatIndex,
}


def make_index(kind: str | None = None, bits: int = 128, **params: Any) -> BinaryIndex:
    """Create an empty index of ``kind`` (None = ``DEFAULT_KIND``) for ``bits``-bit codes."""
    kind = DEFAULT_KIND if kind is None else kind
    if kind not in _KINDS:
        raise ValueError(f"unknown index kind {kind!r}; choose one of {', '.join(INDEX_KINDS)}")
    try:
        return _KINDS[kind](bits, **params)
    except TypeError as exc:
        raise ValueError(f"bad parameters for index kind {kind!r}: {exc}") from None


def load_index(path: str | os.PathLike) -> BinaryIndex:
    """Load an index written by ``BinaryIndex.save`` (reads ``index.json``, then the kind's files)."""
    src = Path(path)
    meta_path = src / META_FILE
    if not meta_path.is_file():
        raise FileNotFoundError(f"no index at {src} (missing {META_FILE})")
    try:
        meta = json.loads(meta_path.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"corrupt {meta_path}: {exc}") from None
    if meta.get("format") != FORMAT_VERSION:
        raise ValueError(f"unsupported index format {meta.get('format')!r} in {src}")
    index = make_index(meta["kind"], meta["bits"], **meta.get("params", {}))
    index._load(src, meta.get("state", {}))
    return index

