"""External string ids -> int64 keys, plus each item's code and metadata.

The FAISS id of an item is the 64-bit xxhash of its external id (UTF-8), read as a signed int64.
Two different external ids with the same hash are rejected (``HashCollisionError``), never
silently merged.

Storage is two-level, so memory does not grow with a Python object per item:

- the *base*: the last snapshot, memory-mapped (``shards.store_snapshot``: Arrow IPC sorted by
  hash, the hashes again for binary search, and a Parquet copy);
- the *overlay*: a dict of items added or replaced since that snapshot, plus the set of base rows
  deleted or shadowed. ``write_snapshot`` merges both, block by block, into a new base.
"""
from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import numpy as np
import xxhash

from shards.store_snapshot import BLOCK, StoredItem, empty_base, open_base, write_merged


class HashCollisionError(ValueError):
    """Two different external ids hash to the same 64-bit key."""


def _hash64(data: bytes) -> int:
    return xxhash.xxh64_intdigest(data)


def id_hash(ext_id: str) -> int:
    """int64 key of an external id: xxh64 of its UTF-8 bytes as signed int64 (never -1)."""
    h = _hash64(ext_id.encode("utf-8"))
    h = h - (1 << 64) if h >= (1 << 63) else h
    return -2 if h == -1 else h  # -1 marks "no result" in FAISS; -2 collisions are detected


def hash_ids(ext_ids: Sequence[str]) -> np.ndarray:
    """int64 keys for a list of external ids."""
    return np.fromiter((id_hash(i) for i in ext_ids), dtype=np.int64, count=len(ext_ids))


class IdStore:
    """Maps int64 keys to (external id, code, meta); see the module docstring for the layout."""

    def __init__(self, code_bytes: int) -> None:
        if code_bytes <= 0:
            raise ValueError(f"code_bytes must be positive, got {code_bytes}")
        self.code_bytes = int(code_bytes)
        self._base = empty_base()
        self._overlay: dict[int, StoredItem] = {}
        self._overlay_bytes = 0
        self._count = 0
        self._writes = 0  # bumped by every write: invalidates the sorted overlay keys
        self._sorted_overlay: tuple[tuple, np.ndarray] = ((), np.zeros(0, np.int64))
        self._lock = threading.Lock()  # writers; readers rely on atomic dict/set operations

    # -- reads ------------------------------------------------------------------------------------
    def __len__(self) -> int:
        return self._count

    def get_many(self, hashes: Iterable[int] | np.ndarray) -> list[StoredItem | None]:
        """Items for int64 keys (None where absent)."""
        hashes = np.asarray(hashes, dtype=np.int64).reshape(-1)
        base, overlay = self._base, self._overlay
        out: list[StoredItem | None] = [overlay.get(h) for h in hashes.tolist()]
        missing = np.array([i for i, item in enumerate(out) if item is None], dtype=np.int64)
        if len(missing) and len(base):
            rows = base.rows_of(hashes[missing])
            hit = rows >= 0
            for i, item in zip(missing[hit].tolist(), base.items(rows[hit])):
                out[i] = item
        return out

    def get(self, ext_id: str) -> StoredItem | None:
        """The item stored under this external id, or None."""
        return self.get_ids([ext_id])[0]

    def get_ids(self, ext_ids: Sequence[str]) -> list[StoredItem | None]:
        """The items stored under these external ids (None where absent), in one lookup."""
        items = self.get_many(hash_ids(ext_ids))
        return [item if item is not None and item.id == i else None for i, item in zip(ext_ids, items)]

    def ids_of(self, hashes: np.ndarray) -> list[str | None]:
        """External ids for int64 keys (None where absent); cheaper than get_many."""
        return self._lookup(hashes, rows=False)[0]

    def rows_of(self, hashes: np.ndarray) -> tuple[list[str | None], np.ndarray]:
        """External ids (None where absent) and stored rows, (n, code_bytes) uint8 (zeros where
        absent), for int64 keys: what scoring many candidates needs, without an item each."""
        return self._lookup(hashes, rows=True)

    def _lookup(self, hashes: np.ndarray, rows: bool) -> tuple[list[str | None], np.ndarray | None]:
        """Ids (and with ``rows`` the stored rows) of int64 keys: the overlay's, then the
        base's for the keys the overlay lacks."""
        hashes = np.asarray(hashes, dtype=np.int64).reshape(-1)
        base, overlay = self._base, self._overlay
        items = [overlay.get(h) for h in hashes.tolist()] if overlay else [None] * len(hashes)
        ids: list[str | None] = [None if item is None else item.id for item in items]
        out = np.zeros((len(hashes), self.code_bytes), dtype=np.uint8) if rows else None
        held = [i for i, item in enumerate(items) if item is not None]
        missing = [i for i, item in enumerate(items) if item is None] if held else list(range(len(items)))
        if rows and held:
            codes = b"".join([items[i].code for i in held])
            out[held] = np.frombuffer(codes, np.uint8).reshape(len(held), self.code_bytes)
        if missing and len(base):
            where = np.array(missing, dtype=np.int64)
            found = base.rows_of(hashes[where])
            where, found = where[found >= 0], found[found >= 0]
            if rows:
                out[where] = base.codes(found, self.code_bytes)
            for i, ext in zip(where.tolist(), base.ids(found)):
                ids[i] = ext
        return ids, out

    def page(self, after: int | None, limit: int) -> tuple[np.ndarray, list[StoredItem]]:
        """Up to ``limit`` live items in ascending key order, from the first key above ``after``
        (None: from the start) -> (keys, items). Paging by key is stable while other keys are
        added or removed, so a batch job can walk a shard and resume from the last key it did."""
        lo = np.iinfo(np.int64).min if after is None else int(after) + 1
        base = self._base
        keys = []
        if len(base):
            pos = int(np.searchsorted(base.hashes, lo))
            while len(keys) < limit and pos < len(base):
                rows = base.live(np.arange(pos, min(pos + 2 * limit, len(base))))
                keys.extend(base.hashes[rows][:limit - len(keys)].tolist())
                pos += 2 * limit
        over = self._overlay_keys()
        start = int(np.searchsorted(over, lo))
        keys = np.unique(np.concatenate([np.array(keys, np.int64), over[start:start + limit]]))[:limit]
        items = self.get_many(keys)
        live = [i for i, it in enumerate(items) if it is not None]
        return keys[live], [items[i] for i in live]

    def page_starts(self, limit: int) -> list[int | None]:
        """The ``after`` of every page of ``limit`` live keys (``page``): None, then every
        ``limit``-th key. A job fixes its pages up front and can then run them in any order."""
        base = self._base
        keys = base.hashes
        if base.dead:
            keys = np.delete(keys, np.fromiter(base.dead, np.int64))
        keys = np.union1d(keys, self._overlay_keys())
        return [None, *keys[limit - 1:-1:limit].tolist()] if len(keys) else []

    def _overlay_keys(self) -> np.ndarray:
        stamp = (self._writes, id(self._overlay), len(self._overlay))
        seen, keys = self._sorted_overlay
        if seen != stamp:  # a write, or a snapshot that swapped the overlay
            keys = np.sort(np.fromiter(list(self._overlay), np.int64))
            self._sorted_overlay = (stamp, keys)
        return keys

    def check_collisions(self, ext_ids: Sequence[str], hashes: np.ndarray) -> None:
        """Raise HashCollisionError if a key is held by (or requested for) a different id."""
        seen: dict[int, str] = {}
        for ext, h in zip(ext_ids, hashes.tolist()):
            other = seen.setdefault(h, ext)
            if other != ext:
                raise HashCollisionError(
                    f"ids {other!r} and {ext!r} have the same 64-bit hash {h}; rename one of them")
        for ext, item in zip(ext_ids, self.get_many(hashes)):
            if item is not None and item.id != ext:
                raise HashCollisionError(
                    f"id {ext!r} has the same 64-bit hash as stored id {item.id!r}; "
                    f"rename it (the stored item was left unchanged)")

    def iter_codes(self, batch: int = BLOCK) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """All live (int64 keys, codes (n, code_bytes)) in batches, e.g. to rebuild an index."""
        base, overlay = self._base, self._overlay
        for start in range(0, len(base), batch):
            rows = base.live(np.arange(start, min(start + batch, len(base))))
            yield base.hashes[rows].copy(), base.codes(rows, self.code_bytes)
        items = list(overlay.items())
        for start in range(0, len(items), batch):
            part = items[start:start + batch]
            hashes = np.array([h for h, _ in part], dtype=np.int64)
            codes = np.frombuffer(b"".join(it.code for _, it in part), dtype=np.uint8)
            yield hashes, codes.reshape(-1, self.code_bytes).copy()

    # -- writes ---------------------------------------------------------------------------------
    def put(self, ext_id: str, h: int, code: bytes, meta: str) -> bool:
        """Insert or replace; returns True when the key was new. Caller checked collisions."""
        if len(code) != self.code_bytes:
            raise ValueError(f"code has {len(code)} bytes, expected {self.code_bytes}")
        with self._lock:
            old = self._overlay.get(h)
            is_new = old is None
            if old is not None:
                self._overlay_bytes -= self._item_bytes(old)
            else:
                row = int(self._base.rows_of(np.array([h], dtype=np.int64))[0])
                if row >= 0:
                    self._base.dead.add(row)  # shadowed by the overlay entry
                    is_new = False
            item = StoredItem(ext_id, bytes(code), meta)
            self._overlay[h] = item
            self._overlay_bytes += self._item_bytes(item)
            self._writes += 1
            self._count += int(is_new)
            return is_new

    def put_many(self, ext_ids: Sequence[str], hashes: np.ndarray, codes: np.ndarray,
                 metas: Sequence[str]) -> int:
        """Insert or replace a batch (codes (n, code_bytes)); returns how many keys were new."""
        codes = np.ascontiguousarray(codes, dtype=np.uint8)
        if codes.ndim != 2 or codes.shape[1] != self.code_bytes or len(codes) != len(ext_ids):
            raise ValueError(f"codes must have shape ({len(ext_ids)}, {self.code_bytes})")
        hashes = np.asarray(hashes, dtype=np.int64)
        with self._lock:
            overlay, base = self._overlay, self._base
            in_overlay = np.fromiter((h in overlay for h in hashes.tolist()), dtype=bool,
                                     count=len(hashes))
            rows = np.full(len(hashes), -1, dtype=np.int64)
            if len(base) and (~in_overlay).any():
                rows[~in_overlay] = base.rows_of(hashes[~in_overlay])
            base.dead.update(rows[rows >= 0].tolist())  # shadowed by the overlay entries
            new = 0
            raw = codes.tobytes()
            cb = self.code_bytes
            for i, (ext, h, meta) in enumerate(zip(ext_ids, hashes.tolist(), metas)):
                old = overlay.get(h)
                if old is not None:
                    self._overlay_bytes -= self._item_bytes(old)
                elif rows[i] < 0:
                    new += 1
                item = StoredItem(ext, raw[i * cb:(i + 1) * cb], meta)
                overlay[h] = item
                self._overlay_bytes += self._item_bytes(item)
            self._writes += 1
            self._count += new
            return new

    def delete(self, h: int) -> bool:
        """Remove a key; returns whether it was present."""
        with self._lock:
            old = self._overlay.pop(h, None)
            if old is not None:
                self._overlay_bytes -= self._item_bytes(old)
            row = int(self._base.rows_of(np.array([h], dtype=np.int64))[0])
            if row >= 0:
                self._base.dead.add(row)
            present = old is not None or row >= 0
            self._writes += 1
            self._count -= int(present)
            return present

    @staticmethod
    def _item_bytes(item: StoredItem) -> int:
        # dict slot + key int + dataclass + three objects (CPython sizes, approximate)
        return 104 + 32 + 56 + 49 + len(item.id) + 33 + len(item.code) + 49 + len(item.meta)

    def memory_bytes(self) -> int:
        """Heap bytes held for the overlay and the dead-row set (the base is memory-mapped)."""
        return self._overlay_bytes + 72 * len(self._base.dead)

    def mapped_bytes(self) -> int:
        """Size of the memory-mapped base files (paged in on demand, evictable)."""
        return self._base.mapped_bytes

    @property
    def overlay_size(self) -> int:
        return len(self._overlay)

    # -- snapshots ------------------------------------------------------------------------------
    def write_snapshot(self, out_dir: str | os.PathLike) -> int:
        """Write base + overlay merged and sorted by hash into out_dir; returns the row count.

        Writers must be paused by the caller (the shard's write lock); readers may continue.
        """
        return write_merged(Path(out_dir), self._base, self._overlay, self.code_bytes)

    @classmethod
    def open(cls, snap_dir: str | os.PathLike, code_bytes: int) -> "IdStore":
        """Open a snapshot: memory-map the Arrow file (rebuilt from Parquet if missing)."""
        store = cls(code_bytes)
        store._base = open_base(snap_dir, code_bytes)
        store._count = len(store._base)
        return store
