"""A shard's data directory: which files it holds, and how they change without losing a write.

Files (``ShardActor``'s ``data_dir``):

- ``shard.json``: shard id and record widths, checked on every start;
- ``CURRENT``: the generation g of the last complete snapshot (absent: none yet);
- ``snapshot-<g>/``: ``index/`` (FAISS format or npy + index.json), ``store.*`` (Parquet +
  memory-mapped Arrow, sorted by id hash; ``shards.store_snapshot``) and ``manifest.json``;
- ``wal-<g>.log``: every add/remove acknowledged after snapshot g;
- ``keypoints.blobs``: each image's keypoints for spatial verification (``shards.blobs``), when
  the shard keeps them; a snapshot's manifest says how many of its slots it covers.

A snapshot is written to ``snapshot-<g>.tmp`` (``new_snapshot_dir``), then ``publish`` fsyncs it,
renames it and only then points ``CURRENT`` at it (atomic rename); older files go afterwards
(``remove_stale``). A crash at any step leaves a snapshot plus every WAL needed to replay past
it, so an acknowledged write is never lost.
"""
from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

from shards.wal import fsync_dir, fsync_tree

SHARD_FILE = "shard.json"
CURRENT_FILE = "CURRENT"
BLOB_FILE = "keypoints.blobs"  # shards.blobs: each image's keypoints, by slot
MANIFEST_FILE = "manifest.json"


def snap_name(gen: int) -> str:
    """The directory name of snapshot generation ``gen``."""
    return f"snapshot-{gen:08d}"


def wal_name(gen: int) -> str:
    """The file name of the WAL written after snapshot generation ``gen``."""
    return f"wal-{gen:08d}.log"


def write_atomic(path: Path, text: str) -> None:
    """Replace ``path`` by ``text`` durably: a reader sees the old file or the new, never half."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)


def check_shard_file(data_dir: Path, info: dict) -> None:
    """Refuse a directory whose ``shard.json`` records other widths than ``info`` (shard_id,
    bits, vector_bytes, keypoint_bytes): its codes would not be comparable. A changed shard id
    is only reported. Then (re)write ``shard.json`` from ``info``."""
    path = data_dir / SHARD_FILE
    if path.exists():
        have = json.loads(path.read_text())
        if have.get("bits") != info["bits"]:
            raise ValueError(f"{data_dir} holds {have.get('bits')}-bit codes, not "
                             f"{info['bits']}-bit: use another index dir or the same encoder")
        if int(have.get("vector_bytes", 0)) != info["vector_bytes"]:
            raise ValueError(f"{data_dir} holds {have.get('vector_bytes', 0)}-byte side "
                             f"vectors, not {info['vector_bytes']}: use another index dir")
        if int(have.get("keypoint_bytes", 0)) != info["keypoint_bytes"]:
            raise ValueError(f"{data_dir} holds {have.get('keypoint_bytes', 0)}-byte "
                             f"keypoints, not {info['keypoint_bytes']}: use another index dir")
        if have.get("shard_id") != info["shard_id"]:
            print(f"neardup: {data_dir} was shard {have.get('shard_id')}, now shard "
                  f"{info['shard_id']}", file=sys.stderr)
    write_atomic(path, json.dumps(info))


def read_current(data_dir: Path) -> int:
    """The generation of the last complete snapshot (0: none yet)."""
    path = data_dir / CURRENT_FILE
    if not path.exists():
        return 0
    gen = int(json.loads(path.read_text())["generation"])
    if not (data_dir / snap_name(gen)).is_dir():
        raise RuntimeError(f"{path} points at missing snapshot {snap_name(gen)}")
    return gen


def read_manifest(data_dir: Path, gen: int) -> dict:
    """Snapshot ``gen``'s manifest (what ``publish`` was given, plus its generation)."""
    return json.loads((data_dir / snap_name(gen) / MANIFEST_FILE).read_text())


def wal_generations(data_dir: Path) -> list[int]:
    """The generations of the WAL files present, ascending."""
    gens = []
    for p in data_dir.glob("wal-*.log"):
        try:
            gens.append(int(p.stem.split("-", 1)[1]))
        except ValueError:
            continue
    return sorted(gens)


def remove_stale(data_dir: Path, keep: int) -> None:
    """Delete snapshots and WALs older than generation ``keep`` and unfinished temp dirs."""
    for p in data_dir.iterdir():
        name = p.name
        if name.endswith(".tmp"):
            shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
        elif name.startswith("snapshot-") and p.is_dir() and name != snap_name(keep):
            shutil.rmtree(p, ignore_errors=True)
        elif name.startswith("wal-") and name.endswith(".log"):
            try:
                if int(p.stem.split("-", 1)[1]) < keep:
                    p.unlink()
            except ValueError:
                pass


def new_snapshot_dir(data_dir: Path, gen: int) -> Path:
    """An empty ``snapshot-<gen>.tmp`` to write snapshot ``gen`` into (left over ones go)."""
    tmp = data_dir / (snap_name(gen) + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    return tmp


def publish(data_dir: Path, tmp: Path, gen: int, manifest: dict) -> Path:
    """Make the snapshot written into ``tmp`` the current one: write its manifest, fsync it,
    rename it to ``snapshot-<gen>`` and point ``CURRENT`` at it. Returns its final path."""
    (tmp / MANIFEST_FILE).write_text(json.dumps({"generation": gen, **manifest}))
    fsync_tree(tmp)
    final = data_dir / snap_name(gen)
    os.replace(tmp, final)
    fsync_dir(data_dir)
    write_atomic(data_dir / CURRENT_FILE, json.dumps({"generation": gen}))
    return final
