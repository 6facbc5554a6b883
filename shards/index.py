"""Binary Hamming indexes behind one interface: ``make_index(kind, bits, **params)``.

Kinds (see ``INDEX_KINDS``):

- ``mihc`` (default): compact multi-index hashing, our own numpy implementation. The code is cut
  into ``nhash`` chunks of ``b`` bits; each chunk value owns a bucket of row numbers (uint32) in
  one flat postings array with a little slack per bucket, so adds append in place. A query probes
  every bucket within ``nflip`` bit flips of its chunks and re-ranks the candidates by their exact
  Hamming distance. By the pigeonhole principle every code within ``nhash * (nflip + 1) - 1``
  bits is found (15 bits for the default 8 x 16, nflip=1); farther ones are found when one chunk
  happens to be close enough (measured: all planted duplicates at 16 bits up to 10M codes).
  Memory: the code, its int64 id, one tombstone bit and ``nhash`` uint32 postings (+15% slack):
  61 bytes per 128-bit code at 10M, plus ~10 MB of fixed bucket tables.
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
import threading
from abc import ABC, abstractmethod
from contextlib import contextmanager
from itertools import combinations
from pathlib import Path
from typing import Any, Iterator

import faiss
import numpy as np

MISSING_DISTANCE = np.iinfo(np.int32).max
INDEX_KINDS = ("mihc", "mih", "hnsw", "ivf", "flat")
# mihc: recall 1.0 for planted duplicates up to 16 bits at 0.2M-10M codes, ~61 B/code at 10M,
# 350k adds/s; faiss mih has the same recall but 3-5x the memory; hnsw M=32 misses some and builds
# at ~1.5k/s (measurements in the shards helper report and bench/results)
DEFAULT_KIND = "mihc"
FORMAT_VERSION = 1
_META_FILE = "index.json"
_FAISS_FILE = "index.faiss"

RangeResult = list[tuple[np.ndarray, np.ndarray]]


class RWLock:
    """Many readers or one writer; writers are preferred so a stream of searches cannot starve adds."""

    def __init__(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._readers = 0
        self._writer = False
        self._waiting_writers = 0

    @contextmanager
    def read(self) -> Iterator[None]:
        with self._cond:
            while self._writer or self._waiting_writers:
                self._cond.wait()
            self._readers += 1
        try:
            yield
        finally:
            with self._cond:
                self._readers -= 1
                if not self._readers:
                    self._cond.notify_all()

    @contextmanager
    def write(self) -> Iterator[None]:
        with self._cond:
            self._waiting_writers += 1
            while self._writer or self._readers:
                self._cond.wait()
            self._waiting_writers -= 1
            self._writer = True
        try:
            yield
        finally:
            with self._cond:
                self._writer = False
                self._cond.notify_all()


# ----------------------------------------------------------------------------------------------
# shared helpers
# ----------------------------------------------------------------------------------------------

def _popcount_rows(x: np.ndarray) -> np.ndarray:
    """Sum of set bits per row of an unsigned integer array -> int32 (column by column: numpy
    reduces a short last axis slowly)."""
    acc = np.bitwise_count(x[:, 0]).astype(np.int32)
    for j in range(1, x.shape[1]):
        acc += np.bitwise_count(x[:, j])
    return acc


def _as_words(codes: np.ndarray) -> np.ndarray:
    """View packed codes as uint64 words when the width allows (faster popcount), else uint8."""
    if codes.shape[1] % 8 == 0 and codes.flags.c_contiguous:
        return codes.view(np.uint64)
    return codes


def _hamming_to(codes: np.ndarray, query: np.ndarray) -> np.ndarray:
    """Distances from one query (B,) to every row of codes (n, B)."""
    return _popcount_rows(np.bitwise_xor(_as_words(codes), _as_words(query[None, :])))


def _concat_ranges(starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Concatenation of arange(s, s + l) for each pair, vectorised (int64)."""
    lengths = lengths.astype(np.int64, copy=False)
    total = int(lengths.sum())
    if total == 0:
        return np.zeros(0, dtype=np.int64)
    ends = np.cumsum(lengths)
    offsets = np.arange(total, dtype=np.int64) - np.repeat(ends - lengths, lengths)
    return np.repeat(starts.astype(np.int64, copy=False), lengths) + offsets


def _topk_from_candidates(qidx: np.ndarray, ids: np.ndarray, dists: np.ndarray, nq: int, k: int,
                          dedup: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Per query, the k best unique (distance, id) pairs among candidate triples -> (D, I) padded."""
    D = np.full((nq, k), MISSING_DISTANCE, dtype=np.int32)
    I = np.full((nq, k), -1, dtype=np.int64)
    if len(qidx) == 0 or k == 0:
        return D, I
    order = np.lexsort((ids, dists, qidx))
    qidx, ids, dists = qidx[order], ids[order], dists[order]
    if dedup:
        keep = np.ones(len(ids), dtype=bool)
        keep[1:] = (ids[1:] != ids[:-1]) | (qidx[1:] != qidx[:-1])
        qidx, ids, dists = qidx[keep], ids[keep], dists[keep]
    first = np.searchsorted(qidx, np.arange(nq))
    rank = np.arange(len(qidx)) - first[qidx]
    sel = rank < k
    D[qidx[sel], rank[sel]] = dists[sel]
    I[qidx[sel], rank[sel]] = ids[sel]
    return D, I


def _ranges_from_candidates(qidx: np.ndarray, ids: np.ndarray, dists: np.ndarray, nq: int,
                            radius: int) -> RangeResult:
    """Per query, unique (id, distance) with distance <= radius, sorted by (distance, id)."""
    sel = dists <= radius
    qidx, ids, dists = qidx[sel], ids[sel], dists[sel]
    order = np.lexsort((ids, dists, qidx))
    qidx, ids, dists = qidx[order], ids[order], dists[order]
    keep = np.ones(len(ids), dtype=bool)
    keep[1:] = (ids[1:] != ids[:-1]) | (qidx[1:] != qidx[:-1])
    qidx, ids, dists = qidx[keep], ids[keep], dists[keep].astype(np.int32)
    bounds = np.searchsorted(qidx, np.arange(nq + 1))
    return [(ids[bounds[i]:bounds[i + 1]].copy(), dists[bounds[i]:bounds[i + 1]].copy())
            for i in range(nq)]


def _sort_faiss_result(D: np.ndarray, I: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Normalise a FAISS (D, I): padding -> (-1, MISSING_DISTANCE), rows sorted by (distance, id)."""
    nq = D.shape[0]
    qidx = np.repeat(np.arange(nq), D.shape[1])
    ids = I.reshape(-1)
    dists = D.reshape(-1).astype(np.int32)
    valid = ids != -1
    return _topk_from_candidates(qidx[valid], ids[valid], dists[valid], nq, k, dedup=False)


def _read_faiss(src: Path) -> Any:
    """Read a FAISS binary index (the Python wrapper already returns the concrete subclass;
    never wrap it in downcast_IndexBinary: the temporary owner would free it)."""
    return faiss.read_index_binary(str(src / _FAISS_FILE))


def _save_npy(path: Path, array: np.ndarray) -> None:
    np.save(path, np.ascontiguousarray(array), allow_pickle=False)


def _load_npy(path: Path) -> np.ndarray:
    return np.load(path, allow_pickle=False)


class _Growable:
    """A numpy array with amortised appends (growth 1.25x so slack stays small at scale)."""

    def __init__(self, dtype: Any, width: int | None = None, data: np.ndarray | None = None) -> None:
        shape = (0,) if width is None else (0, width)
        self._buf = np.empty(shape, dtype=dtype) if data is None else data
        self.n = len(self._buf)

    @property
    def view(self) -> np.ndarray:
        return self._buf[: self.n]

    def append(self, values: np.ndarray) -> None:
        need = self.n + len(values)
        if need > len(self._buf):
            cap = max(need, int(len(self._buf) * 1.25) + 1024)
            buf = np.empty((cap,) + self._buf.shape[1:], dtype=self._buf.dtype)
            buf[: self.n] = self._buf[: self.n]
            self._buf = buf
        self._buf[self.n: need] = values
        self.n = need

    @property
    def nbytes(self) -> int:
        return int(self._buf.nbytes)

    @property
    def used_bytes(self) -> int:
        return int(self.view.nbytes)


# ----------------------------------------------------------------------------------------------
# the interface
# ----------------------------------------------------------------------------------------------

class BinaryIndex(ABC):
    """A Hamming index over packed uint8 codes keyed by int64 ids (see module docstring)."""

    kind: str = "base"

    def __init__(self, bits: int = 128, **params: Any) -> None:
        if not isinstance(bits, (int, np.integer)) or bits <= 0 or bits % 8:
            raise ValueError(f"bits must be a positive multiple of 8, got {bits!r}")
        self.bits = int(bits)
        self.code_bytes = self.bits // 8
        self.params = dict(params)
        self._lock = RWLock()

    # -- validation -----------------------------------------------------------------------------
    def _check_codes(self, codes: Any, what: str = "codes") -> np.ndarray:
        if not isinstance(codes, np.ndarray):
            raise ValueError(f"{what} must be a numpy uint8 array of shape (n, {self.code_bytes}), "
                             f"got {type(codes).__name__}")
        if codes.dtype != np.uint8:
            raise ValueError(f"{what} must have dtype uint8 (packed bits), got {codes.dtype}")
        if codes.ndim == 1:
            codes = codes[None, :]
        if codes.ndim != 2 or codes.shape[1] != self.code_bytes:
            raise ValueError(f"{what} must have shape (n, {self.code_bytes}) for {self.bits}-bit "
                             f"codes, got {codes.shape}")
        return np.ascontiguousarray(codes)

    def _check_ids(self, ids: Any, n: int | None = None) -> np.ndarray:
        arr = np.asarray(ids)
        if arr.ndim == 0:
            arr = arr[None]
        if arr.ndim != 1 or (arr.size and arr.dtype.kind not in "iu"):
            raise ValueError(f"ids must be a 1-D integer array, got dtype {arr.dtype} shape {arr.shape}")
        arr = arr.view(np.int64) if arr.dtype == np.uint64 else arr.astype(np.int64, copy=False)
        if n is not None and len(arr) != n:
            raise ValueError(f"got {len(arr)} ids for {n} codes")
        if (arr == -1).any():
            raise ValueError("id -1 is reserved (it marks a missing result)")
        return np.ascontiguousarray(arr)

    @staticmethod
    def _check_k(k: Any) -> int:
        if not isinstance(k, (int, np.integer)) or k < 0:
            raise ValueError(f"k must be a non-negative integer, got {k!r}")
        return int(k)

    def _check_radius(self, radius: Any) -> int:
        if not isinstance(radius, (int, np.integer)) or radius < 0:
            raise ValueError(f"radius must be a non-negative integer, got {radius!r}")
        return int(min(radius, self.bits))

    # -- public API -------------------------------------------------------------------------------
    def add(self, ids: np.ndarray, codes: np.ndarray) -> None:
        """Add codes under int64 ids (callers keep ids unique; the shard actor replaces first)."""
        codes = self._check_codes(codes)
        ids = self._check_ids(ids, len(codes))
        if len(ids):
            with self._lock.write():
                self._add(ids, codes)

    def search(self, codes: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """k nearest per query -> (D int32 (nq, k), I int64 (nq, k)), sorted by (distance, id)."""
        codes = self._check_codes(codes, "query codes")
        k = self._check_k(k)
        if len(codes) == 0 or k == 0:
            return (np.full((len(codes), k), MISSING_DISTANCE, dtype=np.int32),
                    np.full((len(codes), k), -1, dtype=np.int64))
        with self._lock.read():
            return self._search(codes, k)

    def range_search(self, codes: np.ndarray, radius: int) -> RangeResult:
        """Per query (ids int64, distances int32) with distance <= radius, sorted by (distance, id)."""
        codes = self._check_codes(codes, "query codes")
        radius = self._check_radius(radius)
        if len(codes) == 0:
            return []
        with self._lock.read():
            return self._range_search(codes, radius)

    def remove(self, ids: np.ndarray) -> int:
        """Remove ids (true removal or tombstones); returns how many live entries went away."""
        ids = self._check_ids(ids)
        if not len(ids):
            return 0
        with self._lock.write():
            return int(self._remove(np.unique(ids)))

    def compact(self) -> int:
        """Rebuild without tombstones; returns how many dead entries were purged."""
        with self._lock.write():
            return int(self._compact())

    @property
    def ntotal(self) -> int:
        """Live (searchable) entries."""
        return int(self._ntotal())

    def __len__(self) -> int:
        return self.ntotal

    def memory_bytes(self) -> int:
        """Bytes this index holds in memory (FAISS structures + numpy arrays)."""
        with self._lock.read():
            return int(self._memory_bytes())

    #: parameters that only steer searching, so they can change on a built index
    search_params: tuple[str, ...] = ()

    def set_search_params(self, **params: Any) -> None:
        """Change search-time parameters (e.g. hnsw efSearch, ivf nprobe, mih/mihc nflip)."""
        bad = sorted(set(params) - set(self.search_params))
        if bad:
            raise ValueError(f"{self.kind} cannot change {bad} after build; search-time "
                             f"parameters: {list(self.search_params) or 'none'}")
        with self._lock.write():
            self.params.update({k: int(v) for k, v in params.items()})
            self._apply_search_params()

    def _apply_search_params(self) -> None:
        pass

    def info(self) -> dict:
        return {"kind": self.kind, "bits": self.bits, "params": self.params, "count": self.ntotal,
                "tombstones": self.tombstones, "memory_bytes": self.memory_bytes()}

    @property
    def tombstones(self) -> int:
        return 0

    def save(self, path: str | os.PathLike) -> None:
        """Write the index into directory ``path`` (FAISS format or npy + index.json; no pickle)."""
        out = Path(path)
        out.mkdir(parents=True, exist_ok=True)
        with self._lock.read():
            state = self._save(out)
        meta = {"format": FORMAT_VERSION, "kind": self.kind, "bits": self.bits,
                "params": self.params, "state": state}
        (out / _META_FILE).write_text(json.dumps(meta, indent=1))

    @classmethod
    def load(cls, path: str | os.PathLike) -> "BinaryIndex":
        return load_index(path)

    # -- per kind ---------------------------------------------------------------------------------
    @abstractmethod
    def _add(self, ids: np.ndarray, codes: np.ndarray) -> None: ...

    @abstractmethod
    def _search(self, codes: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]: ...

    @abstractmethod
    def _range_search(self, codes: np.ndarray, radius: int) -> RangeResult: ...

    @abstractmethod
    def _remove(self, ids: np.ndarray) -> int: ...

    def _compact(self) -> int:
        return 0

    @abstractmethod
    def _ntotal(self) -> int: ...

    @abstractmethod
    def _memory_bytes(self) -> int: ...

    @abstractmethod
    def _save(self, out: Path) -> dict: ...

    @abstractmethod
    def _load(self, src: Path, state: dict) -> None: ...

    def __repr__(self) -> str:
        return f"<{type(self).__name__} kind={self.kind} bits={self.bits} n={self.ntotal} {self.params}>"


# ----------------------------------------------------------------------------------------------
# flat: exact, true removal
# ----------------------------------------------------------------------------------------------

class FlatIndex(BinaryIndex):
    """Exact brute-force Hamming search (FAISS IndexBinaryFlat + IndexBinaryIDMap)."""

    kind = "flat"

    def __init__(self, bits: int = 128) -> None:
        super().__init__(bits)
        self._index = faiss.IndexBinaryIDMap(faiss.IndexBinaryFlat(self.bits))

    def _add(self, ids, codes):
        self._index.add_with_ids(codes, ids)

    def _search(self, codes, k):
        D, I = self._index.search(codes, min(k, max(self._index.ntotal, 1)))
        return _sort_faiss_result(D, I, k)

    def _range_search(self, codes, radius):
        lims, D, I = self._index.range_search(codes, radius + 1)  # FAISS: distance < radius
        qidx = np.repeat(np.arange(len(codes)), np.diff(lims).astype(np.int64))
        return _ranges_from_candidates(qidx, I, D.astype(np.int32), len(codes), radius)

    def _remove(self, ids):
        return self._index.remove_ids(faiss.IDSelectorBatch(ids))

    def _ntotal(self):
        return self._index.ntotal

    def _memory_bytes(self):
        return self._index.ntotal * (self.code_bytes + 8)

    def _save(self, out):
        faiss.write_index_binary(self._index, str(out / _FAISS_FILE))
        return {}

    def _load(self, src, state):
        index = _read_faiss(src)
        if not isinstance(index, faiss.IndexBinaryIDMap):
            raise ValueError(f"corrupt flat index in {src}: got {type(index).__name__}")
        self._index = index


# ----------------------------------------------------------------------------------------------
# FAISS kinds without removal: sequential internal ids -> labels, plus an alive mask
# ----------------------------------------------------------------------------------------------

class _TombstoneFaissIndex(BinaryIndex):
    """Base for FAISS indexes that cannot remove: row -> id labels and an alive mask (tombstones)."""

    def __init__(self, bits: int = 128, **params: Any) -> None:
        super().__init__(bits, **params)
        self._labels = _Growable(np.int64)
        self._alive = _Growable(np.bool_)
        self._dead = 0
        self._index = self._new_faiss()

    @abstractmethod
    def _new_faiss(self) -> Any: ...

    def _add(self, ids, codes):
        self._index.add(codes)
        self._labels.append(ids)
        self._alive.append(np.ones(len(ids), dtype=bool))

    def _rows_to_results(self, D: np.ndarray, I: np.ndarray) -> tuple[np.ndarray, ...]:
        nq, kk = I.shape
        qidx = np.repeat(np.arange(nq), kk)
        rows = I.reshape(-1)
        dists = D.reshape(-1).astype(np.int32)
        valid = rows >= 0
        valid[valid] = self._alive.view[rows[valid]]
        return qidx[valid], self._labels.view[rows[valid]], dists[valid]

    def _raw_search(self, codes: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        return self._index.search(codes, k)

    def _search(self, codes, k):
        n_raw = self._index.ntotal
        if n_raw == 0:
            return _topk_from_candidates(np.zeros(0, int), np.zeros(0, np.int64), np.zeros(0, np.int32),
                                         len(codes), k)
        fetch = min(n_raw, k + min(self._dead, 64))
        while True:
            D, I = self._raw_search(codes, fetch)
            qidx, ids, dists = self._rows_to_results(D, I)
            short = np.bincount(qidx, minlength=len(codes)) < k
            exhausted = (I >= 0).sum(axis=1) < fetch  # the index has no more candidates to give
            if fetch >= n_raw or not self._dead or not (short & ~exhausted).any():
                return _topk_from_candidates(qidx, ids, dists, len(codes), k, dedup=False)
            fetch = min(n_raw, fetch * 4)

    def _remove(self, ids):
        rows = np.flatnonzero(np.isin(self._labels.view, ids) & self._alive.view)
        self._alive.view[rows] = False
        self._dead += len(rows)
        return len(rows)

    @property
    def tombstones(self) -> int:
        return self._dead

    def _ntotal(self):
        return self._index.ntotal - self._dead

    def _stored_codes(self) -> np.ndarray:
        storage = faiss.downcast_IndexBinary(self._index.storage)
        return faiss.vector_to_array(storage.xb).reshape(-1, self.code_bytes)

    def _compact(self):
        if not self._dead:
            return 0
        alive = self._alive.view.copy()
        codes = self._stored_codes()[alive]
        labels = self._labels.view[alive].copy()
        purged = self._dead
        self._index = self._new_faiss()
        self._labels, self._alive, self._dead = _Growable(np.int64), _Growable(np.bool_), 0
        for s in range(0, len(labels), 1 << 20):
            self._add(labels[s:s + (1 << 20)], codes[s:s + (1 << 20)])
        return purged

    def _save(self, out):
        faiss.write_index_binary(self._index, str(out / _FAISS_FILE))
        _save_npy(out / "labels.npy", self._labels.view)
        _save_npy(out / "alive.npy", self._alive.view)
        return {"dead": self._dead}

    def _load(self, src, state):
        self._index = self._configure(_read_faiss(src))
        self._labels = _Growable(np.int64, data=_load_npy(src / "labels.npy"))
        self._alive = _Growable(np.bool_, data=_load_npy(src / "alive.npy"))
        self._dead = int(len(self._alive.view) - self._alive.view.sum())
        if len(self._labels.view) != self._index.ntotal:
            raise ValueError(f"corrupt index in {src}: {self._index.ntotal} codes, "
                             f"{len(self._labels.view)} labels")

    def _configure(self, index: Any) -> Any:
        return index

    def _own_bytes(self) -> int:
        return self._labels.nbytes + self._alive.nbytes


class HNSWIndex(_TombstoneFaissIndex):
    """FAISS IndexBinaryHNSW; tombstones; range search emulated with a growing top-k search.

    Params: M (graph degree, default 32), efConstruction (default 80), efSearch (default 128),
    range_k (first top-k tried by range_search, default 256).
    """

    kind = "hnsw"
    search_params = ("efSearch", "range_k")

    def __init__(self, bits: int = 128, M: int = 32, efConstruction: int = 80, efSearch: int = 128,
                 range_k: int = 256) -> None:
        super().__init__(bits, M=int(M), efConstruction=int(efConstruction), efSearch=int(efSearch),
                         range_k=int(range_k))

    def _new_faiss(self):
        return self._configure(faiss.IndexBinaryHNSW(self.bits, self.params["M"]))

    def _configure(self, index):
        index.hnsw.efConstruction = self.params["efConstruction"]
        index.hnsw.efSearch = self.params["efSearch"]
        return index

    def _apply_search_params(self):
        self._configure(self._index)

    def _raw_search(self, codes, k):
        sp = faiss.SearchParametersHNSW()
        sp.efSearch = max(self.params["efSearch"], k)
        return self._index.search(codes, k, params=sp)

    def _range_search(self, codes, radius):
        n_raw, nq = self._index.ntotal, len(codes)
        out: RangeResult = [(np.zeros(0, np.int64), np.zeros(0, np.int32))] * nq
        todo = np.arange(nq)
        fetch = min(n_raw, self.params["range_k"])
        while len(todo) and n_raw:
            D, I = self._raw_search(codes[todo], fetch)
            D = np.where(I >= 0, D, MISSING_DISTANCE)
            full = (D.max(axis=1) <= radius) & (fetch < n_raw)  # all within radius: there may be more
            qidx, ids, dists = self._rows_to_results(D, I)
            ranges = _ranges_from_candidates(qidx, ids, dists, len(todo), radius)
            for j, q in enumerate(todo):
                out[q] = ranges[j]
            todo = todo[full]
            fetch = min(n_raw, fetch * 4)
        return out

    def _memory_bytes(self):
        hnsw = self._index.hnsw
        graph = hnsw.neighbors.size() * 4 + hnsw.levels.size() * 4 + hnsw.offsets.size() * 8
        return self._index.ntotal * self.code_bytes + graph + self._own_bytes()


class MultiHashIndex(_TombstoneFaissIndex):
    """FAISS IndexBinaryMultiHash (nhash (default bits // b) x b bits, nflip); tombstones.

    memory_bytes() is a structural estimate: FAISS keeps its hash tables as
    ``unordered_map<int64, vector<int64>>`` and does not expose their allocation sizes (its
    serialised form packs them far smaller than they are in RAM).
    """

    kind = "mih"
    search_params = ("nflip",)

    def __init__(self, bits: int = 128, nhash: int | None = None, b: int = 16, nflip: int = 1) -> None:
        nhash = bits // b if nhash is None else nhash
        if nhash < 1 or nhash * b > bits:
            raise ValueError(f"mih needs nhash * b <= bits, got {nhash} * {b} > {bits}")
        super().__init__(bits, nhash=int(nhash), b=int(b), nflip=int(nflip))

    def _new_faiss(self):
        return self._configure(faiss.IndexBinaryMultiHash(self.bits, self.params["nhash"],
                                                          self.params["b"]))

    def _configure(self, index):
        index.nflip = self.params["nflip"]
        return index

    def _apply_search_params(self):
        self._configure(self._index)

    def _range_search(self, codes, radius):
        lims, D, I = self._index.range_search(codes, radius + 1)  # FAISS: distance < radius
        qidx = np.repeat(np.arange(len(codes)), np.diff(lims).astype(np.int64))
        alive = self._alive.view[I]
        return _ranges_from_candidates(qidx[alive], self._labels.view[I[alive]],
                                       D[alive].astype(np.int32), len(codes), radius)

    def _memory_bytes(self):
        n, nhash = self._index.ntotal, self.params["nhash"]
        buckets = self._index.hashtable_size()
        # per entry: int64 in a vector grown by doubling (~1.5x); per bucket: node + vector header
        # + malloc overheads (~80 B); plus each map's bucket array (8 B per slot, ~1 slot/bucket).
        return int(n * self.code_bytes + n * nhash * 8 * 1.5 + buckets * 88) + self._own_bytes()


# ----------------------------------------------------------------------------------------------
# ivf: trains once it has enough codes; exact brute force on the buffer until then
# ----------------------------------------------------------------------------------------------

class IVFIndex(BinaryIndex):
    """FAISS IndexBinaryIVF with a flat Hamming quantizer; true removal.

    Params: nlist (default 1024), nprobe (default 64), train_size (codes buffered before training,
    default 39 * nlist). Until trained, codes sit in a numpy buffer searched exactly.
    """

    kind = "ivf"
    search_params = ("nprobe",)

    def __init__(self, bits: int = 128, nlist: int = 1024, nprobe: int = 64,
                 train_size: int | None = None) -> None:
        train_size = int(train_size or 39 * nlist)
        if train_size < nlist:
            raise ValueError(f"ivf train_size ({train_size}) must be >= nlist ({nlist})")
        super().__init__(bits, nlist=int(nlist), nprobe=int(nprobe), train_size=train_size)
        self._index = self._new_faiss()
        self._pending_ids = _Growable(np.int64)
        self._pending_codes = _Growable(np.uint8, self.code_bytes)

    def _new_faiss(self):
        self._quantizer = faiss.IndexBinaryFlat(self.bits)  # must outlive the IVF index
        index = faiss.IndexBinaryIVF(self._quantizer, self.bits, self.params["nlist"])
        return self._configure(index)

    def _configure(self, index):
        index.nprobe = self.params["nprobe"]
        return index

    def _apply_search_params(self):
        self._configure(self._index)

    def _add(self, ids, codes):
        if self._index.is_trained:
            self._index.add_with_ids(codes, ids)
            return
        self._pending_ids.append(ids)
        self._pending_codes.append(codes)
        if self._pending_ids.n >= self.params["train_size"]:
            sample = self._pending_codes.view
            if len(sample) > 256 * self.params["nlist"]:
                pick = np.random.default_rng(0).choice(len(sample), 256 * self.params["nlist"],
                                                       replace=False)
                sample = sample[np.sort(pick)]
            self._index.train(sample)
            self._index.add_with_ids(self._pending_codes.view, self._pending_ids.view)
            self._pending_ids = _Growable(np.int64)
            self._pending_codes = _Growable(np.uint8, self.code_bytes)

    def _pending_candidates(self, codes: np.ndarray) -> tuple[np.ndarray, ...]:
        pend = self._pending_codes.view
        if not len(pend):
            return np.zeros(0, int), np.zeros(0, np.int64), np.zeros(0, np.int32)
        dists = np.concatenate([_hamming_to(pend, q) for q in codes])
        qidx = np.repeat(np.arange(len(codes)), len(pend))
        return qidx, np.tile(self._pending_ids.view, len(codes)), dists

    def _search(self, codes, k):
        pq, pi, pd = self._pending_candidates(codes)
        if self._index.ntotal:
            D, I = self._index.search(codes, min(k, self._index.ntotal))
            valid = I.reshape(-1) != -1
            pq = np.concatenate([pq, np.repeat(np.arange(len(codes)), I.shape[1])[valid]])
            pi = np.concatenate([pi, I.reshape(-1)[valid]])
            pd = np.concatenate([pd, D.reshape(-1)[valid].astype(np.int32)])
        return _topk_from_candidates(pq, pi, pd, len(codes), k, dedup=False)

    def _range_search(self, codes, radius):
        pq, pi, pd = self._pending_candidates(codes)
        if self._index.ntotal:
            lims, D, I = self._index.range_search(codes, radius + 1)  # FAISS: distance < radius
            pq = np.concatenate([pq, np.repeat(np.arange(len(codes)), np.diff(lims).astype(np.int64))])
            pi, pd = np.concatenate([pi, I]), np.concatenate([pd, D.astype(np.int32)])
        return _ranges_from_candidates(pq, pi, pd, len(codes), radius)

    def _remove(self, ids):
        removed = int(self._index.remove_ids(faiss.IDSelectorBatch(ids))) if self._index.ntotal else 0
        if self._pending_ids.n:
            keep = ~np.isin(self._pending_ids.view, ids)
            removed += int((~keep).sum())
            kept_ids, kept_codes = self._pending_ids.view[keep], self._pending_codes.view[keep]
            self._pending_ids = _Growable(np.int64, data=kept_ids.copy())
            self._pending_codes = _Growable(np.uint8, data=kept_codes.copy())
        return removed

    def _ntotal(self):
        return self._index.ntotal + self._pending_ids.n

    def _memory_bytes(self):
        # inverted lists hold code + int64 id per entry; the quantizer holds nlist centroids
        lists = self._index.ntotal * (self.code_bytes + 8) + self.params["nlist"] * (self.code_bytes + 48)
        return lists + self._pending_ids.nbytes + self._pending_codes.nbytes

    def _save(self, out):
        faiss.write_index_binary(self._index, str(out / _FAISS_FILE))
        _save_npy(out / "pending_ids.npy", self._pending_ids.view)
        _save_npy(out / "pending_codes.npy", self._pending_codes.view)
        return {"trained": bool(self._index.is_trained)}

    def _load(self, src, state):
        self._index = self._configure(_read_faiss(src))
        self._pending_ids = _Growable(np.int64, data=_load_npy(src / "pending_ids.npy"))
        self._pending_codes = _Growable(np.uint8, data=_load_npy(src / "pending_codes.npy"))


# ----------------------------------------------------------------------------------------------
# mihc: compact multi-index hashing (default)
# ----------------------------------------------------------------------------------------------

class CompactMIHIndex(BinaryIndex):
    """Multi-index hashing over ``nhash`` chunks of ``b`` bits with compact uint32 postings.

    Layout: rows (codes, int64 ids, alive flags) in insertion order; for table t and chunk value v
    the bucket is ``post[starts[t, v] : starts[t, v] + counts[t, v]]`` with spare room up to
    ``starts[t, v + 1]``. Adds write into the spare room. A row that finds a full bucket waits in
    a small overflow list (searched exhaustively); when that list passes ``overflow`` rows, every
    table is re-laid out with ``growth`` slack, so the cost per add stays O(1) amortised and the
    slack stays near ``growth - 1``. Removal marks rows dead (filtered on every search);
    ``compact()`` drops them and sorts rows by id so that id lookups become binary searches.
    Params: nhash (bits // b: 8 for 128-bit codes), b (16), nflip (1), growth (1.15),
    overflow (2048).
    """

    kind = "mihc"
    search_params = ("nflip",)
    _MAX_B = 24  # bucket tables are dense: 2^b entries per table
    _QUERY_CHUNK = 32  # queries per vectorised pass (measured best; bounds temporaries)

    def __init__(self, bits: int = 128, nhash: int | None = None, b: int = 16, nflip: int = 1,
                 growth: float = 1.15, overflow: int = 2048) -> None:
        nhash = bits // int(b) if nhash is None else nhash  # default: cover every bit
        nhash, b, nflip, overflow = int(nhash), int(b), int(nflip), int(overflow)
        if not 1 <= b <= self._MAX_B:
            raise ValueError(f"mihc chunk width b must be in 1..{self._MAX_B}, got {b}")
        if nhash < 1 or nhash * b > bits:
            raise ValueError(f"mihc needs 1 <= nhash and nhash * b <= bits, got {nhash} * {b} > {bits}")
        if not 0 <= nflip <= 3:
            raise ValueError(f"mihc nflip must be in 0..3, got {nflip}")
        if not 1.0 < float(growth) <= 4.0:
            raise ValueError(f"mihc growth must be in (1, 4], got {growth}")
        if overflow < 0:
            raise ValueError(f"mihc overflow must be >= 0, got {overflow}")
        super().__init__(bits, nhash=nhash, b=b, nflip=nflip, growth=float(growth),
                         overflow=overflow)
        self._nbuckets = 1 << b
        self._apply_search_params()
        self._reset_rows()

    def _apply_search_params(self) -> None:
        b, nflip = self.params["b"], self.params["nflip"]
        if not 0 <= nflip <= 3:
            raise ValueError(f"mihc nflip must be in 0..3, got {nflip}")
        self._masks = np.array([sum(1 << i for i in combo) for f in range(nflip + 1)
                                for combo in combinations(range(b), f)], dtype=np.int64)

    def _reset_rows(self) -> None:
        nh = self.params["nhash"]
        self._codes = _Growable(np.uint8, self.code_bytes)
        self._ids = _Growable(np.int64)
        self._deadbits = _Growable(np.uint8)  # packed bit per row: 1 = removed (tombstone)
        self._over = _Growable(np.uint32)  # rows not (yet) in the tables
        self._dead = 0
        self._sorted_prefix = 0  # rows [0, sorted_prefix) are sorted by id (after compact)
        self._starts = np.zeros((nh, self._nbuckets + 1), dtype=np.uint32)
        self._counts = np.zeros((nh, self._nbuckets), dtype=np.uint32)
        self._post = np.zeros(0, dtype=np.uint32)

    @property
    def guaranteed_radius(self) -> int:
        """Every code within this Hamming distance is always found (pigeonhole)."""
        return self.params["nhash"] * (self.params["nflip"] + 1) - 1

    # -- chunk keys -------------------------------------------------------------------------------
    def _keys(self, codes: np.ndarray) -> np.ndarray:
        """(n, B) codes -> (n, nhash) int64 chunk values (MSB-first bit order, like np.packbits)."""
        b, nh = self.params["b"], self.params["nhash"]
        if b % 8 == 0:  # byte-aligned chunks: combine whole bytes, all tables at once
            parts = codes[:, : nh * b // 8].reshape(len(codes), nh, b // 8).astype(np.int64)
            out = parts[:, :, 0]
            for j in range(1, b // 8):
                out = (out << 8) | parts[:, :, j]
            return np.ascontiguousarray(out)
        out = np.empty((len(codes), nh), dtype=np.int64)
        for t in range(nh):
            s = t * b
            first, last = s // 8, (s + b - 1) // 8
            acc = np.zeros(len(codes), dtype=np.int64)
            for j in range(first, last + 1):
                acc = (acc << 8) | codes[:, j]
            out[:, t] = (acc >> ((last + 1) * 8 - (s + b))) & (self._nbuckets - 1)
        return out

    # -- add ----------------------------------------------------------------------------------------
    def _add(self, ids, codes):
        if self._codes.n + len(codes) >= 2 ** 32:
            raise ValueError("mihc holds at most 2^32 - 1 rows per index; use more shards")
        first_row = self._codes.n
        self._codes.append(codes)
        self._ids.append(ids)
        self._deadbits.append(np.zeros((self._ids.n + 7) // 8 - self._deadbits.n, dtype=np.uint8))
        step = 1 << 18
        for s in range(0, len(codes), step):
            rows = np.arange(first_row + s, first_row + min(s + step, len(codes)), dtype=np.uint32)
            self._insert(self._keys(codes[s:s + step]), rows)
        if self._over.n > self.params["overflow"]:
            self._absorb_overflow()

    def _slots(self, keys: np.ndarray) -> tuple[np.ndarray, ...]:
        """Entries (table-major) grouped by bucket: order, counts index, starts index, rank in
        bucket, plus each touched bucket's counts index and number of new entries."""
        n, nh = keys.shape
        nb = self._nbuckets
        kdt = np.uint16 if self.params["b"] <= 16 else np.uint32  # 16-bit keys: radix sort
        order, cidx, sidx, rank, ucidx, ucnt = [], [], [], [], [], []
        for t in range(nh):
            kt = keys[:, t].astype(kdt)
            o = np.argsort(kt, kind="stable")
            v = kt[o].astype(np.int64)
            change = np.empty(n, dtype=bool)
            change[0] = True
            np.not_equal(v[1:], v[:-1], out=change[1:])
            head = np.flatnonzero(change)
            size = np.diff(head, append=n)
            order.append(o + t * n)
            cidx.append(v + t * nb)
            sidx.append(v + t * (nb + 1))
            rank.append(np.arange(n) - np.repeat(head, size))
            ucidx.append(v[head] + t * nb)
            ucnt.append(size)
        return tuple(np.concatenate(x) for x in (order, cidx, sidx, rank, ucidx, ucnt))

    def _insert(self, keys: np.ndarray, rows: np.ndarray) -> None:
        """Write rows into their buckets; rows meeting a full bucket go to the overflow list."""
        if not len(rows):
            return
        counts, starts = self._counts.reshape(-1), self._starts.reshape(-1)
        order, cidx, sidx, rank, ucidx, ucnt = self._slots(keys)
        fill = counts[cidx].astype(np.int64) + rank
        fits = fill < starts[sidx + 1].astype(np.int64) - starts[sidx]
        if not fits.all():
            entry_ok = np.empty(len(fits), dtype=bool)
            entry_ok[order] = fits
            row_ok = entry_ok.reshape(keys.shape[1], len(rows)).all(axis=0)
            self._over.append(rows[~row_ok])
            keys, rows = keys[row_ok], rows[row_ok]
            if not len(rows):
                return
            order, cidx, sidx, rank, ucidx, ucnt = self._slots(keys)  # ranks only shrink: all fit
            fill = counts[cidx].astype(np.int64) + rank
        self._post[starts[sidx] + fill] = np.tile(rows, keys.shape[1])[order]
        counts[ucidx] += ucnt.astype(np.uint32)

    def _absorb_overflow(self) -> None:
        """Re-lay out all tables with room for the overflow rows, then insert them."""
        rows = self._over.view[self._is_live(self._over.view)]
        keys = self._keys(self._codes.view[rows])
        self._relayout(keys)
        self._over = _Growable(np.uint32)
        self._insert(keys, rows)

    def _relayout(self, extra_keys: np.ndarray) -> None:
        """New bucket capacities = (count + extra) * growth + 3; move the postings over.

        Done table by table. Capacities never shrink, so the new table is the old one with
        extra slots inserted at bucket ends: one boolean-mask copy per table.
        """
        nh, nb, g = self.params["nhash"], self._nbuckets, self.params["growth"]
        old_starts = self._starts
        total_bound = (int(self._counts.sum(dtype=np.int64)) + extra_keys.size) * g \
            + nh * nb * 4 + len(self._post)
        new_starts = np.empty_like(old_starts, dtype=np.uint32 if total_bound < 2 ** 32 else np.int64)
        offset = 0
        for t in range(nh):
            need = self._counts[t].astype(np.int64) + np.bincount(extra_keys[:, t], minlength=nb)
            # proportional slack, plus a few slots so that sparse buckets do not fill at once
            caps = need + np.ceil(need * (g - 1)).astype(np.int64) + 3
            np.maximum(caps, np.diff(old_starts[t].astype(np.int64)), out=caps)
            ends = np.cumsum(caps)
            new_starts[t, 1:] = offset + ends
            new_starts[t, 0] = offset
            offset += int(ends[-1])
        new_post = np.empty(offset, dtype=np.uint32)
        for t in range(nh):
            old_t = old_starts[t].astype(np.int64)
            new_t = new_starts[t].astype(np.int64)
            old_caps = np.diff(old_t)
            gaps = np.diff(new_t) - old_caps  # slots added at the end of each bucket
            keep = np.ones(new_t[-1] - new_t[0], dtype=bool)
            keep[_concat_ranges(new_t[:-1] - new_t[0] + old_caps, gaps)] = False
            new_post[new_t[0]:new_t[-1]][keep] = self._post[old_t[0]:old_t[-1]]
        self._post, self._starts = new_post, new_starts

    # -- search ---------------------------------------------------------------------------------
    def _candidates(self, codes: np.ndarray) -> tuple[np.ndarray | None, np.ndarray, np.ndarray]:
        """(query index, row, exact distance) for rows sharing a probed bucket (with repeats)
        and for every overflow row; dead rows dropped. Query index is None for one query."""
        nq, nh, nb = len(codes), self.params["nhash"], self._nbuckets
        probes = (self._keys(codes)[:, :, None] ^ self._masks[None, None, :]).reshape(nq, -1)
        table = np.repeat(np.arange(nh, dtype=np.int64), len(self._masks))
        starts = self._starts.reshape(-1)[(probes + table * (nb + 1)).reshape(-1)]
        lens = self._counts.reshape(-1)[(probes + table * nb).reshape(-1)]
        rows = self._post[_concat_ranges(starts, lens)]
        qidx = None
        if nq > 1:
            qidx = np.repeat(np.repeat(np.arange(nq), nh * len(self._masks)), lens.astype(np.int64))
        if self._over.n:
            rows = np.concatenate([rows, np.tile(self._over.view, nq)])
            if qidx is not None:
                qidx = np.concatenate([qidx, np.repeat(np.arange(nq), self._over.n)])
        if self._dead:
            live = self._is_live(rows)
            rows = rows[live]
            qidx = None if qidx is None else qidx[live]
        words, qwords = _as_words(self._codes.view), _as_words(codes)
        qw = qwords if qidx is None else np.take(qwords, qidx, axis=0)
        dists = _popcount_rows(np.bitwise_xor(np.take(words, rows, axis=0), qw))
        return qidx, rows, dists

    def _search(self, codes, k):
        if len(codes) > self._QUERY_CHUNK:
            parts = [self._search(codes[s:s + self._QUERY_CHUNK], k)
                     for s in range(0, len(codes), self._QUERY_CHUNK)]
            return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])
        nq = len(codes)
        qidx, rows, dists = self._candidates(codes)
        if len(rows) > 4 * k * self.params["nhash"]:
            # keep, per query, the smallest distances that surely hold k unique rows
            # (a row repeats at most once per table), before the costlier sort + dedup
            width = self.bits + 1
            flat = dists if qidx is None else qidx * width + dists
            hist = np.bincount(flat, minlength=nq * width).reshape(nq, width)
            enough = np.cumsum(hist, axis=1) >= k * self.params["nhash"]
            thresh = np.where(enough.any(axis=1), enough.argmax(axis=1), self.bits)
            sel = dists <= (thresh[0] if qidx is None else thresh[qidx])
            rows, dists = rows[sel], dists[sel]
            qidx = None if qidx is None else qidx[sel]
        if qidx is None:
            qidx = np.zeros(len(rows), dtype=np.int64)
        return _topk_from_candidates(qidx, self._ids.view[rows], dists, nq, k)

    def _range_search(self, codes, radius):
        out: RangeResult = []
        for s in range(0, len(codes), self._QUERY_CHUNK):
            chunk = codes[s:s + self._QUERY_CHUNK]
            qidx, rows, dists = self._candidates(chunk)
            sel = dists <= radius
            qidx = np.zeros(int(sel.sum()), dtype=np.int64) if qidx is None else qidx[sel]
            out += _ranges_from_candidates(qidx, self._ids.view[rows[sel]], dists[sel],
                                           len(chunk), radius)
        return out

    # -- remove / compact ---------------------------------------------------------------------
    def _rows_of(self, ids: np.ndarray) -> np.ndarray:
        """Live rows holding any of the (sorted, unique) ids."""
        all_ids, p = self._ids.view, self._sorted_prefix
        found = []
        if p:
            lo = np.searchsorted(all_ids[:p], ids, side="left")
            hi = np.searchsorted(all_ids[:p], ids, side="right")
            found.append(_concat_ranges(lo, hi - lo))
        if self._ids.n > p:
            found.append(p + np.flatnonzero(np.isin(all_ids[p:], ids)))
        rows = np.concatenate(found) if found else np.zeros(0, np.int64)
        return rows[self._is_live(rows)]

    def _is_live(self, rows: np.ndarray) -> np.ndarray:
        return (self._deadbits.view[rows >> 3] >> (rows & 7).astype(np.uint8)) & 1 == 0

    def _live_mask(self) -> np.ndarray:
        return np.unpackbits(self._deadbits.view, count=self._ids.n, bitorder="little") == 0

    def _remove(self, ids):
        rows = self._rows_of(ids)
        np.bitwise_or.at(self._deadbits.view, rows >> 3, (1 << (rows & 7)).astype(np.uint8))
        self._dead += len(rows)
        return len(rows)

    @property
    def tombstones(self) -> int:
        return self._dead

    def _compact(self):
        purged = self._dead
        live = self._live_mask()
        order = np.argsort(self._ids.view[live], kind="stable")
        codes = self._codes.view[live][order]
        ids = self._ids.view[live][order]
        self._reset_rows()
        if len(ids):
            self._add(ids, codes)
            self._absorb_overflow()
        self._sorted_prefix = len(ids)
        return purged

    # -- bookkeeping --------------------------------------------------------------------------------
    def _ntotal(self):
        return self._ids.n - self._dead

    def _memory_bytes(self):
        # rows: the used part only (the spare capacity of a growable array is never touched,
        # so it is not resident); postings: all of it (every bucket's slack sits between
        # written entries)
        return (self._codes.used_bytes + self._ids.used_bytes + self._deadbits.used_bytes
                + self._over.used_bytes
                + self._post.nbytes + self._starts.nbytes + self._counts.nbytes)

    def _save(self, out):
        for name, arr in (("codes", self._codes.view), ("ids", self._ids.view),
                          ("deadbits", self._deadbits.view), ("overflow", self._over.view),
                          ("starts", self._starts), ("counts", self._counts), ("post", self._post)):
            _save_npy(out / f"{name}.npy", arr)
        return {"dead": self._dead, "sorted_prefix": self._sorted_prefix, "rows": self._ids.n}

    def _load(self, src, state):
        self._codes = _Growable(np.uint8, data=_load_npy(src / "codes.npy"))
        self._ids = _Growable(np.int64, data=_load_npy(src / "ids.npy"))
        self._deadbits = _Growable(np.uint8, data=_load_npy(src / "deadbits.npy"))
        self._over = _Growable(np.uint32, data=_load_npy(src / "overflow.npy"))
        self._starts = _load_npy(src / "starts.npy")
        self._counts = _load_npy(src / "counts.npy")
        self._post = _load_npy(src / "post.npy")
        self._dead = int(state.get("dead", 0))
        self._sorted_prefix = int(state.get("sorted_prefix", 0))
        n = self._ids.n
        if (self._codes.n != n or self._deadbits.n != (n + 7) // 8
                or self._dead != n - int(self._live_mask().sum())
                or self._starts.shape != (self.params["nhash"], self._nbuckets + 1)
                or self._counts.shape != (self.params["nhash"], self._nbuckets)
                or len(self._post) != int(self._starts[-1, -1])
                or (self._over.n and int(self._over.view.max()) >= n)):
            raise ValueError(f"corrupt mihc index in {src}: inconsistent array shapes")


# ----------------------------------------------------------------------------------------------
# factory and loading
# ----------------------------------------------------------------------------------------------

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
    """Load an index written by ``BinaryIndex.save`` (reads index.json, then the kind's files)."""
    src = Path(path)
    meta_path = src / _META_FILE
    if not meta_path.is_file():
        raise FileNotFoundError(f"no index at {src} (missing {_META_FILE})")
    try:
        meta = json.loads(meta_path.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"corrupt {meta_path}: {exc}") from None
    if meta.get("format") != FORMAT_VERSION:
        raise ValueError(f"unsupported index format {meta.get('format')!r} in {src}")
    index = make_index(meta["kind"], meta["bits"], **meta.get("params", {}))
    index._load(src, meta.get("state", {}))
    return index

