"""Index kinds backed by FAISS: ``flat``, ``hnsw``, ``mih`` and ``ivf`` (see shards.index)."""
from __future__ import annotations

from abc import abstractmethod
from typing import Any

import faiss
import numpy as np

from shards.base import (FAISS_FILE, MISSING_DISTANCE, BinaryIndex, Growable, RangeResult, hamming_to,
                         load_npy, read_faiss, ranges_from_candidates, save_npy, sort_faiss_result,
                         topk_from_candidates)


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
        return sort_faiss_result(D, I, k)

    def _range_search(self, codes, radius):
        lims, D, I = self._index.range_search(codes, radius + 1)  # FAISS: distance < radius
        qidx = np.repeat(np.arange(len(codes)), np.diff(lims).astype(np.int64))
        return ranges_from_candidates(qidx, I, D.astype(np.int32), len(codes), radius)

    def _remove(self, ids):
        return self._index.remove_ids(faiss.IDSelectorBatch(ids))

    def _ntotal(self):
        return self._index.ntotal

    def _memory_bytes(self):
        return self._index.ntotal * (self.code_bytes + 8)

    def _save(self, out):
        faiss.write_index_binary(self._index, str(out / FAISS_FILE))
        return {}

    def _load(self, src, state):
        index = read_faiss(src)
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
        self._labels = Growable(np.int64)
        self._alive = Growable(np.bool_)
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
            return topk_from_candidates(np.zeros(0, int), np.zeros(0, np.int64), np.zeros(0, np.int32),
                                         len(codes), k)
        fetch = min(n_raw, k + min(self._dead, 64))
        while True:
            D, I = self._raw_search(codes, fetch)
            qidx, ids, dists = self._rows_to_results(D, I)
            short = np.bincount(qidx, minlength=len(codes)) < k
            exhausted = (I >= 0).sum(axis=1) < fetch  # the index has no more candidates to give
            if fetch >= n_raw or not self._dead or not (short & ~exhausted).any():
                return topk_from_candidates(qidx, ids, dists, len(codes), k, dedup=False)
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
        self._labels, self._alive, self._dead = Growable(np.int64), Growable(np.bool_), 0
        for s in range(0, len(labels), 1 << 20):
            self._add(labels[s:s + (1 << 20)], codes[s:s + (1 << 20)])
        return purged

    def _save(self, out):
        faiss.write_index_binary(self._index, str(out / FAISS_FILE))
        save_npy(out / "labels.npy", self._labels.view)
        save_npy(out / "alive.npy", self._alive.view)
        return {"dead": self._dead}

    def _load(self, src, state):
        self._index = self._configure(read_faiss(src))
        self._labels = Growable(np.int64, data=load_npy(src / "labels.npy"))
        self._alive = Growable(np.bool_, data=load_npy(src / "alive.npy"))
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
            ranges = ranges_from_candidates(qidx, ids, dists, len(todo), radius)
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
        return ranges_from_candidates(qidx[alive], self._labels.view[I[alive]],
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
        self._pending_ids = Growable(np.int64)
        self._pending_codes = Growable(np.uint8, self.code_bytes)

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
            self._pending_ids = Growable(np.int64)
            self._pending_codes = Growable(np.uint8, self.code_bytes)

    def _pending_candidates(self, codes: np.ndarray) -> tuple[np.ndarray, ...]:
        pend = self._pending_codes.view
        if not len(pend):
            return np.zeros(0, int), np.zeros(0, np.int64), np.zeros(0, np.int32)
        dists = np.concatenate([hamming_to(pend, q) for q in codes])
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
        return topk_from_candidates(pq, pi, pd, len(codes), k, dedup=False)

    def _range_search(self, codes, radius):
        pq, pi, pd = self._pending_candidates(codes)
        if self._index.ntotal:
            lims, D, I = self._index.range_search(codes, radius + 1)  # FAISS: distance < radius
            pq = np.concatenate([pq, np.repeat(np.arange(len(codes)), np.diff(lims).astype(np.int64))])
            pi, pd = np.concatenate([pi, I]), np.concatenate([pd, D.astype(np.int32)])
        return ranges_from_candidates(pq, pi, pd, len(codes), radius)

    def _remove(self, ids):
        removed = int(self._index.remove_ids(faiss.IDSelectorBatch(ids))) if self._index.ntotal else 0
        if self._pending_ids.n:
            keep = ~np.isin(self._pending_ids.view, ids)
            removed += int((~keep).sum())
            kept_ids, kept_codes = self._pending_ids.view[keep], self._pending_codes.view[keep]
            self._pending_ids = Growable(np.int64, data=kept_ids.copy())
            self._pending_codes = Growable(np.uint8, data=kept_codes.copy())
        return removed

    def _ntotal(self):
        return self._index.ntotal + self._pending_ids.n

    def _memory_bytes(self):
        # inverted lists hold code + int64 id per entry; the quantizer holds nlist centroids
        lists = self._index.ntotal * (self.code_bytes + 8) + self.params["nlist"] * (self.code_bytes + 48)
        return lists + self._pending_ids.nbytes + self._pending_codes.nbytes

    def _save(self, out):
        faiss.write_index_binary(self._index, str(out / FAISS_FILE))
        save_npy(out / "pending_ids.npy", self._pending_ids.view)
        save_npy(out / "pending_codes.npy", self._pending_codes.view)
        return {"trained": bool(self._index.is_trained)}

    def _load(self, src, state):
        self._index = self._configure(read_faiss(src))
        self._pending_ids = Growable(np.int64, data=load_npy(src / "pending_ids.npy"))
        self._pending_codes = Growable(np.uint8, data=load_npy(src / "pending_codes.npy"))


