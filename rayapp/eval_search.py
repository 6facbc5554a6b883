"""Eval's query path is the service's: the benchmark's refs are stored as ingest stores images,
in local shards, and every query is searched through the one :class:`rayapp.searcher.Searcher`.

1. ``encode_refs``: each ref file through ingest's stages (``rayapp.store_encoding``: decode
   with its reference views' crops and keypoints, encode), its id the file name;
2. ``local_index``: the records added through a router (``add_batch``) to in-process shards
   (``rayapp.local_shards``) in a temporary folder, made as the service makes its shards;
3. ``rank_matrix``: each query's views (``encode_queries``) searched with the spec's view
   costs and verification depth; its top ``k`` hits' rank values fill a (queries x refs)
   matrix, ``inf`` where a ref was not returned, for the metrics (``rayapp.evaluate``), and
   their verified keypoints a second, for the confidence curves (``encoders.calibration``).

Eval therefore measures what a search for ``k`` hits is served, not every (query, ref) pair:
each shard returns only the candidates its index finds (the service's default kind, ``mihc``,
finds every code within its guaranteed radius and others only when they share a bucket,
``shards.index``), scores by side vector only the Hamming-nearest ``rerank_depth`` of them, and
only the top hits are verified. A copy whose code is far from every query view's is then not
returned, as in the service, where a dense (queries x refs) matrix would still have scored it
by side vector. The spec option ``index=flat`` (exact Hamming top-k) gives that exhaustive
figure, to tell the index's misses apart from the ranking's.
"""
from __future__ import annotations

import contextlib
import tempfile
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from encoders.decode import load_image
from rayapp.config import Config, EncoderConfig
from rayapp.local_shards import local_router, open_local_shards
from rayapp.router import ShardRouter
from rayapp.searcher import QueryViews, Searcher, encode_queries
from rayapp.store_encoding import BatchEncoder, add_batch, decode_batch
from shards.verify import KEYPOINT_BYTES


def encode_refs(enc, paths: Sequence[Path], ref_views: Sequence[str] = (), keypoints: bool = False,
                batch: int = 64) -> dict:
    """Ref files as ingest encodes them (``decode_batch`` then ``BatchEncoder``) -> one batch
    of columns (``code``, ``vector``, ``view_codes``, ``view_vectors``, ``keypoints``, ...),
    rows in ``paths`` order, ids the file names. A file that does not decode raises."""
    encode = BatchEncoder(enc)
    max_pixels = EncoderConfig().max_pixels
    parts = []
    for i in range(0, len(paths), batch):
        rows = paths[i:i + batch]
        cols = {"id": np.array([p.name for p in rows], dtype=object),
                "path": np.array([str(p) for p in rows], dtype=object)}
        parts.append(encode(decode_batch(cols, enc.input_size, max_pixels, tuple(ref_views), keypoints)))
    out = {key: np.concatenate([p[key] for p in parts]) for key in parts[0]}
    bad = [f"{i}: {e}" for i, e in zip(out["id"], out["error"]) if e]
    if bad:
        raise ValueError(f"{len(bad)} ref(s) could not be decoded: {bad[:3]}")
    return out


@contextlib.contextmanager
def local_index(enc, encoded: dict, cfg: Config) -> Iterator[ShardRouter]:
    """A router over local shards in a temporary folder (``cfg.storage``: their count, index
    kind and reference views) holding the ``encode_refs`` records (side vectors when the
    encoder has them, keypoints when they were extracted); the shards are closed and their
    files removed afterwards."""
    keypoint_bytes = KEYPOINT_BYTES if "keypoints" in encoded else 0
    with tempfile.TemporaryDirectory(prefix="neardup-eval-") as root:
        stored = cfg.storage
        shards = open_local_shards(root, stored.num_shards, enc.bits, enc.vector_bytes,
                                   keypoint_bytes, stored.index_kind)
        try:
            router = local_router(shards, len(stored.ref_views), cfg.query.ref_view_cost)
            add_batch(router, encoded, list(stored.ref_views))
            yield router
        finally:
            for shard in shards:
                shard.close()


def rank_matrix(searcher: Searcher, enc, paths: Sequence[Path], ref_index: dict[str, int],
                k: int, batch: int = 128) -> tuple[np.ndarray, str, np.ndarray]:
    """Each query file's top ``k`` hits through ``searcher`` -> ((queries x refs) float32 rank
    values, ``inf`` where not returned; what ranked them: vector, weighted or hamming; the same
    matrix of each hit's verified keypoints, 0 where none or not verified)."""
    dist = np.full((len(paths), len(ref_index)), np.inf, np.float32)
    inliers = np.zeros(dist.shape, np.int16)
    ranked = "hamming"
    for i in range(0, len(paths), batch):
        queries = encode_queries(enc, [load_image(p) for p in paths[i:i + batch]], searcher.cfg)
        ranked = ranked_by(queries[0])
        for qi, q in enumerate(queries, start=i):
            answer = searcher.search(q, k)
            if answer.partial:
                raise RuntimeError(f"local shard(s) {answer.missing} did not answer")
            for hit in answer.hits:
                dist[qi, ref_index[hit.id]] = hit.rank
                inliers[qi, ref_index[hit.id]] = hit.inliers or 0
    return dist, ranked, inliers


def search_benchmark(enc, cfg: Config, ref_paths: Sequence[Path], q_paths: Sequence[Path],
                     ref_index: dict[str, int], k: int) -> tuple[np.ndarray, str, np.ndarray]:
    """Store the refs in local shards as ``cfg.storage`` says and search every query there as
    ``cfg.query`` says (``rank_matrix``)."""
    encoded = encode_refs(enc, ref_paths, cfg.storage.ref_views, keypoints=int(cfg.query.verify) > 0)
    with local_index(enc, encoded, cfg) as router:
        return rank_matrix(Searcher(router, cfg.query), enc, q_paths, ref_index, k)


def ranked_by(q: QueryViews) -> str:
    """What the service ranks a query's hits by: its side vectors, else its bit confidences
    (weighted Hamming), else Hamming distance."""
    return "vector" if q.vectors is not None else "hamming" if q.weights is None else "weighted"
