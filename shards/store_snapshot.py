"""An ``IdStore`` snapshot on disk and its read-only, memory-mapped view: the store's *base*.

A snapshot directory holds the same rows (hash, id, code, meta), sorted by hash, three ways:

- ``store.arrow``: an Arrow IPC file, memory-mapped zero-copy, so a large base costs page
  cache rather than a Python object per item;
- ``store.hashes.npy``: the hash column again, memory-mapped, for binary search
  (``np.searchsorted``);
- ``store.parquet``: the portable copy, from which the other two are rebuilt when missing.

``write_merged`` merges a base with the store's overlay (items written since) into a new
snapshot block by block, so that writing one does not need the whole store in memory.
"""
from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

PARQUET_FILE = "store.parquet"
ARROW_FILE = "store.arrow"
HASHES_FILE = "store.hashes.npy"
BLOCK = 1 << 20  # rows per merge block / record batch


@dataclass(frozen=True)
class StoredItem:
    """One stored entry: its external id, its code bytes and its metadata."""

    id: str
    code: bytes
    meta: str  # compact JSON text

    def meta_dict(self) -> dict:
        return json.loads(self.meta) if self.meta else {}


def schema(code_bytes: int) -> pa.Schema:
    """The columns of a store snapshot whose codes are ``code_bytes`` wide."""
    return pa.schema([("hash", pa.int64()), ("id", pa.string()),
                      ("code", pa.binary(code_bytes)), ("meta", pa.string())])


class MappedBase:
    """A read-only snapshot: mapped Arrow table + mapped sorted hash array + dead rows (rows
    deleted, or shadowed by the overlay, since the snapshot was taken)."""

    def __init__(self, table: pa.Table | None, hashes: np.ndarray, mapped_bytes: int = 0) -> None:
        self.table = table
        self.hashes = hashes
        self.mapped_bytes = mapped_bytes
        self.dead: set[int] = set()

    def __len__(self) -> int:
        return len(self.hashes)

    def rows_of(self, hashes: np.ndarray) -> np.ndarray:
        """Row of each hash in the base, or -1 when absent or dead."""
        if not len(self.hashes) or not len(hashes):
            return np.full(len(hashes), -1, dtype=np.int64)
        pos = np.searchsorted(self.hashes, hashes)
        clipped = np.minimum(pos, len(self.hashes) - 1)
        found = self.hashes[clipped] == hashes
        rows = np.where(found, clipped, -1).astype(np.int64)
        if self.dead:
            rows[[r in self.dead for r in rows.tolist()]] = -1
        return rows

    def live(self, rows: np.ndarray) -> np.ndarray:
        """``rows`` without the dead ones."""
        if self.dead:
            rows = rows[[r not in self.dead for r in rows.tolist()]]
        return rows

    def items(self, rows: np.ndarray) -> list[StoredItem]:
        t = self.table.take(pa.array(rows, type=pa.int64()))
        return [StoredItem(i, c, m) for i, c, m in zip(t.column("id").to_pylist(),
                                                       t.column("code").to_pylist(),
                                                       t.column("meta").to_pylist())]

    def ids(self, rows: np.ndarray) -> list[str]:
        return self.table.column("id").take(pa.array(rows, type=pa.int64())).to_pylist()

    def codes(self, rows: np.ndarray, code_bytes: int) -> np.ndarray:
        """The codes of ``rows`` as a (n, code_bytes) uint8 copy, straight from the Arrow buffers."""
        col = self.table.column("code").take(pa.array(rows, type=pa.int64()))
        chunks = [np.frombuffer(c.buffers()[1], dtype=np.uint8)[
            c.offset * code_bytes:(c.offset + len(c)) * code_bytes] for c in col.chunks]
        flat = np.concatenate(chunks) if chunks else np.zeros(0, dtype=np.uint8)
        return flat.reshape(-1, code_bytes).copy()


def empty_base() -> MappedBase:
    """The base of a store that has no snapshot yet."""
    return MappedBase(None, np.zeros(0, dtype=np.int64))


def open_base(snap_dir: str | os.PathLike, code_bytes: int) -> MappedBase:
    """Memory-map a snapshot's Arrow file and hashes (rebuilt from Parquet if missing)."""
    src = Path(snap_dir)
    if not (src / PARQUET_FILE).exists() and not (src / ARROW_FILE).exists():
        raise FileNotFoundError(f"no store snapshot in {src}")
    if not ((src / ARROW_FILE).exists() and (src / HASHES_FILE).exists()):
        _arrow_from_parquet(src)
    mm = pa.memory_map(str(src / ARROW_FILE), "r")
    table = pa.ipc.open_file(mm).read_all()
    hashes = np.load(src / HASHES_FILE, mmap_mode="r", allow_pickle=False)
    if len(table) != len(hashes) or table.schema.field("code").type != pa.binary(code_bytes):
        raise ValueError(f"corrupt store snapshot in {src}: {len(table)} rows, "
                         f"{len(hashes)} hashes, code type {table.schema.field('code').type}")
    mapped = (src / ARROW_FILE).stat().st_size + (src / HASHES_FILE).stat().st_size
    return MappedBase(table, hashes, mapped)


def write_merged(out: Path, base: MappedBase, overlay: dict[int, StoredItem], code_bytes: int) -> int:
    """Write ``base`` (less its dead rows) and ``overlay`` merged and sorted by hash into
    ``out``; returns the row count. The caller keeps writers out meanwhile."""
    out.mkdir(parents=True, exist_ok=True)
    sch = schema(code_bytes)
    o_hashes = np.array(sorted(overlay), dtype=np.int64)
    o_items = [overlay[h] for h in o_hashes.tolist()]
    o_table = pa.table({"hash": o_hashes, "id": [i.id for i in o_items],
                        "code": pa.array([i.code for i in o_items], type=pa.binary(code_bytes)),
                        "meta": [i.meta for i in o_items]}, schema=sch)
    insert_at = np.searchsorted(base.hashes, o_hashes)  # overlay rows go before these base rows
    dead = np.array(sorted(base.dead), dtype=np.int64)
    total = len(base) - len(dead) + len(o_hashes)
    with pq.ParquetWriter(out / PARQUET_FILE, sch, compression="zstd") as pw, \
            _MappedWriter(out, sch, total) as mw:
        blocks = [(lo, min(lo + BLOCK, len(base))) for lo in range(0, len(base), BLOCK)]
        blocks = blocks or [(0, 0)]
        for j, (lo, hi) in enumerate(blocks):
            last = j == len(blocks) - 1
            parts = []
            if hi > lo:
                keep = np.ones(hi - lo, dtype=bool)
                d = dead[(dead >= lo) & (dead < hi)]
                keep[d - lo] = False
                parts.append(base.table.slice(lo, hi - lo).filter(pa.array(keep)))
            o_lo = np.searchsorted(insert_at, lo, side="left") if lo else 0
            o_hi = len(o_hashes) if last else np.searchsorted(insert_at, hi, side="left")
            if o_hi > o_lo:
                parts.append(o_table.slice(int(o_lo), int(o_hi - o_lo)))
            if not parts:
                continue
            block = pa.concat_tables(parts).sort_by("hash").combine_chunks()
            if not len(block):
                continue
            pw.write_table(block, row_group_size=1 << 17)
            mw.write(block.to_batches(max_chunksize=BLOCK))
    if mw.written != total:
        raise RuntimeError(f"store snapshot wrote {mw.written} rows, expected {total}")
    return total


class _MappedWriter:
    """Writes the two files a snapshot is memory-mapped from: the Arrow IPC file and the
    sorted int64 hash array (``.npy``), batch by batch, under an optional name suffix."""

    def __init__(self, out: Path, schema: pa.Schema, total: int, suffix: str = "") -> None:
        self.out, self.schema, self.total, self.suffix = out, schema, total, suffix
        self.written = 0

    def __enter__(self) -> "_MappedWriter":
        self._hashes = np.lib.format.open_memmap(self.out / (HASHES_FILE + self.suffix), mode="w+",
                                                 dtype=np.int64, shape=(self.total,))
        self._sink = pa.OSFile(str(self.out / (ARROW_FILE + self.suffix)), "wb")
        self._ipc = pa.ipc.new_file(self._sink, self.schema)
        return self

    def write(self, batches: Iterable[pa.RecordBatch]) -> None:
        for batch in batches:
            self._ipc.write_batch(batch)
            self._hashes[self.written:self.written + len(batch)] = batch.column("hash").to_numpy()
            self.written += len(batch)

    def __exit__(self, *exc: object) -> None:
        self._ipc.close()
        self._sink.close()
        self._hashes.flush()
        del self._hashes


def _arrow_from_parquet(src: Path) -> None:
    """Rebuild the memory-mappable Arrow file and hash array from the Parquet copy."""
    pf = pq.ParquetFile(src / PARQUET_FILE)
    with _MappedWriter(src, pf.schema_arrow, pf.metadata.num_rows, ".tmp") as mw:
        mw.write(pf.iter_batches(batch_size=BLOCK))
    if mw.written and (np.diff(np.load(src / (HASHES_FILE + ".tmp"), mmap_mode="r")) < 0).any():
        raise ValueError(f"corrupt store snapshot in {src}: Parquet rows are not sorted by hash")
    os.replace(src / (HASHES_FILE + ".tmp"), src / HASHES_FILE)
    os.replace(src / (ARROW_FILE + ".tmp"), src / ARROW_FILE)
    print(f"neardup: rebuilt {ARROW_FILE} from {PARQUET_FILE} in {src}", file=sys.stderr)
