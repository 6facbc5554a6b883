"""Id store (hashing, collisions, Parquet/Arrow snapshots) and the write-ahead log."""
from __future__ import annotations

import os

import numpy as np
import pyarrow.parquet as pq
import pytest
import xxhash

import shards.store as store_mod
import shards.store_snapshot as snapshot_mod
from shards.store import HashCollisionError, IdStore, hash_ids, id_hash
from shards.store_snapshot import ARROW_FILE, HASHES_FILE, PARQUET_FILE
from shards.wal import OP_ADD, OP_REMOVE, MAGIC, WalCorruptError, WalRecord, WriteAheadLog, replay

CB = 16


def code(i: int) -> bytes:
    return bytes([i % 256]) * CB


# ------------------------------------------------------------------------------------------------
# store
# ------------------------------------------------------------------------------------------------

def test_id_hash_is_signed_xxh64():
    for ext in ["a", "img/0001.jpg", "ünïcode-✓", "x" * 500]:
        raw = xxhash.xxh64_intdigest(ext.encode("utf-8"))
        expect = raw - (1 << 64) if raw >= 1 << 63 else raw
        assert id_hash(ext) == expect
    ids = [f"id{i}" for i in range(1000)]
    hashes = hash_ids(ids)
    assert hashes.dtype == np.int64 and len(set(hashes.tolist())) == 1000
    assert (hashes < 0).any() and (hashes > 0).any()
    assert hashes.tolist() == [id_hash(i) for i in ids]


def test_id_hash_never_minus_one(monkeypatch):
    monkeypatch.setattr(store_mod, "_hash64", lambda data: (1 << 64) - 1)
    assert id_hash("anything") == -2


def test_put_get_replace_delete():
    s = IdStore(CB)
    h = id_hash("a")
    assert s.put("a", h, code(1), '{"p":1}') is True
    assert s.put("b", id_hash("b"), code(2), "") is True
    assert len(s) == 2
    assert s.get("a").code == code(1) and s.get("a").meta_dict() == {"p": 1}
    assert s.put("a", h, code(3), "") is False  # replace
    assert len(s) == 2 and s.get("a").code == code(3)
    assert s.ids_of(np.array([h, id_hash("zz")])) == ["a", None]
    assert s.get("zz") is None
    assert s.delete(h) is True and s.delete(h) is False
    assert len(s) == 1 and s.get("a") is None
    with pytest.raises(ValueError, match="bytes"):
        s.put("c", id_hash("c"), b"short", "")


def test_collision_detected_and_rejected(monkeypatch):
    real = store_mod._hash64
    monkeypatch.setattr(store_mod, "_hash64",
                        lambda data: 42 if data in (b"cat.jpg", b"dog.jpg") else real(data))
    s = IdStore(CB)
    s.put("cat.jpg", id_hash("cat.jpg"), code(1), "")
    with pytest.raises(HashCollisionError, match="cat.jpg"):
        s.check_collisions(["dog.jpg"], hash_ids(["dog.jpg"]))
    with pytest.raises(HashCollisionError):  # two colliding ids in one batch
        IdStore(CB).check_collisions(["cat.jpg", "dog.jpg"], hash_ids(["cat.jpg", "dog.jpg"]))
    s.check_collisions(["cat.jpg", "x"], hash_ids(["cat.jpg", "x"]))  # same id again: fine
    assert s.get("cat.jpg").code == code(1)  # untouched
    assert s.get("dog.jpg") is None  # same hash, different id: not a hit


def _fill(s: IdStore, names: list[str]) -> None:
    for i, n in enumerate(names):
        s.put(n, id_hash(n), code(i), f'{{"i":{i}}}')


def test_snapshot_parquet_roundtrip_and_overlay_merge(tmp_path, monkeypatch):
    monkeypatch.setattr(snapshot_mod, "BLOCK", 7)  # many merge blocks with little data
    names = [f"img-{i}" for i in range(50)]
    s = IdStore(CB)
    _fill(s, names)
    assert s.write_snapshot(tmp_path / "s1") == 50
    table = pq.read_table(tmp_path / "s1" / PARQUET_FILE)
    assert table.column_names == ["hash", "id", "code", "meta"]
    hashes = table.column("hash").to_numpy()
    assert (np.diff(hashes) > 0).all()  # sorted by hash
    assert sorted(table.column("id").to_pylist()) == sorted(names)

    base = IdStore.open(tmp_path / "s1", CB)
    assert len(base) == 50 and base.mapped_bytes() > 0 and base.memory_bytes() == 0
    assert base.get("img-7").code == code(7) and base.get("img-7").meta_dict() == {"i": 7}
    # overlay on the mapped base: replace, delete, add
    base.put("img-3", id_hash("img-3"), code(99), "")
    base.delete(id_hash("img-4"))
    base.put("new", id_hash("new"), code(5), "")
    assert len(base) == 50
    assert base.get("img-3").code == code(99) and base.get("img-4") is None
    got = {int(h): c.tobytes() for hs, cs in base.iter_codes(batch=9) for h, c in zip(hs, cs)}
    assert len(got) == 50 and got[id_hash("img-3")] == code(99) and id_hash("img-4") not in got

    assert base.write_snapshot(tmp_path / "s2") == 50
    again = IdStore.open(tmp_path / "s2", CB)
    assert len(again) == 50
    assert again.get("img-3").code == code(99) and again.get("img-4") is None
    assert again.get("new").code == code(5) and again.get("img-10").meta_dict() == {"i": 10}
    assert (np.diff(np.load(tmp_path / "s2" / HASHES_FILE)) > 0).all()


def test_open_rebuilds_mapped_files_from_parquet(tmp_path):
    s = IdStore(CB)
    _fill(s, [f"p{i}" for i in range(20)])
    s.write_snapshot(tmp_path)
    os.remove(tmp_path / ARROW_FILE)
    os.remove(tmp_path / HASHES_FILE)
    again = IdStore.open(tmp_path, CB)
    assert len(again) == 20 and again.get("p5").code == code(5)
    assert (tmp_path / ARROW_FILE).exists()
    with pytest.raises(ValueError, match="corrupt"):
        IdStore.open(tmp_path, 32)  # wrong code width
    with pytest.raises(FileNotFoundError):
        IdStore.open(tmp_path / "nothing", CB)


def test_empty_snapshot(tmp_path):
    assert IdStore(CB).write_snapshot(tmp_path) == 0
    s = IdStore.open(tmp_path, CB)
    assert len(s) == 0 and s.get("x") is None and list(s.iter_codes()) == []


# ------------------------------------------------------------------------------------------------
# write-ahead log
# ------------------------------------------------------------------------------------------------

def _records(n: int) -> list[WalRecord]:
    return [WalRecord(OP_ADD, f"id-{i}-ü", code(i), f'{{"path":"/x/{i}"}}') for i in range(n)] + \
        [WalRecord(OP_REMOVE, "id-1-ü")]


def test_wal_roundtrip_and_fsync_hook(tmp_path):
    seen = []
    path = tmp_path / "w.log"
    with WriteAheadLog(path, on_fsync=seen.append) as wal:
        seconds = wal.append(_records(5))
        wal.append([WalRecord(OP_ADD, "late", code(9), "")])
        assert wal.append([]) == 0.0
        assert wal.count == 7 and wal.fsyncs == 2
    assert len(seen) == 2 and seen[0] == seconds >= 0
    assert list(replay(path)) == _records(5) + [WalRecord(OP_ADD, "late", code(9), "")]
    assert path.read_bytes().startswith(MAGIC)


def test_wal_append_fsyncs_before_returning(tmp_path, monkeypatch):
    calls = []
    real_fsync = os.fsync

    def spy(fd):
        calls.append(fd)
        real_fsync(fd)

    wal = WriteAheadLog(tmp_path / "w.log")
    monkeypatch.setattr(os, "fsync", spy)
    wal.append(_records(2))
    assert calls == [wal._f.fileno()]
    wal.close()


@pytest.mark.parametrize("damage", ["cut-1", "cut-half", "cut-header", "crc", "garbage"])
def test_wal_torn_tail_recovers_earlier_records(tmp_path, damage):
    path = tmp_path / "w.log"
    with WriteAheadLog(path) as wal:
        wal.append(_records(10))
        good_size = path.stat().st_size
        wal.append([WalRecord(OP_ADD, "last", code(7), "{}")])
    data = bytearray(path.read_bytes())
    last_len = len(data) - good_size
    if damage == "cut-1":
        data = data[:-1]
    elif damage == "cut-half":
        data = data[:good_size + last_len // 2]
    elif damage == "cut-header":
        data = data[:good_size + 3]
    elif damage == "crc":
        data[-1] ^= 0xFF  # payload no longer matches the checksum
    else:
        data += b"\x07" * 5  # a torn frame header after the good records
    path.write_bytes(bytes(data))
    expected = _records(10) + ([WalRecord(OP_ADD, "last", code(7), "{}")] if damage == "garbage" else [])
    assert list(replay(path)) == expected
    assert path.stat().st_size == (len(data) - 5 if damage == "garbage" else good_size)  # truncated
    with WriteAheadLog(path) as wal:  # appends continue after the good records
        assert wal.count == len(expected)
        wal.append([WalRecord(OP_REMOVE, "id-0-ü")])
    assert list(replay(path)) == expected + [WalRecord(OP_REMOVE, "id-0-ü")]


def test_wal_corruption_before_the_tail_is_refused(tmp_path):
    path = tmp_path / "w.log"
    with WriteAheadLog(path) as wal:
        wal.append(_records(3))
    data = bytearray(path.read_bytes())
    data[len(MAGIC) + 12] ^= 0x01  # flip a bit inside the first record's payload
    path.write_bytes(bytes(data))
    with pytest.raises(WalCorruptError, match="valid records"):
        list(replay(path))
    assert path.stat().st_size == len(data)  # nothing was cut


def test_wal_header_and_reset(tmp_path):
    path = tmp_path / "w.log"
    path.write_bytes(MAGIC[:3])  # crashed while creating the file
    assert list(replay(path)) == []
    with WriteAheadLog(path) as wal:
        wal.append(_records(2))
        wal.reset()
        assert wal.count == 0
        wal.append([WalRecord(OP_REMOVE, "z")])
    assert list(replay(path)) == [WalRecord(OP_REMOVE, "z")]
    (tmp_path / "bad.log").write_bytes(b"not a wal at all")
    with pytest.raises(WalCorruptError, match="magic"):
        list(replay(tmp_path / "bad.log"))
    assert list(replay(tmp_path / "missing.log")) == []


def test_put_many_matches_put(tmp_path):
    names = [f"m{i}" for i in range(30)]
    s = IdStore(CB)
    _fill(s, names[:10])
    s.write_snapshot(tmp_path)
    s = IdStore.open(tmp_path, CB)
    s.put("m11", id_hash("m11"), code(0), "")  # overlay entry that put_many replaces
    codes = np.stack([np.frombuffer(code(i + 100), np.uint8) for i in range(25)])
    new = s.put_many(names[5:30], hash_ids(names[5:30]), codes, ["{}"] * 25)
    assert new == 19 and len(s) == 30  # m5..m9 replace base rows, m11 an overlay entry
    assert s.get("m5").code == code(100) and s.get("m11").code == code(106)
    assert s.get("m0").code == code(0)
    with pytest.raises(ValueError, match="shape"):
        s.put_many(["a"], hash_ids(["a"]), codes[:2], [""])
