"""Real codes for the shard benchmark: `neardup encode` Parquets of reference images and of their
augmented copies, and which reference each copy duplicates.

Matching is by a ground-truth CSV, an explicit column, or file names, so that encoder output can be
benchmarked as it comes without a separate conversion step.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bench.shard_config import BenchError


def read_codes(path: str | Path) -> tuple[list[str], list[str] | None, np.ndarray, Any]:
    """(ids, paths or None, codes (n, B) uint8, the Arrow table) from a `neardup encode` Parquet."""
    p = Path(path)
    table = _read_table(p)
    codes = _code_matrix(table.column("code").combine_chunks(), p)
    if not len(codes):
        raise BenchError(f"{p} holds no codes")
    ids = [str(x) for x in table.column("id").to_pylist()] if "id" in table.column_names \
        else [str(i) for i in range(len(codes))]
    paths = [str(x) for x in table.column("path").to_pylist()] if "path" in table.column_names else None
    return ids, paths, codes, table


def _read_table(p: Path) -> Any:
    """The Parquet table at p, which must have a 'code' column; a one-line error otherwise."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    if not p.is_file():
        raise BenchError(f"codes file not found: {p}")
    try:
        table = pq.read_table(p)
    except (pa.ArrowInvalid, OSError) as exc:
        raise BenchError(f"cannot read Parquet {p}: {exc}") from None
    if "code" not in table.column_names:
        raise BenchError(f"{p} has no 'code' column (columns: {', '.join(table.column_names)})")
    return table


def _code_matrix(col: Any, p: Path) -> np.ndarray:
    """An Arrow column of fixed-size (or equal-length variable) binary codes as an (n, B) uint8 copy."""
    import pyarrow as pa

    if col.null_count:
        raise BenchError(f"{p}: {col.null_count} null codes")
    if pa.types.is_fixed_size_binary(col.type):
        width = col.type.byte_width
        data = np.frombuffer(col.buffers()[1], dtype=np.uint8)
        return data[col.offset * width:(col.offset + len(col)) * width].reshape(len(col), width).copy()
    if pa.types.is_binary(col.type) or pa.types.is_large_binary(col.type):
        values = col.to_pylist()
        widths = {len(v) for v in values}
        if len(widths) != 1:
            raise BenchError(f"{p}: codes have different lengths {sorted(widths)}")
        return np.frombuffer(b"".join(values), dtype=np.uint8).reshape(len(values), -1).copy()
    raise BenchError(f"{p}: 'code' must be fixed_size_binary, got {col.type}")


_MATCH_COLUMNS = ("ref_id", "source_id", "original_id", "match_id")


def _stem_key(text: str) -> str:
    """'dir/photo_01__crop.jpg' -> 'photo_01' (augmented copies are named <original>__<edit>)."""
    return Path(text).stem.split("__")[0]


def match_queries(ref_ids: list[str], ref_paths: list[str] | None, q_ids: list[str],
                  q_paths: list[str] | None, q_table: Any) -> np.ndarray:
    """For each query, the index of the reference it is a copy of (-1 when unknown).

    Uses an explicit column (ref_id, source_id, original_id or match_id) when present, else the
    same id, else the file stem before '__' (``photo__jpeg70.jpg`` is a copy of ``photo.jpg``).
    """
    by_id = {r: i for i, r in enumerate(ref_ids)}
    for name in _MATCH_COLUMNS:
        if name in q_table.column_names:
            return np.array([by_id.get(str(x), -1) for x in q_table.column(name).to_pylist()], np.int64)
    stems: dict[str, int] = {}
    for i, r in enumerate(ref_paths or ref_ids):
        key = _stem_key(r)
        stems[key] = -2 if key in stems else i  # -2: ambiguous stem, never matched
    out = np.full(len(q_ids), -1, dtype=np.int64)
    for j, qid in enumerate(q_ids):
        if qid in by_id:
            out[j] = by_id[qid]
            continue
        out[j] = stems.get(_stem_key((q_paths or q_ids)[j]), -1)
    return np.where(out >= 0, out, -1)


def _name_keys(ids: list[str], paths: list[str] | None) -> dict[str, int]:
    """id, id's file name and path's file name -> row (names shared by two rows are dropped)."""
    keys: dict[str, int] = {}
    for i, rid in enumerate(ids):
        names = {rid, Path(rid).name} | ({Path(paths[i]).name} if paths else set())
        for key in names:
            keys[key] = -2 if keys.get(key, i) != i else i
    return {k: v for k, v in keys.items() if v >= 0}


def match_from_csv(gt_path: str, ref_ids: list[str], ref_paths: list[str] | None, q_ids: list[str],
                   q_paths: list[str] | None) -> np.ndarray:
    """Reference row per query from a ground-truth CSV with columns query and ref (ids or file
    names, as ``neardup eval --ground-truth`` takes); queries without a ref are negatives (-1)."""
    pairs = _csv_pairs(Path(gt_path))
    refs, queries = _name_keys(ref_ids, ref_paths), _name_keys(q_ids, q_paths)
    out = np.full(len(q_ids), -1, dtype=np.int64)
    for q, r in pairs:
        if r and q in queries and r in refs:
            out[queries[q]] = refs[r]
    return out


def _csv_pairs(p: Path) -> list[tuple[str, str]]:
    """(query, ref) per row of a ground-truth CSV; ref is '' for a negative."""
    import csv
    if not p.is_file():
        raise BenchError(f"ground-truth CSV not found: {p}")
    with p.open(newline="") as fh:
        reader = csv.DictReader(fh)
        cols = {c.lower().strip(): c for c in reader.fieldnames or []}
        qcol = next((cols[c] for c in ("query", "query_id", "q") if c in cols), None)
        rcol = next((cols[c] for c in ("ref", "ref_id", "reference") if c in cols), None)
        if not qcol or not rcol:
            raise BenchError(f"{p} needs 'query' and 'ref' columns, has {reader.fieldnames}")
        return [(row[qcol].strip(), (row[rcol] or "").strip()) for row in reader]


@dataclass
class RealCodes:
    """Encoded references and their matched augmented queries."""

    refs: np.ndarray
    queries: np.ndarray
    ref_index: np.ndarray  # (q,) index into refs
    unmatched: int
    path: str
    queries_path: str


def load_real_codes(refs_path: str, queries_path: str, ground_truth: str | None = None) -> RealCodes:
    """Reference and query codes (``neardup encode`` Parquets), queries matched to references by
    a ground-truth CSV, a ref_id column, or file names; unmatched queries are dropped."""
    ref_ids, ref_paths, refs, _ = read_codes(refs_path)
    q_ids, q_paths, queries, q_table = read_codes(queries_path)
    if refs.shape[1] != queries.shape[1]:
        raise BenchError(f"code widths differ: {refs.shape[1] * 8} bits in {refs_path}, "
                         f"{queries.shape[1] * 8} bits in {queries_path}")
    ref_index = (match_from_csv(ground_truth, ref_ids, ref_paths, q_ids, q_paths) if ground_truth
                 else match_queries(ref_ids, ref_paths, q_ids, q_paths, q_table))
    keep = ref_index >= 0
    if not keep.any():
        raise BenchError(f"no query in {queries_path} matches a reference in {refs_path} (give "
                         f"--real-ground-truth, a ref_id column, or name copies <original>__<edit>.<ext>)")
    return RealCodes(refs, queries[keep], ref_index[keep], int((~keep).sum()), str(refs_path),
                     str(queries_path))
