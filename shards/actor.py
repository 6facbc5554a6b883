"""ShardActor: one shard = binary index + id store + write-ahead log + snapshots.

A plain class (tests use it in-process); ``rayapp.cluster`` wraps it with ``ray.remote`` as a
named, detached, restartable actor. Its state lives in ``data_dir`` (``shards.shard_dir``: the
files, and how a snapshot replaces the WALs it covers without losing an acknowledged write);
on start it loads the last snapshot and replays every WAL written since. Writes
(add/remove/snapshot/compact) are serialised by one lock; searches, gets and stats run
concurrently with them.
"""
from __future__ import annotations

import os
import pickle
import sys
import threading
import time
from pathlib import Path
from typing import Callable

import numpy as np

from shards import match_kernel, shard_dir
from shards.blobs import BlobLog
from shards.candidates import Candidates, hits as candidate_hits, merge_views, rank_keys, score_rows, verify_top
from shards.checks import (check_ids, check_k, check_keypoint_blocks, check_limit, check_metas,
                           check_radius, check_vectors, check_verify, check_views, check_weights)
from shards.index import DEFAULT_KIND, load_index, make_index
from shards.records import RecordLayout
from shards.store import IdStore, hash_ids
from shards.verify import KEYPOINT_BYTES, verify_blocks
from shards.views import is_view, split_id
from shards.wal import OP_ADD, OP_REMOVE, WalRecord, WriteAheadLog, replay_batches

_REPLAY_BATCH = 10_000
_NO_KEYPOINTS = np.zeros(KEYPOINT_BYTES, np.uint8)


class ShardActor:
    """One shard of the near-duplicate index (durability: ``shards.shard_dir``)."""

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
        # records (what writers send and the WAL holds) vs store rows: shards.records
        self._layout = layout = RecordLayout(bits, int(vector_bytes), int(keypoint_bytes))
        self.code_bytes, self.vector_bytes, self.keypoint_bytes = (
            layout.code_bytes, layout.vector_bytes, layout.keypoint_bytes)
        self.record_bytes, self.store_bytes = layout.record_bytes, layout.store_bytes
        self._blobs: BlobLog | None = None
        self.data_dir = Path(data_dir)
        self.snapshot_every = int(snapshot_every)
        self._kind = kind or DEFAULT_KIND
        self._index_params = index_params
        self._write_lock = threading.RLock()
        self._started = time.time()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        shard_dir.check_shard_file(self.data_dir, {
            "shard_id": self.shard_id, "bits": self.bits, "vector_bytes": self.vector_bytes,
            "keypoint_bytes": self.keypoint_bytes})
        self._recover()

    # -- start-up ---------------------------------------------------------------------------------
    def _recover(self) -> None:
        """Load the last snapshot, then replay every WAL written since, in order."""
        t0 = time.perf_counter()
        self._generation = shard_dir.read_current(self.data_dir)
        self._views = 0  # stored reference views (shards.views), counted apart from images
        blob_slots = 0
        if self._generation:
            snap = self.data_dir / shard_dir.snap_name(self._generation)
            self._store = IdStore.open(snap, self.store_bytes)
            self._index = load_index(snap / "index")
            manifest = shard_dir.read_manifest(self.data_dir, self._generation)
            self._views, blob_slots = int(manifest.get("views", 0)), int(manifest.get("blob_slots", 0))
        else:
            self._store = IdStore(self.store_bytes)
            self._index = make_index(self._kind, self.bits, **(self._index_params or {}))
        if self.keypoint_bytes:  # cut back to what the snapshot covers; replay appends the rest
            self._blobs = BlobLog(self.data_dir / shard_dir.BLOB_FILE, self.keypoint_bytes, blob_slots)
        self._ensure_index_config()
        replayed = 0
        self._wal_gen = self._generation
        for gen in shard_dir.wal_generations(self.data_dir):
            if gen >= self._generation:
                replayed += self._replay(self.data_dir / shard_dir.wal_name(gen))
                self._wal_gen = gen  # keep appending to the newest log, after what it holds
        self._wal = WriteAheadLog(self.data_dir / shard_dir.wal_name(self._wal_gen),
                                  on_fsync=self._observe_fsync)
        self._wal.count = replayed
        shard_dir.remove_stale(self.data_dir, keep=self._generation)
        self._index.warm_up()
        match_kernel.warm_up()  # the verification kernel, before the first query that verifies
        self.recovery_s = time.perf_counter() - t0
        self.replayed = replayed

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
        for recs in replay_batches(path, _REPLAY_BATCH):
            n += len(recs)
            if recs[0].op == OP_ADD:
                self._apply_records(recs)
            else:
                self._apply_removes([r.id for r in recs])
        return n

    def _apply_records(self, recs: list[WalRecord]) -> None:
        ids = [r.id for r in recs]
        codes = np.frombuffer(b"".join(r.code for r in recs), dtype=np.uint8)
        self._apply_adds(ids, hash_ids(ids), codes.reshape(len(recs), self.record_bytes),
                         [r.meta for r in recs])

    def _observe_fsync(self, seconds: float) -> None:
        if self.fsync_observer is not None:
            self.fsync_observer(seconds)

    # -- writes -----------------------------------------------------------------------------------
    def add(self, ids: list[str], codes: np.ndarray, metas: list[dict] | None = None,
            drop: list[str] | None = None) -> dict:
        """Add or replace items, and remove the ids in ``drop`` (stale reference views) in the
        same step; returns after the WAL is fsynced. Idempotent by id. The counts are of images
        (``shards.views``: a stored view is not counted)."""
        ids = check_ids(ids)
        codes = self._layout.fit(codes, len(ids))
        meta_texts = check_metas(metas, len(ids))
        adding = set(ids)
        drop = [i for i in dict.fromkeys(check_ids(drop or [])) if i not in adding]
        if len(adding) != len(ids):
            raise ValueError("duplicate ids in one add call; send each id once")
        hashes = hash_ids(ids)
        with self._write_lock:
            self._store.check_collisions(ids, hashes)
            old = self._store.get_many(hashes)
            metas_now = [m if m is not None else (o.meta if o is not None else "")
                         for m, o in zip(meta_texts, old)]
            status = self._layout.classify(old, codes, metas_now, self._blobs)
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

    def _apply_adds(self, ids: list[str], hashes: np.ndarray, codes: np.ndarray, metas: list[str],
                    status: np.ndarray | None = None, olds: list | None = None) -> None:
        """Update index then store (no WAL): shared by add() and WAL replay."""
        if status is None or olds is None:  # replay: add() checked these before logging them
            self._store.check_collisions(ids, hashes)
            olds = self._store.get_many(hashes)
            status = self._layout.classify(olds, codes, metas, self._blobs)
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
            rows = self._layout.to_rows(codes[changed], self._blobs)
            self._store.put_many([ids[i] for i in changed], hashes[changed], rows,
                                 [metas[i] for i in changed])

    def remove(self, ids: list[str]) -> int:
        """Remove items (unknown ids ignored); durable before it returns the number of images
        removed (a stored reference view is not counted)."""
        ids = check_ids(ids)
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
               with_meta: bool = False, vectors: np.ndarray | None = None,
               weights: np.ndarray | None = None, fold: float | None = None,
               keep: int | None = None, views: list | None = None, verify: tuple | None = None,
               skip_views: tuple = ()) -> list[list[dict]]:
        """Per query, its k Hamming-nearest entries, optionally within radius, as hit dicts
        (``shards.candidates``), ordered by distance or, when the queries carry them, by
        ``score`` (side ``vectors``, on a shard that stores its own) or else by ``weighted``
        Hamming distance (bit confidences ``weights``). With ``fold`` (a stored view's prior
        cost) each image's entries fold into its best and the top ``keep`` images remain, the
        stored views named in ``skip_views`` left out. ``with_meta``: each hit carries its
        stored meta. With ``views`` (each code's query, view name and prior cost: the codes are
        image queries' views) the answer is one list per query, its views merged
        (``merge_views``), and with ``verify`` (``check_verify``) its top hits verified here."""
        codes = self._layout.check(codes)
        k, radius = check_k(k), check_radius(radius)
        views = None if views is None else check_views(views, len(codes))
        verify = check_verify(verify, 0 if views is None else views[-1][0] + 1)
        scored = check_vectors(vectors, len(codes), self.vector_bytes, self.bits)
        vectors = vectors if scored else None
        weights = None if scored or weights is None else check_weights(weights, len(codes), self.bits)
        fold = None if fold is None else float(fold)
        D, I = self._index.search(codes, k)
        ok = I != -1
        if radius is not None:
            ok &= D <= radius
        flat = I[ok]
        ranked = scored or weights is not None
        names, rows = self._store.rows_of(flat) if ranked else (self._store.ids_of(flat), None)
        of_query = np.repeat(np.arange(len(codes)), ok.sum(axis=1))
        all_scores = score_rows(self._layout, rows, of_query, codes, vectors, weights) if ranked else None
        out, start = [], 0
        for q in range(len(codes)):
            stop = start + int(ok[q].sum())
            live = [j for j in range(start, stop) if names[j] is not None  # None: just removed
                    and not (skip_views and split_id(names[j])[1] in skip_views)]
            c = Candidates([names[j] for j in live], D[q][ok[q]][np.array(live, int) - start], flat[live])
            scores = None if all_scores is None else all_scores[live]
            found = candidate_hits(c, rank_keys(c, scores), fold, keep, "score" if scored else "weighted")
            out.append(self._with_meta(c, found) if with_meta else [hit for _, hit in found])
            start = stop
        merged = out if views is None else merge_views(out, views, keep)
        return merged if verify is None else [verify_top(merged[0], *verify, self.verify)]

    def search_pickled(self, payload: bytes) -> list[list[dict]]:
        """:meth:`search` of ``pickle.dumps(args)``: a router fanning a query out to N shards
        pickles it once, where Ray would serialise each of ten arguments for every call."""
        return self.search(*pickle.loads(payload))

    def _with_meta(self, c: Candidates, found: list[tuple[int, dict]]) -> list[dict]:
        """The hits, each with its stored meta."""
        items = self._store.get_many(c.hashes[[i for i, _ in found]])
        for (_, hit), item in zip(found, items):
            hit["meta"] = item.meta_dict() if item is not None else {}
        return [hit for _, hit in found]

    def verify(self, ids: list[str], keypoints: np.ndarray | bytes,
               which: list[int] | None = None) -> list[int | None]:
        """Spatially verify stored images against a query's packed keypoints
        (``shards.verify``; one block, or (m, KEYPOINT_BYTES) blocks with ``which`` naming each
        id's block, or -1 for the best of all) -> each id's inlier count; None for an unknown id
        or one stored without keypoints (or on a shard that keeps none)."""
        blocks, which = check_keypoint_blocks(keypoints, which, len(ids := check_ids(ids)))
        return verify_blocks(blocks, which, self._layout.keypoints_by_id(self._store, ids, self._blobs))

    def keypoints(self, ids: list[str]) -> np.ndarray:
        """The stored ids' packed keypoints (``RecordLayout.keypoints_by_id``), (len(ids),
        KEYPOINT_BYTES) uint8, zeros where there are none: batch jobs verify in their workers."""
        kps = self._layout.keypoints_by_id(self._store, check_ids(ids), self._blobs)
        return np.array([_NO_KEYPOINTS if k is None else k for k in kps], np.uint8).reshape(-1, KEYPOINT_BYTES)

    def records(self, after: int | None = None, limit: int = 256) -> dict:
        """A page of stored images (not their views) in key order, for batch jobs that walk
        the shard: ``{"ids", "records": (n, record_bytes) uint8 (code, side vector, keypoints
        as written), "metas", "after"}``; pass ``after`` back for the next page (None: done)."""
        limit = check_limit(limit)
        keys, items = self._store.page(after, limit)
        items = [it for it in items if not is_view(it.id)]
        recs = self._layout.to_records([it.code for it in items], self._blobs)
        return {"ids": [it.id for it in items], "records": recs,
                "metas": [it.meta_dict() for it in items],
                "after": int(keys[-1]) if len(keys) == limit else None}

    def page_starts(self, limit: int = 256) -> list[int | None]:
        """Where each page of ``records(after, limit)`` starts (``IdStore.page_starts``)."""
        return self._store.page_starts(check_limit(limit))

    def widths(self) -> dict:
        """The record layout: code, side vector and keypoint bytes."""
        return {"code_bytes": self.code_bytes, "vector_bytes": self.vector_bytes, "keypoint_bytes": self.keypoint_bytes}

    def get(self, id: str) -> dict | None:
        """``{"id", "code": hex, "meta": dict}`` or None."""
        if not isinstance(id, str) or not id:
            raise ValueError(f"id must be a non-empty string, got {id!r}")
        item = self._store.get(id)
        return None if item is None else {"id": item.id, "code": item.code[:self.code_bytes].hex(),
                                          "meta": item.meta_dict()}

    def contains(self, ids: list[str]) -> list[bool]:
        return [self._store.get(i) is not None for i in check_ids(ids)]

    def stats(self) -> dict:
        index, store, wal = self._index, self._store, self._wal
        return {
            "shard_id": self.shard_id, "node_id": _node_id(), "pid": os.getpid(),
            "count": len(store) - self._views, "codes": len(store), "views": self._views,
            "memory_bytes": index.memory_bytes() + store.memory_bytes(),
            "index_kind": index.kind, "bits": self.bits, "vector_bytes": self.vector_bytes,
            "keypoint_bytes": self.keypoint_bytes, "state": "ready",
            "keypoint_file_bytes": self._blobs.bytes() if self._blobs is not None else 0,
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
        self._wal = WriteAheadLog(self.data_dir / shard_dir.wal_name(gen), on_fsync=self._observe_fsync)
        self._wal_gen = gen
        old_wal.close()
        tmp = shard_dir.new_snapshot_dir(self.data_dir, gen)
        self._index.save(tmp / "index")
        rows = self._store.write_snapshot(tmp)
        if self._blobs is not None:
            self._blobs.sync()  # the slots this snapshot's rows point at are on disk
        final = shard_dir.publish(self.data_dir, tmp, gen, {
            "shard_id": self.shard_id, "bits": self.bits, "count": rows,
            "views": self._views, "index_kind": self._index.kind, "created": time.time(),
            "blob_slots": self._blobs.count if self._blobs is not None else 0})
        self._store = IdStore.open(final, self.store_bytes)
        self._generation = gen
        shard_dir.remove_stale(self.data_dir, keep=gen)
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
        return ray.get_runtime_context().get_node_id() if ray is not None and ray.is_initialized() else None
    except Exception:  # noqa: BLE001 - stats must never fail because of Ray
        return None

