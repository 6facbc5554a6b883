"""The contract every index kind keeps (``BinaryIndex``), its lock and shared numpy helpers.

Every kind returns exact Hamming distances, sorted by (distance, id); the approximate kinds may
miss neighbours, never misreport a distance. Missing results are padded with id -1 and distance
``MISSING_DISTANCE``. Searches share a read lock and run concurrently (FAISS and numpy release
the GIL); add/remove/compact take the write lock.
"""
from __future__ import annotations

import json
import os
import threading
from abc import ABC, abstractmethod
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import faiss
import numpy as np


MISSING_DISTANCE = np.iinfo(np.int32).max
FORMAT_VERSION = 1
META_FILE = "index.json"
FAISS_FILE = "index.faiss"

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

def as_words(codes: np.ndarray) -> np.ndarray:
    """View packed codes as uint64 words when the width allows (faster popcount), else uint8."""
    if codes.shape[1] % 8 == 0 and codes.flags.c_contiguous:
        return codes.view(np.uint64)
    return codes


def hamming_to(codes: np.ndarray, query: np.ndarray) -> np.ndarray:
    """Distances from one query (B,) to every row of codes (n, B) -> int32 (n,), word column by
    word column: no (n, words) temporary, and numpy reduces a short last axis slowly."""
    words = as_words(codes)
    q = as_words(np.ascontiguousarray(query)[None, :])[0]
    acc = np.bitwise_count(words[:, 0] ^ q[0]).astype(np.int32)
    for j in range(1, words.shape[1]):
        acc += np.bitwise_count(words[:, j] ^ q[j])
    return acc


def concat_ranges(starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Concatenation of arange(s, s + l) for each pair, vectorised (int64)."""
    lengths = lengths.astype(np.int64, copy=False)
    total = int(lengths.sum())
    if total == 0:
        return np.zeros(0, dtype=np.int64)
    ends = np.cumsum(lengths)
    offsets = np.arange(total, dtype=np.int64) - np.repeat(ends - lengths, lengths)
    return np.repeat(starts.astype(np.int64, copy=False), lengths) + offsets


def topk_from_candidates(qidx: np.ndarray, ids: np.ndarray, dists: np.ndarray, nq: int, k: int,
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


def ranges_from_candidates(qidx: np.ndarray, ids: np.ndarray, dists: np.ndarray, nq: int,
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


def sort_faiss_result(D: np.ndarray, I: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Normalise a FAISS (D, I): padding -> (-1, MISSING_DISTANCE), rows sorted by (distance, id)."""
    nq = D.shape[0]
    qidx = np.repeat(np.arange(nq), D.shape[1])
    ids = I.reshape(-1)
    dists = D.reshape(-1).astype(np.int32)
    valid = ids != -1
    return topk_from_candidates(qidx[valid], ids[valid], dists[valid], nq, k, dedup=False)


def read_faiss(src: Path) -> Any:
    """Read a FAISS binary index (the Python wrapper already returns the concrete subclass;
    never wrap it in downcast_IndexBinary: the temporary owner would free it)."""
    return faiss.read_index_binary(str(src / FAISS_FILE))


def save_npy(path: Path, array: np.ndarray) -> None:
    np.save(path, np.ascontiguousarray(array), allow_pickle=False)


def load_npy(path: Path) -> np.ndarray:
    return np.load(path, allow_pickle=False)


class Growable:
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

    def warm_up(self) -> None:
        """Get ready for the first query (``mihc`` compiles or loads its kernel); a no-op here."""

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
        (out / META_FILE).write_text(json.dumps(meta, indent=1))

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


