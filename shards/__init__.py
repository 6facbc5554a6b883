"""Sharded binary Hamming indexes: index kinds, id store, write-ahead log and the shard actor."""
from shards.index import DEFAULT_KIND, INDEX_KINDS, MISSING_DISTANCE, BinaryIndex, load_index, make_index
from shards.store import HashCollisionError, IdStore, hash_ids, id_hash
from shards.wal import WalCorruptError, WalRecord, WriteAheadLog, replay

__all__ = [
    "DEFAULT_KIND", "INDEX_KINDS", "MISSING_DISTANCE", "BinaryIndex", "load_index", "make_index",
    "HashCollisionError", "IdStore", "hash_ids", "id_hash",
    "WalCorruptError", "WalRecord", "WriteAheadLog", "replay",
]
