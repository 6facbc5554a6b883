"""``mihc``: compact multi-index hashing over packed binary codes, in numpy (see shards.index)."""
from __future__ import annotations

from dataclasses import dataclass
from itertools import combinations

import numpy as np

from shards import kernels
from shards.base import (MISSING_DISTANCE, BinaryIndex, Growable, as_words, concat_ranges, hamming_to,
                         load_npy, ranges_from_candidates, save_npy, topk_from_candidates)
from shards.buckets import chunk_keys, place, relayout


@dataclass(frozen=True)
class Geometry:
    """How codes are cut: ``nhash`` chunks of ``b`` bits, probed within ``nflip`` bit flips."""

    nhash: int
    b: int
    nflip: int

    @property
    def guaranteed_radius(self) -> int:
        """Every code within this Hamming distance is always found (pigeonhole)."""
        return self.nhash * (self.nflip + 1) - 1


#: Auto geometry by row count (128-bit codes): narrow chunks keep small indexes small (the bucket
#: directory is 2^b entries per table); past 2^21 rows, 6 x 21-bit chunks with 2 flips probe ~5x
#: fewer candidates per query at the same memory (measured at 10M: bench/results/shard_*).
AUTO_STAGES = ((0, 16, 1), (1 << 21, 21, 2))  # (from this many rows, chunk bits, flips)
#: Up to this many rows a top-k search scans every row: the probes guarantee only the codes
#: within ``guaranteed_radius``, and an edited copy's code can sit farther than that while its
#: side vector would still rank it first.
EXACT_BELOW = 1 << 16


def auto_geometry(rows: int, bits: int) -> Geometry:
    """The geometry an auto-sized index uses once it holds ``rows`` rows."""
    b, nflip = next((b, f) for start, b, f in reversed(AUTO_STAGES) if rows >= start)
    return Geometry(bits // b, b, nflip)


class CompactMIHIndex(BinaryIndex):
    """Multi-index hashing over ``nhash`` chunks of ``b`` bits with compact uint32 postings.

    Layout: rows (codes, int64 ids, tombstone bits) in insertion order; for table t and chunk
    value v the bucket is ``post[starts[t, v] : starts[t, v] + counts[t, v]]`` with spare room up
    to ``starts[t, v + 1]``. Each of a new row's ``nhash`` entries goes into its bucket's spare
    room when there is some; the rest wait as *pending* entries, first in a short unsorted tail
    (searched exhaustively, at most ``overflow`` entries), then merged into one run sorted by
    bucket (a directory narrows each probe to a few entries, so it stays cheap while large;
    ``_set_run``). Queries run in a compiled kernel (``shards.kernels``). When the run passes 1/16
    of all entries, or one add brings over 1/16 of the rows, every table is re-laid out with
    ``growth`` slack: re-layouts come at geometric intervals, so adds are O(1) amortised.
    Removal marks rows dead (filtered on every search); ``compact()`` drops them and sorts rows by
    id so that id lookups become binary searches.

    Params: ``nhash``, ``b``, ``nflip``, ``growth`` (1.15), ``overflow`` (2048). With ``b`` and
    ``nhash`` unset the geometry is automatic (``AUTO_STAGES``): the index re-keys itself once,
    under the write lock, when it passes 2^21 rows (a few seconds at that size). An explicit ``b``
    (or ``nhash``) fixes the geometry (``b`` defaults to 16, ``nhash`` to ``bits // b``,
    ``nflip`` to 1).
    """

    kind = "mihc"
    search_params = ("nflip",)
    _MAX_B = 24  # bucket tables are dense: 2^b entries per table
    _STEP = 1 << 18  # rows keyed per pass while inserting (bounds temporaries)
    _RUN_DIR_BITS = 18  # the pending run's directory has at most 2^18 cells (2 MB)

    def __init__(self, bits: int = 128, nhash: int | None = None, b: int | None = None,
                 nflip: int | None = None, growth: float = 1.15, overflow: int = 2048) -> None:
        if b is None and nhash is not None:
            b = 16  # nhash alone: the classic 16-bit chunks
        if b is not None:
            b = int(b)
            if not 1 <= b <= self._MAX_B:
                raise ValueError(f"mihc chunk width b must be in 1..{self._MAX_B}, got {b}")
            nhash = bits // b if nhash is None else int(nhash)  # default: cover every bit
            if nhash < 1 or nhash * b > bits:
                raise ValueError(f"mihc needs 1 <= nhash and nhash * b <= bits, got {nhash} * {b} > {bits}")
        if nflip is not None and not 0 <= int(nflip) <= 3:
            raise ValueError(f"mihc nflip must be in 0..3, got {nflip}")
        if not 1.0 < float(growth) <= 4.0:
            raise ValueError(f"mihc growth must be in (1, 4], got {growth}")
        if int(overflow) < 0:
            raise ValueError(f"mihc overflow must be >= 0, got {overflow}")
        super().__init__(bits, nhash=nhash, b=b, nflip=None if nflip is None else int(nflip),
                         growth=float(growth), overflow=int(overflow))
        self._reset_rows()

    # -- geometry ---------------------------------------------------------------------------------
    @property
    def auto(self) -> bool:
        """True when the geometry follows the row count (``b`` not given)."""
        return self.params["b"] is None

    def _target_geometry(self, rows: int) -> Geometry:
        p = self.params
        geo = auto_geometry(rows, self.bits) if self.auto else Geometry(p["nhash"], p["b"], 1)
        return geo if p["nflip"] is None else Geometry(geo.nhash, geo.b, p["nflip"])

    def _set_geometry(self, geo: Geometry) -> None:
        """Adopt ``geo`` with empty bucket tables (callers re-insert rows)."""
        self.geometry = geo
        self._nbuckets = 1 << geo.b
        self._starts = np.zeros((geo.nhash, self._nbuckets + 1), dtype=np.uint32)
        self._counts = np.zeros((geo.nhash, self._nbuckets), dtype=np.uint32)
        self._post = np.zeros(0, dtype=np.uint32)
        self._set_run(np.zeros(0, np.uint32), np.zeros(0, np.uint32))
        self._reset_tail()
        self._apply_search_params()

    def _apply_search_params(self) -> None:
        geo = self.geometry
        if self.params["nflip"] is not None:
            if not 0 <= self.params["nflip"] <= 3:
                raise ValueError(f"mihc nflip must be in 0..3, got {self.params['nflip']}")
            geo = self.geometry = Geometry(geo.nhash, geo.b, self.params["nflip"])
        self._masks = np.array([sum(1 << i for i in combo) for f in range(geo.nflip + 1)
                                for combo in combinations(range(geo.b), f)], dtype=np.int64)
        self._table_base = np.arange(geo.nhash, dtype=np.int64) * self._nbuckets  # table -> bucket 0

    @property
    def guaranteed_radius(self) -> int:
        """Every code within this Hamming distance is always found (pigeonhole)."""
        return self.geometry.guaranteed_radius

    def _reset_rows(self) -> None:
        self._codes = Growable(np.uint8, self.code_bytes)
        self._ids = Growable(np.int64)
        self._deadbits = Growable(np.uint8)  # packed bit per row: 1 = removed (tombstone)
        self._dead = 0
        self._sorted_prefix = 0  # rows [0, sorted_prefix) are sorted by id (after compact)
        self._set_geometry(self._target_geometry(0))

    # -- chunk keys -------------------------------------------------------------------------------
    def _keys(self, codes: np.ndarray) -> np.ndarray:
        """(n, B) codes -> (n, nhash) int64 chunk values (``buckets.chunk_keys``)."""
        return chunk_keys(codes, self.bits, self.geometry.b, self.geometry.nhash)

    def _flat_keys(self, codes: np.ndarray) -> np.ndarray:
        """(n, B) codes -> (n * nhash) uint32 bucket numbers over all tables (t * 2^b + chunk)."""
        return (self._keys(codes) + self._table_base).astype(np.uint32).reshape(-1)

    # -- add ----------------------------------------------------------------------------------------
    def _add(self, ids, codes):
        if self._codes.n + len(codes) >= 2 ** 32:
            raise ValueError("mihc holds at most 2^32 - 1 rows per index; use more shards")
        first_row = self._codes.n
        self._codes.append(codes)
        self._ids.append(ids)
        self._deadbits.append(np.zeros((self._ids.n + 7) // 8 - self._deadbits.n, dtype=np.uint8))
        target = self._target_geometry(self._ids.n)
        if target != self.geometry:  # grew into the next auto stage: re-key every row
            self._set_geometry(target)
            self._relayout_with(np.flatnonzero(self._live_mask()).astype(np.uint32))
            return
        new_rows = np.arange(first_row, self._ids.n, dtype=np.uint32)
        nh = self.geometry.nhash
        if len(new_rows) * nh > self._pending_budget():  # a big batch: lay out for it directly
            self._relayout_with(new_rows)
            return
        for s in range(0, len(new_rows), self._STEP):
            rows = new_rows[s:s + self._STEP]
            self._insert(self._flat_keys(codes[s:s + self._STEP]), np.repeat(rows, nh))
        self._settle()

    def _insert(self, buckets: np.ndarray, rows: np.ndarray) -> None:
        """Write entries (bucket number, row) into spare room; the rest join the pending tail."""
        if not len(buckets):
            return
        left_buckets, left_rows = place(buckets, rows, self._starts, self._counts, self._post,
                                        self._nbuckets)
        if len(left_rows):
            self._tail_buckets.append(left_buckets)
            self._tail_rows.append(left_rows)

    def _settle(self) -> None:
        """Sort a full tail into the run; re-lay out when the run passes 1/16 of all entries."""
        if self._tail_rows.n > self.params["overflow"]:
            tb, tr = self._tail_buckets.view, self._tail_rows.view
            order = np.argsort(tb, kind="stable")
            at = np.searchsorted(self._run_buckets, tb[order], side="right")
            self._set_run(np.insert(self._run_buckets, at, tb[order]),
                          np.insert(self._run_rows, at, tr[order]))
            self._reset_tail()
        if len(self._run_rows) > self._pending_budget():
            self._relayout_with(np.zeros(0, dtype=np.uint32))

    def _pending_budget(self) -> int:
        """Most pending entries before a re-layout: 1/16 of all entries (at least ``overflow``)."""
        return max(self.params["overflow"], (self._ids.n * self.geometry.nhash) >> 4)

    def _set_run(self, buckets: np.ndarray, rows: np.ndarray) -> None:
        """Adopt a bucket-sorted run and index it: ``_run_dir[c]`` is where the run's entries for
        buckets ``c << _run_shift`` onwards begin, so a probe binary-searches a few entries, not
        the whole run (a multi-million-entry run otherwise costs ~0.2 ms per query at 10M)."""
        self._run_buckets, self._run_rows = buckets, rows
        total = self.geometry.nhash << self.geometry.b
        self._run_shift = max(0, (total - 1).bit_length() - self._RUN_DIR_BITS)
        cells = ((total - 1) >> self._run_shift) + 1
        self._run_dir = np.zeros(cells + 1, dtype=np.int64)
        if len(buckets):
            np.cumsum(np.bincount(buckets >> self._run_shift, minlength=cells), out=self._run_dir[1:])

    def _reset_tail(self) -> None:
        self._tail_buckets, self._tail_rows = Growable(np.uint32), Growable(np.uint32)

    def _relayout_with(self, rows: np.ndarray) -> None:
        """Re-lay out every table with room for the pending entries and for ``rows`` (which have
        no entries yet), then insert them all: they all fit."""
        nh, nb = self.geometry.nhash, self._nbuckets
        pend_b = np.concatenate([self._run_buckets, self._tail_buckets.view])
        pend_r = np.concatenate([self._run_rows, self._tail_rows.view])
        live = self._is_live(pend_r)
        pend_b, pend_r = pend_b[live], pend_r[live]
        extra = np.bincount(pend_b, minlength=nh * nb)
        for s in range(0, len(rows), self._STEP):
            extra += np.bincount(self._flat_keys(self._codes.view[rows[s:s + self._STEP]]), minlength=nh * nb)
        self._relayout(extra.reshape(nh, nb))
        self._set_run(np.zeros(0, np.uint32), np.zeros(0, np.uint32))
        self._reset_tail()
        self._insert(pend_b, pend_r)
        for s in range(0, len(rows), self._STEP):
            chunk = rows[s:s + self._STEP]
            self._insert(self._flat_keys(self._codes.view[chunk]), np.repeat(chunk, nh))

    def _relayout(self, extra: np.ndarray) -> None:
        """Re-lay out every table with room for ``extra`` (nhash, 2^b) more entries per bucket
        and ``growth`` slack (``buckets.relayout``)."""
        self._post, self._starts = relayout(self._starts, self._counts, self._post, extra,
                                            self.params["growth"])

    # -- search ---------------------------------------------------------------------------------
    def _candidates(self, codes: np.ndarray, k: int, radius: int) -> tuple[np.ndarray, ...]:
        """(query index, row, distance) of the candidates the kernel keeps (``kernels.candidates``)."""
        # each waiting row once: its other entries are probed in the tables
        tail = np.unique(self._tail_rows.view) if self._tail_rows.n else self._tail_rows.view
        return kernels.candidates(
            self._keys(codes), as_words(np.ascontiguousarray(codes)), k, radius, self.bits,
            self._masks, self._starts, self._counts, self._post, self._run_buckets, self._run_dir,
            self._run_shift, self._run_rows,
            tail, as_words(self._codes.view), self._deadbits.view, self._dead > 0)

    def warm_up(self) -> None:
        """Compile the query kernel for this index's array types, or load it from numba's disk
        cache (~5 s the first time on a machine, ~0.3 s after), before the first real query."""
        with self._lock.read():
            self._candidates(np.zeros((1, self.code_bytes), dtype=np.uint8), 1, self.bits)

    def _search(self, codes, k):
        if self._ids.n <= EXACT_BELOW:
            return self._exact_search(codes, k)
        qidx, rows, dists = self._candidates(codes, k, self.bits)
        return topk_from_candidates(qidx, self._ids.view[rows], dists, len(codes), k)

    def _exact_search(self, codes: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """The exact top k over every live row: below EXACT_BELOW rows a full scan costs about a
        millisecond, and it also finds the copies farther than the probes reach."""
        dead = ~self._live_mask()
        kk = min(k, int((~dead).sum()))
        qidx, rows, dists = [], [], []
        for q, query in enumerate(codes):
            d = hamming_to(self._codes.view, query)
            d[dead] = MISSING_DISTANCE
            top = np.argpartition(d, kk - 1)[:kk] if 0 < kk < len(d) else np.flatnonzero(~dead)
            qidx.append(np.full(len(top), q, np.int64))
            rows.append(top)
            dists.append(d[top])
        rows = np.concatenate(rows) if rows else np.zeros(0, np.int64)
        return topk_from_candidates(np.concatenate(qidx) if qidx else np.zeros(0, np.int64),
                                    self._ids.view[rows],
                                    np.concatenate(dists) if dists else np.zeros(0, np.int32), len(codes), k)

    def _range_search(self, codes, radius):
        qidx, rows, dists = self._candidates(codes, 0, radius)
        return ranges_from_candidates(qidx, self._ids.view[rows], dists, len(codes), radius)

    # -- remove / compact ---------------------------------------------------------------------
    def _rows_of(self, ids: np.ndarray) -> np.ndarray:
        """Live rows holding any of the (sorted, unique) ids."""
        all_ids, p = self._ids.view, self._sorted_prefix
        found = []
        if p:
            lo = np.searchsorted(all_ids[:p], ids, side="left")
            hi = np.searchsorted(all_ids[:p], ids, side="right")
            found.append(concat_ranges(lo, hi - lo))
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
            self._add(ids, codes)  # one batch of every row: laid out directly, nothing pending
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
                + self._run_buckets.nbytes + self._run_rows.nbytes + self._run_dir.nbytes
                + self._tail_buckets.used_bytes + self._tail_rows.used_bytes
                + self._post.nbytes + self._starts.nbytes + self._counts.nbytes)

    def _save(self, out):
        for name, arr in (("codes", self._codes.view), ("ids", self._ids.view),
                          ("deadbits", self._deadbits.view),
                          ("pending_buckets", np.concatenate([self._run_buckets, self._tail_buckets.view])),
                          ("pending_rows", np.concatenate([self._run_rows, self._tail_rows.view])),
                          ("starts", self._starts), ("counts", self._counts), ("post", self._post)):
            save_npy(out / f"{name}.npy", arr)
        geo = self.geometry
        return {"dead": self._dead, "sorted_prefix": self._sorted_prefix, "rows": self._ids.n,
                "pending_tail": self._tail_rows.n,  # the last entries of pending_*: the tail
                "geometry": {"nhash": geo.nhash, "b": geo.b, "nflip": geo.nflip}}

    def _load(self, src, state):
        n_rows = int(state.get("rows", 0))
        geo = Geometry(**state["geometry"]) if "geometry" in state else self._target_geometry(n_rows)
        self.geometry, self._nbuckets = geo, 1 << geo.b
        self._codes = Growable(np.uint8, data=load_npy(src / "codes.npy"))
        self._ids = Growable(np.int64, data=load_npy(src / "ids.npy"))
        self._deadbits = Growable(np.uint8, data=load_npy(src / "deadbits.npy"))
        pend_b, pend_r = load_npy(src / "pending_buckets.npy"), load_npy(src / "pending_rows.npy")
        run = len(pend_r) - int(state.get("pending_tail", 0))
        self._set_run(pend_b[:run], pend_r[:run])
        self._reset_tail()
        self._tail_buckets.append(pend_b[run:])
        self._tail_rows.append(pend_r[run:])
        self._starts = load_npy(src / "starts.npy")
        self._counts = load_npy(src / "counts.npy")
        self._post = load_npy(src / "post.npy")
        self._dead = int(state.get("dead", 0))
        self._sorted_prefix = int(state.get("sorted_prefix", 0))
        n = self._ids.n
        if (self._codes.n != n or self._deadbits.n != (n + 7) // 8
                or self._dead != n - int(self._live_mask().sum())
                or self._starts.shape != (self.geometry.nhash, self._nbuckets + 1)
                or self._counts.shape != (self.geometry.nhash, self._nbuckets)
                or len(self._post) != int(self._starts[-1, -1])
                or len(pend_b) != len(pend_r) or not 0 <= run <= len(pend_r)
                or (run and (np.diff(pend_b[:run].astype(np.int64)) < 0).any())
                or (len(pend_r) and (int(pend_r.max()) >= n or int(pend_b.max()) >= geo.nhash << geo.b))):
            raise ValueError(f"corrupt mihc index in {src}: inconsistent array shapes")
        self._apply_search_params()

    def info(self) -> dict:
        geo = self.geometry
        return {**super().info(), "geometry": {"nhash": geo.nhash, "b": geo.b, "nflip": geo.nflip,
                                               "guaranteed_radius": geo.guaranteed_radius}}


