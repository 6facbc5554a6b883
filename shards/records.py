"""A shard's record layout: what writers send and the WAL holds, and the row the store keeps.

A *record* is the code, then an int8 side vector when ``vector_bytes`` > 0
(``shards.vectors``), then the image's packed keypoints (``shards.verify``) when
``keypoint_bytes`` > 0. A store *row* is the same, except that the keypoints (9 KB) live in
the shard's blob log (``shards.blobs``) and the row holds their 8-byte slot, so the store's
in-memory part and its snapshots stay small.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from shards.blobs import NO_SLOT, BlobLog
from formats.vectors import SIDE_HASH_BYTES
from shards.verify import KEYPOINT_BYTES
from shards.views import base_id, is_view

SLOT_BYTES = 8


@dataclass(frozen=True)
class RecordLayout:
    """The widths of a shard's records and rows, and the conversions between them."""

    bits: int
    vector_bytes: int = 0
    keypoint_bytes: int = 0

    def __post_init__(self) -> None:
        if self.keypoint_bytes not in (0, KEYPOINT_BYTES):
            raise ValueError(f"keypoint_bytes must be 0 or {KEYPOINT_BYTES}, got {self.keypoint_bytes}")

    @property
    def code_bytes(self) -> int:
        return self.bits // 8

    @property
    def record_bytes(self) -> int:
        return self.code_bytes + self.vector_bytes + self.keypoint_bytes

    @property
    def store_bytes(self) -> int:
        return self.code_bytes + self.vector_bytes + (SLOT_BYTES if self.keypoint_bytes else 0)

    # -- what callers send --------------------------------------------------------------------------
    def check(self, codes: Any, n: int | None = None, width: int | None = None) -> np.ndarray:
        """(n, width) uint8: query codes, or with ``width=record_bytes`` the records to store."""
        width = width or self.code_bytes
        what = ("codes" if width == self.code_bytes else f"records (code + {self.vector_bytes}-byte "
                f"vector + {self.keypoint_bytes}-byte keypoints)")
        if not isinstance(codes, np.ndarray) or codes.dtype != np.uint8:
            raise ValueError(f"{what} must be a numpy uint8 array of shape (n, {width})")
        if codes.ndim == 1 and codes.shape[0] == width:
            codes = codes[None, :]
        if codes.ndim != 2 or codes.shape[1] != width:
            raise ValueError(f"{what} must have shape (n, {width}) for {self.bits}-bit "
                             f"codes, got {codes.shape}")
        if n is not None and len(codes) != n:
            raise ValueError(f"got {len(codes)} codes for {n} ids")
        return np.ascontiguousarray(codes)

    def fit(self, codes: Any, n: int) -> np.ndarray:
        """What an add sends -> (n, record_bytes) records. A writer sends ``code [|| vector]
        [|| keypoints]`` (``shards.vectors.records``); a part the shard keeps but the writer lacks
        is zero-filled (no vector: ranked by Hamming; no keypoints: never verified), and a part
        the shard does not keep is dropped. So writers need not know the index."""
        if not (isinstance(codes, np.ndarray) and codes.dtype == np.uint8 and codes.ndim == 2):
            return self.check(codes, n, self.record_bytes)
        cb, width = self.code_bytes, codes.shape[1]
        if width == self.record_bytes:
            return self.check(codes, n, self.record_bytes)
        # a writer's vector: one int8 per bit, optionally followed by a side hash
        widths = {0, self.vector_bytes, self.bits, self.bits + SIDE_HASH_BYTES}
        kp = KEYPOINT_BYTES if width - cb - KEYPOINT_BYTES in widths else 0
        vw = width - cb - kp
        if vw not in widths:
            return self.check(codes, n, self.record_bytes)
        parts = [codes[:, :cb]]
        if self.vector_bytes:
            parts.append(_fit_width(codes[:, cb:cb + vw], self.vector_bytes))
        if self.keypoint_bytes:
            parts.append(codes[:, cb + vw:] if kp else np.zeros((len(codes), self.keypoint_bytes), np.uint8))
        return self.check(np.concatenate(parts, 1), n, self.record_bytes)

    # -- records <-> store rows -----------------------------------------------------------------------
    def slot(self, row: bytes) -> int | None:
        """The blob-log slot of a stored row's keypoints; None without keypoints."""
        if not self.keypoint_bytes:
            return None
        n = self.code_bytes + self.vector_bytes
        slot = int.from_bytes(row[n:n + SLOT_BYTES], "little", signed=True)
        return None if slot == NO_SLOT else slot

    def keypoints(self, row: bytes, blobs: BlobLog | None) -> np.ndarray | None:
        """A stored row's packed keypoints, read from the blob log; None without keypoints."""
        slot = self.slot(row)
        return None if slot is None else blobs.read(slot)

    def keypoints_of(self, items: list, blobs: BlobLog | None) -> list[np.ndarray | None]:
        """Stored items' packed keypoints; None for a missing item or one without keypoints."""
        return [None if it is None or blobs is None else self.keypoints(it.code, blobs) for it in items]

    def keypoints_by_id(self, store, ids: list[str], blobs: BlobLog | None) -> list[np.ndarray | None]:
        """Each stored id's packed keypoints from ``store`` (``IdStore``). A stored view without
        keypoints of its own (a crop) has its image's, so a hit is verified by the id of the view
        it matched through (``shards.views.verify_id``); a mirror has its own."""
        kps = self.keypoints_of(store.get_ids(ids), blobs)
        borrow = [i for i, k in enumerate(kps) if k is None and is_view(ids[i])]
        if borrow:
            for i, k in zip(borrow, self.keypoints_of(store.get_ids([base_id(ids[i]) for i in borrow]), blobs)):
                kps[i] = k
        return kps

    def to_rows(self, records: np.ndarray, blobs: BlobLog | None) -> np.ndarray:
        """Records -> store rows: keypoints go to the blob log, their slot into the row."""
        if not self.keypoint_bytes:
            return records
        n = self.code_bytes + self.vector_bytes
        kps = records[:, n:]
        slots = np.full(len(records), NO_SLOT, dtype="<i8")
        has = kps[:, :2].any(axis=1)  # a zero count: no keypoints (a view, an add by code)
        slots[has] = blobs.append(kps[has])
        return np.concatenate([records[:, :n], slots[:, None].view(np.uint8)], axis=1)

    def to_records(self, rows: Sequence[bytes], blobs: BlobLog | None) -> np.ndarray:
        """Store rows -> (n, record_bytes) records as written (keypoints read back)."""
        recs = np.zeros((len(rows), self.record_bytes), np.uint8)
        n = self.code_bytes + self.vector_bytes
        for rec, row in zip(recs, rows):
            rec[:n] = np.frombuffer(row[:n], np.uint8)
            kps = self.keypoints(row, blobs)
            if kps is not None:
                rec[n:] = kps
        return recs

    def vector_array(self, rows: np.ndarray) -> np.ndarray:
        """The side vectors of store rows given as one (n, row bytes) uint8 array, (n,
        vector_bytes) int8."""
        cb, vb = self.code_bytes, self.vector_bytes
        return np.ascontiguousarray(rows[:, cb:cb + vb]).view(np.int8)

    def same(self, row: bytes, record: np.ndarray, blobs: BlobLog | None) -> bool:
        """Whether a stored row (code, vector, keypoint slot) holds this record."""
        n = self.code_bytes + self.vector_bytes
        if row[:n] != record[:n].tobytes():
            return False
        kps = self.keypoints(row, blobs)
        if kps is None:
            return not record[n:].any()
        return bool(np.array_equal(kps, record[n:]))

    def classify(self, olds: list, records: np.ndarray, metas: list[str],
                 blobs: BlobLog | None) -> np.ndarray:
        """Per item, given its stored item (or None): 'added', 'replaced' (new record or meta)
        or 'unchanged'."""
        status = np.empty(len(olds), dtype=object)
        for i, old in enumerate(olds):
            if old is None:
                status[i] = "added"
            elif old.meta == metas[i] and self.same(old.code, records[i], blobs):
                status[i] = "unchanged"
            else:
                status[i] = "replaced"
        return status


def _fit_width(vectors: np.ndarray, width: int) -> np.ndarray:
    """A writer's side vectors cut or zero-filled to ``width`` bytes: a side hash the shard does
    not keep is dropped, one it keeps but the writer lacks is zero (never credited)."""
    if vectors.shape[1] >= width:
        return vectors[:, :width]
    return np.concatenate([vectors, np.zeros((len(vectors), width - vectors.shape[1]), np.uint8)], 1)
