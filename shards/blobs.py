"""BlobLog: fixed-size blobs appended to one file and read back by slot number.

A shard keeps each image's keypoints (``shards.verify``, 9,220 bytes) here rather than in its
store's records, so that the store (whose unsnapshotted part sits in memory, and which every
snapshot rewrites) holds only an 8-byte slot number per entry, and a query reads just the
blobs of the hits it verifies (``os.pread``).

Durability comes from the write-ahead log, not from this file: a WAL add record carries the
blob, and every snapshot records how many slots it covers (after fsyncing this file). On
start-up the log is cut back to that count and WAL replay appends the rest again, so a torn
tail after a crash is harmless. Slots of replaced or removed entries are not reused.
"""
from __future__ import annotations

import os
import threading
from pathlib import Path

import numpy as np

NO_SLOT = -1


class BlobLog:
    """Append-only file of ``size``-byte blobs; ``keep`` = slots that survive from before."""

    def __init__(self, path: str | Path, size: int, keep: int = 0) -> None:
        self.path, self.size = Path(path), int(size)
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        have = os.fstat(self._fd).st_size // self.size
        if have < keep:
            os.close(self._fd)
            raise RuntimeError(f"{self.path} holds {have} blobs but its snapshot covers {keep}")
        os.ftruncate(self._fd, keep * self.size)
        self.count = int(keep)
        self._lock = threading.Lock()

    def append(self, blobs: np.ndarray) -> np.ndarray:
        """(n, size) uint8 -> their slot numbers (n,) int64; not fsynced (see the module doc)."""
        blobs = np.ascontiguousarray(blobs, dtype=np.uint8).reshape(-1, self.size)
        with self._lock:
            start = self.count
            if len(blobs):
                os.pwrite(self._fd, blobs.tobytes(), start * self.size)
            self.count = start + len(blobs)
        return np.arange(start, start + len(blobs), dtype=np.int64)

    def read(self, slot: int) -> np.ndarray:
        """The blob in ``slot`` as (size,) uint8."""
        if not 0 <= slot < self.count:
            raise IndexError(f"blob slot {slot} out of range (0..{self.count - 1})")
        return np.frombuffer(os.pread(self._fd, self.size, slot * self.size), np.uint8)

    def sync(self) -> None:
        """fsync the file: call before a snapshot records ``count``."""
        os.fsync(self._fd)

    def bytes(self) -> int:
        return self.count * self.size

    def close(self) -> None:
        os.close(self._fd)
