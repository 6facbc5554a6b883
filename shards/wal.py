"""Append-only write-ahead log: length + CRC32 framed records, fsynced before append returns.

File layout: an 8-byte magic, then frames ``<u32 payload length><u32 crc32(payload)><payload>``.
Payload: ``<u8 op><u32 id len><u16 code len><u32 meta len>`` then the UTF-8 id, the code bytes
and the UTF-8 meta JSON. A crash can leave a torn last frame; ``replay`` stops there and
truncates it. A bad frame that is followed by a good one is not a torn tail but corruption in
the middle of the log, so ``replay`` refuses to guess (``WalCorruptError``).
"""
from __future__ import annotations

import os
import struct
import time
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

MAGIC = b"NDWAL01\n"
OP_ADD = 1
OP_REMOVE = 2
_FRAME = struct.Struct("<II")
_HEAD = struct.Struct("<BIHI")
_MAX_PAYLOAD = 64 << 20


class WalCorruptError(RuntimeError):
    """The log is damaged before its tail; acknowledged records may be unreadable."""


@dataclass(frozen=True)
class WalRecord:
    op: int
    id: str
    code: bytes = b""
    meta: str = ""

    def encode(self) -> bytes:
        ident, meta = self.id.encode("utf-8"), self.meta.encode("utf-8")
        payload = _HEAD.pack(self.op, len(ident), len(self.code), len(meta)) + ident + self.code + meta
        return _FRAME.pack(len(payload), zlib.crc32(payload)) + payload

    @classmethod
    def decode(cls, payload: bytes) -> "WalRecord":
        op, n_id, n_code, n_meta = _HEAD.unpack_from(payload)
        if op not in (OP_ADD, OP_REMOVE) or _HEAD.size + n_id + n_code + n_meta != len(payload):
            raise ValueError("malformed WAL record")
        pos = _HEAD.size
        ident = payload[pos:pos + n_id].decode("utf-8")
        pos += n_id
        code = payload[pos:pos + n_code]
        meta = payload[pos + n_code:].decode("utf-8")
        return cls(op, ident, code, meta)


def fsync_dir(path: str | os.PathLike) -> None:
    """fsync a directory so that file creations/renames in it are durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(path: str | os.PathLike) -> None:
    """fsync every file under path, then every directory (before an atomic rename)."""
    for dirpath, _dirs, files in os.walk(path):
        for name in files:
            fd = os.open(os.path.join(dirpath, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        fsync_dir(dirpath)


def _read_frame(data: bytes, pos: int) -> tuple[WalRecord | None, int]:
    """Decode the frame at pos -> (record, next pos), or (None, pos) if it is bad or torn."""
    if pos + _FRAME.size > len(data):
        return None, pos
    length, crc = _FRAME.unpack_from(data, pos)
    end = pos + _FRAME.size + length
    if length > _MAX_PAYLOAD or end > len(data):
        return None, pos
    payload = data[pos + _FRAME.size:end]
    if zlib.crc32(payload) != crc:
        return None, pos
    try:
        return WalRecord.decode(payload), end
    except (ValueError, UnicodeDecodeError, struct.error):
        return None, pos


def _scan(path: Path) -> tuple[list[WalRecord], int, int]:
    """Read all good records -> (records, end of the last good frame, file size)."""
    data = path.read_bytes()
    if not data.startswith(MAGIC):
        if len(data) < len(MAGIC) and MAGIC.startswith(data):
            return [], 0, len(data)  # torn while writing the header
        raise WalCorruptError(f"{path} is not a neardup WAL (bad magic)")
    records, pos = [], len(MAGIC)
    while pos < len(data):
        rec, nxt = _read_frame(data, pos)
        if rec is None:
            _check_tail(path, data, pos)
            break
        records.append(rec)
        pos = nxt
    return records, pos, len(data)


def _check_tail(path: Path, data: bytes, pos: int) -> None:
    """A bad frame whose declared length is intact and is followed by a good frame is corruption."""
    if pos + _FRAME.size > len(data):
        return
    length, _crc = _FRAME.unpack_from(data, pos)
    nxt = pos + _FRAME.size + length
    if length <= _MAX_PAYLOAD and nxt < len(data) and _read_frame(data, nxt)[0] is not None:
        raise WalCorruptError(f"{path}: damaged record at byte {pos} followed by valid records; "
                              f"refusing to drop acknowledged writes (restore from a replica)")


def replay(path: str | os.PathLike, truncate: bool = True) -> Iterator[WalRecord]:
    """Yield the log's records in order; a torn tail is cut off (when truncate) and ignored."""
    p = Path(path)
    if not p.exists():
        return
    records, good_end, size = _scan(p)
    if truncate and good_end < size:
        with open(p, "r+b") as f:
            f.truncate(max(good_end, 0))
            f.flush()
            os.fsync(f.fileno())
    yield from records



def replay_batches(path: str | os.PathLike, limit: int) -> Iterator[list[WalRecord]]:
    """The log's records in order (as ``replay``), grouped so that they can be applied in bulk:
    each group is a run of up to ``limit`` adds of distinct ids, or one remove. Applying the
    groups in order has the effect of applying the records one by one."""
    batch: dict[str, WalRecord] = {}
    for rec in replay(path):
        if rec.op == OP_ADD and rec.id not in batch and len(batch) < limit:
            batch[rec.id] = rec
            continue
        if batch:
            yield list(batch.values())
        batch = {}
        if rec.op == OP_ADD:
            batch[rec.id] = rec
        else:
            yield [rec]
    if batch:
        yield list(batch.values())

class WriteAheadLog:
    """An open log for appending; ``append`` returns only after the data is fsynced.

    ``on_fsync(seconds)`` is called after every fsync (for latency metrics).
    """

    def __init__(self, path: str | os.PathLike, on_fsync: Callable[[float], None] | None = None,
                 fsync: bool = True) -> None:
        self.path = Path(path)
        self.on_fsync = on_fsync
        self._fsync = fsync
        created = not self.path.exists()
        if created:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.count = 0
        else:
            self.count = sum(1 for _ in replay(self.path))  # also cuts a torn tail
        self._f = open(self.path, "ab")
        if self._f.tell() < len(MAGIC):
            self._f.truncate(0)
            self._f.write(MAGIC)
            self._sync()
        if created:
            fsync_dir(self.path.parent)
        self.fsyncs = 0
        self.fsync_total_s = 0.0
        self.fsync_max_s = 0.0
        self.last_fsync_s = 0.0

    def _sync(self) -> float:
        self._f.flush()
        if not self._fsync:
            return 0.0
        t0 = time.perf_counter()
        os.fsync(self._f.fileno())
        return time.perf_counter() - t0

    def append(self, records: list[WalRecord]) -> float:
        """Write records in one write + one fsync; returns the fsync seconds."""
        if not records:
            return 0.0
        if self._f.closed:
            raise ValueError(f"WAL {self.path} is closed")
        self._f.write(b"".join(r.encode() for r in records))
        seconds = self._sync()
        self.count += len(records)
        self.fsyncs += 1
        self.fsync_total_s += seconds
        self.fsync_max_s = max(self.fsync_max_s, seconds)
        self.last_fsync_s = seconds
        if self.on_fsync is not None:
            self.on_fsync(seconds)
        return seconds

    def reset(self) -> None:
        """Drop every record (after a snapshot made them redundant)."""
        self._f.truncate(len(MAGIC))
        self._f.seek(len(MAGIC))
        self._sync()
        self.count = 0

    def size_bytes(self) -> int:
        return self._f.tell() if not self._f.closed else self.path.stat().st_size

    def close(self) -> None:
        if not self._f.closed:
            self._f.close()

    def __enter__(self) -> "WriteAheadLog":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
