"""ShardActor: one shard = binary index + id store + write-ahead log + snapshots.

A plain class (tests use it in-process); ``rayapp.cluster`` wraps it with ``ray.remote`` as a
named, detached, restartable actor. On disk (``data_dir``):

- ``shard.json``: shard id and code width, checked on every start;
- ``CURRENT``: the generation g of the last complete snapshot (absent: none yet);
- ``snapshot-<g>/``: ``index/`` (FAISS format or npy + index.json) and ``store.*`` (Parquet +
  memory-mapped Arrow, sorted by id hash);
- ``wal-<g>.log``: every add/remove acknowledged after snapshot g;
- ``keypoints.blobs``: each image's keypoints for spatial verification (``shards.blobs``), when
  the shard keeps them; a snapshot's manifest says how many of its slots it covers.

A snapshot first switches writes to ``wal-<g+1>.log``, writes ``snapshot-<g+1>.tmp``, fsyncs
it, renames it, then points ``CURRENT`` at it (atomic rename) and only then deletes the older
files. A crash at any step leaves a snapshot plus every WAL needed to replay past it, so an
acknowledged write is never lost. Writes (add/remove/snapshot/compact) are serialised by one
lock; searches, gets and stats run concurrently with them.
"""
from __future__ import annotations

import json
import os
import shutil
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from shards.blobs import NO_SLOT, BlobLog
from shards.index import DEFAULT_KIND, load_index, make_index
from shards.store import IdStore, hash_ids
from shards.vectors import vector_distance
from shards.verify import KEYPOINT_BYTES, inliers
from shards.views import is_view
from shards.wal import OP_ADD, OP_REMOVE, WalRecord, WriteAheadLog, fsync_dir, fsync_tree, replay

SHARD_FILE = "shard.json"
CURRENT_FILE = "CURRENT"
MAX_ID_BYTES = 1024
MAX_META_BYTES = 64 * 1024
MAX_K = 10_000
_REPLAY_BATCH = 10_000
BLOB_FILE = "keypoints.blobs"  # shards.blobs: each image's keypoints, by slot
_SLOT_BYTES = 8


def _snap_name(gen: int) -> str:
    return f"snapshot-{gen:08d}"


def _wal_name(gen: int) -> str:
    return f"wal-{gen:08d}.log"


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)


class ShardActor:
    """One shard of the near-duplicate index (see the module docstring for durability)."""

    #: Snapshot when the WAL holds ``max(snapshot_every, snapshot_growth * count)`` records, so
    #: that at hundreds of millions of codes a full snapshot is not rewritten every 100k adds.
    snapshot_growth: float = 0.1
    #: Optional observer of every WAL fsync duration in seconds (metrics).
    fsync_observer: Callable[[float], None] | None = None

    def __init__(self, shard_id: int, data_dir: str, bits: int, kind: str | None = None,
                 index_params: dict | None = None, snapshot_every: int = 100_000,
                 vector_bytes: int = 0, keypoint_bytes: int = 0) -> None:
        if not isinstance(bits, int) or bits <= 0 or bits % 8:
            raise ValueError(f"bits must be a positive multiple of 8, got {bits!r}")
        if snapshot_every < 1:
            raise ValueError(f"snapshot_every must be >= 1, got {snapshot_every}")
        self.shard_id = int(shard_id)
        self.bits = bits
        self.code_bytes = bits // 8
        # A record (what writers send and the WAL holds) is the code, then an int8 side vector
        # when vector_bytes > 0, then the image's packed keypoints (shards.verify) when
        # keypoint_bytes > 0. The store keeps the keypoints' slot in the blob log instead.
        self.vector_bytes = int(vector_bytes)
        self.keypoint_bytes = int(keypoint_bytes)
        if self.keypoint_bytes not in (0, KEYPOINT_BYTES):
            raise ValueError(f"keypoint_bytes must be 0 or {KEYPOINT_BYTES}, got {keypoint_bytes}")
        self.record_bytes = self.code_bytes + self.vector_bytes + self.keypoint_bytes
        self.store_bytes = self.code_bytes + self.vector_bytes + (_SLOT_BYTES if keypoint_bytes else 0)
        self._blobs: BlobLog | None = None
        self.data_dir = Path(data_dir)
        self.snapshot_every = int(snapshot_every)
        self._kind = kind or DEFAULT_KIND
        self._index_params = index_params
        self._write_lock = threading.RLock()
        self._started = time.time()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._check_shard_file()
        self._recover()

    # -- start-up ---------------------------------------------------------------------------------
    def _check_shard_file(self) -> None:
        path = self.data_dir / SHARD_FILE
        if path.exists():
            info = json.loads(path.read_text())
            if info.get("bits") != self.bits:
                raise ValueError(f"{self.data_dir} holds {info.get('bits')}-bit codes, not "
                                 f"{self.bits}-bit: use another index dir or the same encoder")
            if int(info.get("vector_bytes", 0)) != self.vector_bytes:
                raise ValueError(f"{self.data_dir} holds {info.get('vector_bytes', 0)}-byte side "
                                 f"vectors, not {self.vector_bytes}: use another index dir")
            if int(info.get("keypoint_bytes", 0)) != self.keypoint_bytes:
                raise ValueError(f"{self.data_dir} holds {info.get('keypoint_bytes', 0)}-byte "
                                 f"keypoints, not {self.keypoint_bytes}: use another index dir")
            if info.get("shard_id") != self.shard_id:
                print(f"neardup: {self.data_dir} was shard {info.get('shard_id')}, now shard "
                      f"{self.shard_id}", file=sys.stderr)
        _write_atomic(path, json.dumps({"shard_id": self.shard_id, "bits": self.bits,
                                        "vector_bytes": self.vector_bytes,
                                        "keypoint_bytes": self.keypoint_bytes}))

    def _recover(self) -> None:
        """Load the last snapshot, then replay every WAL written since, in order."""
        t0 = time.perf_counter()
        self._generation = self._read_current()
        snap = self.data_dir / _snap_name(self._generation)
        self._views = 0  # stored reference views (shards.views), counted apart from images
        blob_slots = 0
        if self._generation:
            self._store = IdStore.open(snap, self.store_bytes)
            self._index = load_index(snap / "index")
            manifest = json.loads((snap / "manifest.json").read_text())
            self._views, blob_slots = int(manifest.get("views", 0)), int(manifest.get("blob_slots", 0))
        else:
            self._store = IdStore(self.store_bytes)
            self._index = make_index(self._kind, self.bits, **(self._index_params or {}))
        if self.keypoint_bytes:  # cut back to what the snapshot covers; replay appends the rest
            self._blobs = BlobLog(self.data_dir / BLOB_FILE, self.keypoint_bytes, blob_slots)
        self._ensure_index_config()
        replayed = 0
        self._wal_gen = self._generation
        for gen in self._wal_generations():
            if gen >= self._generation:
                replayed += self._replay(self.data_dir / _wal_name(gen))
                self._wal_gen = gen  # keep appending to the newest log, after what it holds
        self._wal = WriteAheadLog(self.data_dir / _wal_name(self._wal_gen),
                                  on_fsync=self._observe_fsync)
        self._wal.count = replayed
        self._remove_stale(keep=self._generation)
        self._index.warm_up()
        self.recovery_s = time.perf_counter() - t0
        self.replayed = replayed

    def _read_current(self) -> int:
        path = self.data_dir / CURRENT_FILE
        if not path.exists():
            return 0
        gen = int(json.loads(path.read_text())["generation"])
        if not (self.data_dir / _snap_name(gen)).is_dir():
            raise RuntimeError(f"{path} points at missing snapshot {_snap_name(gen)}")
        return gen

    def _wal_generations(self) -> list[int]:
        gens = []
        for p in self.data_dir.glob("wal-*.log"):
            try:
                gens.append(int(p.stem.split("-", 1)[1]))
            except ValueError:
                continue
        return sorted(gens)

    def _ensure_index_config(self) -> None:
        """Rebuild the index from the store when the requested kind/params differ from disk."""
        want = make_index(self._kind, self.bits, **(self._index_params or {}))
        have = self._index
        same_params = self._index_params is None or want.params == have.params
        if want.kind == have.kind and same_params and want.bits == have.bits:
            return
        print(f"neardup: shard {self.shard_id}: rebuilding {have.kind} index as {want.kind} "
              f"{want.params}", file=sys.stderr)
        for hashes, records in self._store.iter_codes():
            want.add(hashes, np.ascontiguousarray(records[:, :self.code_bytes]))
        self._index = want

    def _replay(self, path: Path) -> int:
        """Apply a WAL's records in order, batching consecutive adds of distinct ids."""
        n = 0
        batch: dict[str, WalRecord] = {}
        for rec in replay(path):
            n += 1
            if rec.op == OP_ADD and rec.id not in batch and len(batch) < _REPLAY_BATCH:
                batch[rec.id] = rec
                continue
            self._apply_records(list(batch.values()))
            batch = {}
            if rec.op == OP_ADD:
                batch[rec.id] = rec
            else:
                self._apply_removes([rec.id])
        self._apply_records(list(batch.values()))
        return n

    def _apply_records(self, recs: list[WalRecord]) -> None:
        if not recs:
            return
        ids = [r.id for r in recs]
        codes = np.frombuffer(b"".join(r.code for r in recs), dtype=np.uint8)
        self._apply_adds(ids, hash_ids(ids), codes.reshape(len(recs), self.record_bytes),
                         [r.meta for r in recs])

    def _remove_stale(self, keep: int) -> None:
        """Delete snapshots and WALs older than generation ``keep`` and unfinished temp dirs."""
        for p in self.data_dir.iterdir():
            name = p.name
            if name.endswith(".tmp"):
                shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
            elif name.startswith("snapshot-") and p.is_dir() and name != _snap_name(keep):
                shutil.rmtree(p, ignore_errors=True)
            elif name.startswith("wal-") and name.endswith(".log"):
                try:
                    if int(p.stem.split("-", 1)[1]) < keep:
                        p.unlink()
                except ValueError:
                    pass

    def _observe_fsync(self, seconds: float) -> None:
        if self.fsync_observer is not None:
            self.fsync_observer(seconds)

    # -- validation -------------------------------------------------------------------------------
    def _check_ids(self, ids: Any) -> list[str]:
        if isinstance(ids, str) or not isinstance(ids, (list, tuple)):
            raise ValueError(f"ids must be a list of strings, got {type(ids).__name__}")
        for i in ids:
            if not isinstance(i, str) or not i:
                raise ValueError(f"every id must be a non-empty string, got {i!r}")
            if len(i.encode("utf-8")) > MAX_ID_BYTES:
                raise ValueError(f"id too long ({len(i.encode('utf-8'))} bytes > {MAX_ID_BYTES}): "
                                 f"{i[:40]!r}...")
        return list(ids)

    def _check_codes(self, codes: Any, n: int | None = None, width: int | None = None) -> np.ndarray:
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

    def _fit_records(self, codes: Any, n: int) -> np.ndarray:
        """What an add sends -> (n, record_bytes) records. A writer sends ``code [|| vector]
        [|| keypoints]`` (``shards.vectors.records``); a part the shard keeps but the writer lacks
        is zero-filled (no vector: ranked by Hamming; no keypoints: never verified), and a part
        the shard does not keep is dropped. So writers need not know the index."""
        if not (isinstance(codes, np.ndarray) and codes.dtype == np.uint8 and codes.ndim == 2):
            return self._check_codes(codes, n, self.record_bytes)
        cb, width = self.code_bytes, codes.shape[1]
        vec_width = self.vector_bytes or self.bits  # a writer's vector: one int8 per bit
        kp = KEYPOINT_BYTES if width in (cb + KEYPOINT_BYTES, cb + vec_width + KEYPOINT_BYTES) else 0
        vw = width - cb - kp
        if width == self.record_bytes or vw not in (0, vec_width):
            return self._check_codes(codes, n, self.record_bytes)
        parts = [codes[:, :cb]]
        for have, want, start in ((vw, self.vector_bytes, cb), (kp, self.keypoint_bytes, cb + vw)):
            if want:
                parts.append(codes[:, start:start + want] if have == want
                             else np.zeros((len(codes), want), np.uint8))
        return self._check_codes(np.concatenate(parts, 1), n, self.record_bytes)

    @staticmethod
    def _check_metas(metas: Any, n: int) -> list[str | None]:
        """JSON text per item; None = not given (a new item gets {}, an existing one keeps its)."""
        if metas is None:
            return [None] * n
        if not isinstance(metas, (list, tuple)) or len(metas) != n:
            raise ValueError(f"metas must be a list of {n} dicts (or None)")
        out: list[str | None] = []
        for m in metas:
            if m is None:
                out.append(None)
                continue
            if not isinstance(m, dict):
                raise ValueError(f"each meta must be a dict, got {type(m).__name__}")
            try:
                text = json.dumps(m, separators=(",", ":"), sort_keys=True, ensure_ascii=False)
            except (TypeError, ValueError) as exc:
                raise ValueError(f"meta is not JSON-serialisable: {exc}") from None
            if len(text.encode("utf-8")) > MAX_META_BYTES:
                raise ValueError(f"meta too large ({len(text)} chars > {MAX_META_BYTES} bytes)")
            out.append(text)
        return out

    # -- writes -----------------------------------------------------------------------------------
    def add(self, ids: list[str], codes: np.ndarray, metas: list[dict] | None = None,
            drop: list[str] | None = None) -> dict:
        """Add or replace items, and remove the ids in ``drop`` (stale reference views) in the
        same step; returns after the WAL is fsynced. Idempotent by id. The counts are of images
        (``shards.views``: a stored view is not counted)."""
        ids = self._check_ids(ids)
        codes = self._fit_records(codes, len(ids))
        meta_texts = self._check_metas(metas, len(ids))
        adding = set(ids)
        drop = [i for i in dict.fromkeys(self._check_ids(drop or [])) if i not in adding]
        if len(adding) != len(ids):
            raise ValueError("duplicate ids in one add call; send each id once")
        hashes = hash_ids(ids)
        with self._write_lock:
            self._store.check_collisions(ids, hashes)
            old = self._store.get_many(hashes)
            metas_now = [m if m is not None else (o.meta if o is not None else "")
                         for m, o in zip(meta_texts, old)]
            status = self._classify(old, codes, metas_now)
            changed = np.flatnonzero(status != "unchanged")
            drop = [i for i in drop if self._store.get(i) is not None]
            self._wal.append([WalRecord(OP_REMOVE, i) for i in drop]
                             + [WalRecord(OP_ADD, ids[i], codes[i].tobytes(), metas_now[i])
                                for i in changed])
            self._apply_removes(drop)
            self._apply_adds(ids, hashes, codes, metas_now, status, old)
            self._maybe_snapshot()
        image = np.array([not is_view(i) for i in ids], dtype=bool)
        return {key: int(((status == key) & image).sum()) for key in ("added", "replaced", "unchanged")}

    def _classify(self, olds: list, codes: np.ndarray, metas: list[str]) -> np.ndarray:
        """Per item: 'added', 'replaced' (new record or meta) or 'unchanged'."""
        status = np.empty(len(olds), dtype=object)
        for i, old in enumerate(olds):
            if old is None:
                status[i] = "added"
            elif old.meta == metas[i] and self._same_record(old.code, codes[i]):
                status[i] = "unchanged"
            else:
                status[i] = "replaced"
        return status

    def _same_record(self, stored: bytes, record: np.ndarray) -> bool:
        """Whether a stored entry (code, vector, keypoint slot) holds this record."""
        n = self.code_bytes + self.vector_bytes
        if stored[:n] != record[:n].tobytes():
            return False
        slot = self._slot(stored)
        if slot is None:
            return not record[n:].any()
        return bool(np.array_equal(self._blobs.read(slot), record[n:]))

    def _slot(self, stored: bytes) -> int | None:
        """The blob-log slot of a stored entry's keypoints; None without keypoints."""
        if not self.keypoint_bytes:
            return None
        n = self.code_bytes + self.vector_bytes
        slot = int.from_bytes(stored[n:n + _SLOT_BYTES], "little", signed=True)
        return None if slot == NO_SLOT else slot

    def _to_store(self, records: np.ndarray) -> np.ndarray:
        """Records -> store rows: keypoints go to the blob log, their slot into the row."""
        if not self.keypoint_bytes:
            return records
        n = self.code_bytes + self.vector_bytes
        kps = records[:, n:]
        slots = np.full(len(records), NO_SLOT, dtype="<i8")
        has = kps[:, :2].any(axis=1)  # a zero count: no keypoints (a view, an add by code)
        slots[has] = self._blobs.append(kps[has])
        return np.concatenate([records[:, :n], slots[:, None].view(np.uint8)], axis=1)

    def _apply_adds(self, ids: list[str], hashes: np.ndarray, codes: np.ndarray, metas: list[str],
                    status: np.ndarray | None = None, olds: list | None = None) -> None:
        """Update index then store (no WAL): shared by add() and WAL replay."""
        if status is None or olds is None:  # replay: add() checked these before logging them
            self._store.check_collisions(ids, hashes)
            olds = self._store.get_many(hashes)
            status = self._classify(olds, codes, metas)
        cb = self.code_bytes
        recode = [i for i in np.flatnonzero(status == "replaced").tolist()
                  if olds[i].code[:cb] != codes[i, :cb].tobytes()]
        if recode:
            self._index.remove(hashes[recode])
        to_index = np.sort(np.concatenate([np.flatnonzero(status == "added"),
                                           np.array(recode, dtype=np.int64)])).astype(np.int64)
        if len(to_index):
            self._index.add(hashes[to_index], np.ascontiguousarray(codes[to_index, :self.code_bytes]))
        self._views += sum(1 for i in np.flatnonzero(status == "added").tolist() if is_view(ids[i]))
        changed = np.flatnonzero(status != "unchanged")
        if len(changed):
            self._store.put_many([ids[i] for i in changed], hashes[changed],
                                 self._to_store(codes[changed]), [metas[i] for i in changed])

    def remove(self, ids: list[str]) -> int:
        """Remove items (unknown ids ignored); durable before it returns the number of images
        removed (a stored reference view is not counted)."""
        ids = self._check_ids(ids)
        with self._write_lock:
            present = [i for i in dict.fromkeys(ids) if self._store.get(i) is not None]
            self._wal.append([WalRecord(OP_REMOVE, i) for i in present])
            self._apply_removes(present)
            self._maybe_snapshot()
        return sum(1 for i in present if not is_view(i))

    def _apply_removes(self, ids: list[str]) -> None:
        present = [i for i in ids if self._store.get(i) is not None]
        if not present:
            return
        self._views -= sum(1 for i in present if is_view(i))
        hashes = hash_ids(present)
        self._index.remove(hashes)
        for h in hashes.tolist():
            self._store.delete(h)

    # -- reads ------------------------------------------------------------------------------------
    def search(self, codes: np.ndarray, k: int = 10, radius: int | None = None,
               with_meta: bool = False, with_codes: bool = False,
               vectors: np.ndarray | None = None) -> list[list[dict]]:
        """Per query, up to k results sorted by (distance, id), optionally within radius; with
        ``with_codes`` each hit also carries its packed code (bytes), for re-ranking. With the
        queries' side ``vectors`` (n, vector_bytes), on a shard that stores them, each hit gains
        ``score`` (``shards.vectors.vector_distance``; its Hamming distance where the entry has
        no vector) and the k hits are ordered by it."""
        codes = self._check_codes(codes)
        if not isinstance(k, (int, np.integer)) or not 0 <= k <= MAX_K:
            raise ValueError(f"k must be an integer in 0..{MAX_K}, got {k!r}")
        if radius is not None and (not isinstance(radius, (int, np.integer)) or radius < 0):
            raise ValueError(f"radius must be a non-negative integer or None, got {radius!r}")
        scored = vectors is not None and self.vector_bytes > 0
        if scored and np.shape(vectors) != (len(codes), self.vector_bytes):
            raise ValueError(f"vectors must have shape ({len(codes)}, {self.vector_bytes}), "
                             f"got {np.shape(vectors)}")
        D, I = self._index.search(codes, int(k))
        keep = I != -1
        if radius is not None:
            keep &= D <= radius
        store = self._store
        flat = I[keep]
        if with_meta or with_codes or scored:
            found = store.get_many(flat)
            names = [None if it is None else it.id for it in found]
        else:
            found, names = None, store.ids_of(flat)
        out: list[list[dict]] = []
        j = 0
        for q in range(len(codes)):
            row, items = [], []
            for d in D[q][keep[q]].tolist():
                name = names[j]
                if name is not None:  # None: removed between the index lookup and now
                    hit = {"id": name, "distance": int(d)}
                    if with_meta:
                        hit["meta"] = found[j].meta_dict()
                    if with_codes:
                        hit["code"] = found[j].code[:self.code_bytes]
                    row.append(hit)
                    items.append(found[j] if scored else None)
                j += 1
            out.append(self._score(row, items, vectors[q]) if scored else row)
        return out

    def _score(self, row: list[dict], items: list, query_vector: np.ndarray) -> list[dict]:
        """Hits with ``score``: the stored vectors' distance to the query's, ordered by it."""
        if not row:
            return row
        cb, vb = self.code_bytes, self.vector_bytes
        stored = np.frombuffer(b"".join(it.code[cb:cb + vb] for it in items), np.int8)
        scores = vector_distance(query_vector, stored.reshape(len(items), self.vector_bytes))
        for hit, sc in zip(row, scores.tolist()):
            hit["score"] = round(float(hit["distance"]) if sc != sc else sc, 3)  # NaN: no vector
        return sorted(row, key=lambda h: (h["score"], h["distance"], h["id"]))

    def verify(self, ids: list[str], keypoints: np.ndarray | bytes,
               which: list[int] | None = None) -> list[int | None]:
        """Spatially verify stored images against a query's packed keypoints
        (``shards.verify``; one block, or (m, KEYPOINT_BYTES) blocks with ``which`` naming each
        id's block, or -1 for the best of all) -> each id's inlier count; None for an unknown id
        or one stored without keypoints (or on a shard that keeps none)."""
        ids = self._check_ids(ids)
        blocks = np.frombuffer(bytes(keypoints), np.uint8)
        if len(blocks) == 0 or len(blocks) % KEYPOINT_BYTES:
            raise ValueError(f"keypoints must be blocks of {KEYPOINT_BYTES} bytes, got {len(blocks)}")
        blocks = blocks.reshape(-1, KEYPOINT_BYTES)
        which = [0] * len(ids) if which is None else [int(w) for w in which]
        if len(which) != len(ids) or any(not -1 <= w < len(blocks) for w in which):
            raise ValueError(f"which must name one of {len(blocks)} keypoint blocks (or -1) per id")
        out: list[int | None] = []
        for item_id, w in zip(ids, which):
            item = self._store.get(item_id) if self.keypoint_bytes else None
            slot = None if item is None else self._slot(item.code)
            if slot is None:
                out.append(None)
                continue
            stored = self._blobs.read(slot)
            out.append(max(inliers(b, stored) for b in (blocks if w < 0 else blocks[w:w + 1])))
        return out

    def records(self, after: int | None = None, limit: int = 256) -> dict:
        """A page of stored images (not their views) in key order, for batch jobs that walk
        the shard: ``{"ids", "records": (n, record_bytes) uint8 (code, side vector, keypoints
        as written), "metas", "after"}``; pass ``after`` back for the next page (None: done)."""
        if not isinstance(limit, (int, np.integer)) or not 1 <= limit <= MAX_K:
            raise ValueError(f"limit must be an integer in 1..{MAX_K}, got {limit!r}")
        keys, items = self._store.page(after, int(limit))
        items = [it for it in items if not is_view(it.id)]
        recs = np.zeros((len(items), self.record_bytes), np.uint8)
        n = self.code_bytes + self.vector_bytes
        for row, it in zip(recs, items):
            row[:n] = np.frombuffer(it.code[:n], np.uint8)
            slot = self._slot(it.code)
            if slot is not None:
                row[n:] = self._blobs.read(slot)
        return {"ids": [it.id for it in items], "records": recs,
                "metas": [it.meta_dict() for it in items],
                "after": int(keys[-1]) if len(keys) == limit else None}

    def page_starts(self, limit: int = 256) -> list[int | None]:
        """Where each page of ``records(after, limit)`` starts (``IdStore.page_starts``)."""
        if not isinstance(limit, (int, np.integer)) or not 1 <= limit <= MAX_K:
            raise ValueError(f"limit must be an integer in 1..{MAX_K}, got {limit!r}")
        return self._store.page_starts(int(limit))

    def widths(self) -> dict:
        """The record layout: code, side vector and keypoint bytes."""
        return {"code_bytes": self.code_bytes, "vector_bytes": self.vector_bytes,
                "keypoint_bytes": self.keypoint_bytes}

    def get(self, id: str) -> dict | None:
        """``{"id", "code": hex, "meta": dict}`` or None."""
        if not isinstance(id, str) or not id:
            raise ValueError(f"id must be a non-empty string, got {id!r}")
        item = self._store.get(id)
        if item is None:
            return None
        return {"id": item.id, "code": item.code[:self.code_bytes].hex(), "meta": item.meta_dict()}

    def contains(self, ids: list[str]) -> list[bool]:
        ids = self._check_ids(ids)
        return [self._store.get(i) is not None for i in ids]

    def stats(self) -> dict:
        index, store, wal = self._index, self._store, self._wal
        return {
            "shard_id": self.shard_id, "node_id": _node_id(), "pid": os.getpid(),
            "count": len(store) - self._views, "codes": len(store), "views": self._views,
            "memory_bytes": index.memory_bytes() + store.memory_bytes(),
            "index_kind": index.kind, "bits": self.bits, "vector_bytes": self.vector_bytes,
            "keypoint_bytes": self.keypoint_bytes,
            "keypoint_file_bytes": self._blobs.bytes() if self._blobs is not None else 0,
            "state": "ready",
            "index_params": index.params, "index_count": index.ntotal,
            "tombstones": index.tombstones, "index_memory_bytes": index.memory_bytes(),
            "store_memory_bytes": store.memory_bytes(), "mapped_bytes": store.mapped_bytes(),
            "generation": self._generation, "wal_records": wal.count,
            "wal_bytes": wal.size_bytes(), "wal_fsyncs": wal.fsyncs,
            "wal_fsync_total_s": wal.fsync_total_s, "wal_fsync_max_s": wal.fsync_max_s,
            "wal_fsync_last_s": wal.last_fsync_s, "recovery_s": self.recovery_s,
            "replayed": self.replayed, "uptime_s": time.time() - self._started,
            "data_dir": str(self.data_dir),
        }

    def ping(self) -> str:
        return "pong"

    # -- snapshots and compaction -----------------------------------------------------------------
    def _maybe_snapshot(self) -> None:
        if self._wal.count >= max(self.snapshot_every, self.snapshot_growth * len(self._store)):
            self._snapshot()

    def snapshot(self) -> dict:
        """Write a snapshot now and drop the WAL it covers."""
        with self._write_lock:
            return self._snapshot()

    def _snapshot(self) -> dict:
        t0 = time.perf_counter()
        gen = self._wal_gen + 1  # covers every record in wal-*.log files older than gen
        old_wal = self._wal
        self._wal = WriteAheadLog(self.data_dir / _wal_name(gen), on_fsync=self._observe_fsync)
        self._wal_gen = gen
        old_wal.close()
        tmp = self.data_dir / (_snap_name(gen) + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        self._index.save(tmp / "index")
        rows = self._store.write_snapshot(tmp)
        if self._blobs is not None:
            self._blobs.sync()  # the slots this snapshot's rows point at are on disk
        (tmp / "manifest.json").write_text(json.dumps({
            "generation": gen, "shard_id": self.shard_id, "bits": self.bits, "count": rows,
            "views": self._views, "index_kind": self._index.kind, "created": time.time(),
            "blob_slots": self._blobs.count if self._blobs is not None else 0}))
        fsync_tree(tmp)
        final = self.data_dir / _snap_name(gen)
        os.replace(tmp, final)
        fsync_dir(self.data_dir)
        _write_atomic(self.data_dir / CURRENT_FILE, json.dumps({"generation": gen}))
        self._store = IdStore.open(final, self.store_bytes)
        self._generation = gen
        self._remove_stale(keep=gen)
        size = sum(p.stat().st_size for p in final.rglob("*") if p.is_file())
        return {"generation": gen, "count": rows, "bytes": size,
                "seconds": time.perf_counter() - t0, "path": str(final)}

    def compact(self) -> dict:
        """Rebuild the index without tombstones, then snapshot."""
        with self._write_lock:
            t0 = time.perf_counter()
            purged = self._index.compact()
            snap = self._snapshot()
        return {"purged": purged, "count": len(self._store), "generation": snap["generation"],
                "seconds": time.perf_counter() - t0}

    def close(self) -> None:
        """Close the WAL and blob files (the object is unusable afterwards)."""
        with self._write_lock:
            self._wal.close()
            if self._blobs is not None:
                self._blobs.close()


def _node_id() -> str | None:
    ray = sys.modules.get("ray")
    try:
        if ray is not None and ray.is_initialized():
            return ray.get_runtime_context().get_node_id()
    except Exception:  # noqa: BLE001 - stats must never fail because of Ray
        return None
    return None

