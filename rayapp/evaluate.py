"""Copy-detection evaluation: build a benchmark from originals, score encoders side by side.

Metrics (per encoder):
- mAP@100: one relevant ref per positive query; ties are counted pessimistically (every
  irrelevant ref at the same distance ranks before the relevant one). Refs are ranked as the
  service ranks them: by the cosine of side vectors when the encoder has them (deephash), else
  by Hamming; ``rank=weighted`` scores weighted Hamming, ``rank=hamming`` plain Hamming. Then,
  as the service does, each query's top ``verify`` refs are spatially verified (``shards.verify``).
- µAP (DISC21): one global precision-recall curve over all (query, ref, score) predictions
  (top ``k_micro`` refs per query, negatives included), recall relative to the positive queries;
  equal scores are ordered wrong-first.
- recall@1 (strictly closest; ties count as misses), per-family recall@1, encode speed (img/s,
  decode + preprocess + encode, one process).

The command line (``neardup eval``, both suites side by side) is ``rayapp.eval_cli``.
"""
from __future__ import annotations

import datetime as dt
import json
import os
import platform
import subprocess
import time
from pathlib import Path

import numpy as np

from encoders.benchmark import ALL_FAMILIES, build_benchmark, read_ground_truth  # noqa: F401
from encoders.base import Encoder, check_rank, hamming, weighted_hamming
from encoders.decode import iter_image_files, load_image
from encoders.keypoints import extract, extract_query
from shards.vectors import vector_distances
from shards.verify import VERIFY_DEPTH, inliers, verify_bonus
from encoders.tta import (CONTENT_COST, DEFAULT_REF_VIEWS, FLIP_COST, HALF_TURN_COST, OUTSIDE_COST,
                          REF_VIEW_COST, ROT_COST, UPRIGHT_COST,
                          check_ref_views, costs as tta_costs, is_mirrored, query_variants,
                          ref_view_images,
                          view_names)

RESULTS_DIR = Path(__file__).resolve().parent.parent / "bench" / "results"


# ---------------------------------------------------------------- metrics
def rank_pessimistic(dist: np.ndarray, rel: np.ndarray) -> np.ndarray:
    """1-based rank of the relevant column per row; ties with irrelevant items rank it last."""
    d_rel = dist[np.arange(len(dist)), rel]
    return (dist <= d_rel[:, None]).sum(axis=1)  # counts itself once, every tie before it


def micro_ap(scores: np.ndarray, correct: np.ndarray, n_positive: int) -> float:
    """DISC21 µAP: AP of the global precision-recall curve; equal scores put wrong pairs first."""
    if n_positive == 0 or len(scores) == 0:
        return 0.0
    order = np.lexsort((correct.astype(np.int8), -scores))
    c = correct[order].astype(np.float64)
    tp = np.cumsum(c)
    precision = tp / np.arange(1, len(c) + 1)
    return float((precision * c).sum() / n_positive)


def score_codes(dist: np.ndarray, bits: int, gt_ref: np.ndarray, families: list[str],
                k_micro: int = 10) -> dict:
    """Metrics from a (queries x refs) Hamming matrix; gt_ref = ref column or -1 for negatives."""
    pos = gt_ref >= 0
    ranks = rank_pessimistic(dist[pos], gt_ref[pos])
    ap = np.where(ranks <= 100, 1.0 / ranks, 0.0)
    top1 = ranks == 1
    k = min(k_micro, dist.shape[1])
    idx = np.argpartition(dist, k - 1, axis=1)[:, :k]
    d_top = np.take_along_axis(dist, idx, axis=1)
    correct = idx == gt_ref[:, None]
    scores = 1.0 - d_top / bits
    fam = np.array(families)
    per_family = {f: round(float(top1[fam[pos] == f].mean()), 4) for f in sorted(set(fam[pos]))}
    d_pos = dist[pos][np.arange(pos.sum()), gt_ref[pos]]
    nearest_neg = dist[~pos].min(axis=1) if (~pos).any() else np.array([])
    return {
        "mAP@100": round(float(ap.mean()), 4),
        "muAP": round(micro_ap(scores.ravel(), correct.ravel(), int(pos.sum())), 4),
        "recall@1": round(float(top1.mean()), 4),
        "per_family_recall@1": per_family,
        "worst_family": min(per_family, key=per_family.get) if per_family else None,
        "median_positive_distance": float(np.median(d_pos)) if len(d_pos) else None,
        "median_negative_nearest_distance": float(np.median(nearest_neg)) if len(nearest_neg) else None,
    }


# ---------------------------------------------------------------- encoding
def parse_spec(spec: str) -> tuple[str, dict]:
    """'deephash:tta=flip_rot90,weights=x.safetensors' -> ('deephash', {...})."""
    name, _, opts = spec.partition(":")
    kwargs = {}
    for part in filter(None, opts.split(",")):
        key, _, value = part.partition("=")
        kwargs[key.strip()] = value.strip()
    return name, kwargs


def encode_refs(enc: Encoder, paths: list[Path], ref_views: tuple = (), batch: int = 128,
                ) -> tuple[np.ndarray, np.ndarray | None, float]:
    """Decode + preprocess + encode files as the index stores them -> (codes (n, 1 + views, B):
    the image as given, then its reference views' crops; their side vectors (n, 1 + views, d)
    or None; images per second, timed on the images as given)."""
    def run(images_of) -> tuple[np.ndarray, np.ndarray | None]:
        parts = [enc.encode_vectors(np.stack([enc.preprocess(im) for p in paths[i:i + batch]
                                              for im in images_of(p)]))
                 for i in range(0, len(paths), batch)]
        codes = np.concatenate([c for c, _, _ in parts]).reshape(len(paths), -1, enc.code_bytes)
        vecs = None if parts[0][2] is None else np.concatenate([v for _, _, v in parts])
        return codes, None if vecs is None else vecs.reshape(len(paths), codes.shape[1], -1)

    t0 = time.perf_counter()
    codes, vectors = run(lambda p: [load_image(p)])
    speed = len(paths) / max(1e-9, time.perf_counter() - t0)
    if ref_views:
        v_codes, v_vectors = run(lambda p: ref_view_images(load_image(p), ref_views))
        codes = np.concatenate([codes, v_codes], axis=1)
        vectors = None if vectors is None else np.concatenate([vectors, v_vectors], axis=1)
    return codes, vectors, speed


def encode_queries(enc: Encoder, paths: list[Path], tta: str = "none", content: bool = False,
                   batch: int = 128) -> tuple:
    """Each query's views, as the service searches them (``encoders.tta.query_variants``) ->
    (codes (n, v, B), bit confidences (n, v, bits) or None, valid (n, v): False where a query
    has no such view (no frame found), the v view names, side vectors (n, v, d) or None)."""
    names = list(view_names(tta, content))
    col = {name: j for j, name in enumerate(names)}
    n, nb = len(paths), enc.bits // 8
    codes, valid = np.zeros((n, len(names), nb), np.uint8), np.zeros((n, len(names)), bool)
    weights = np.zeros((n, len(names), enc.bits), np.float32)
    vectors = np.zeros((n, len(names), enc.vector_bytes), np.int8) if enc.vector_bytes else None
    for i in range(0, n, batch):
        arrays, where = [], []
        for q in range(i, min(n, i + batch)):
            views, got = query_variants(load_image(paths[q]), enc.preprocess, tta, content)
            arrays += views
            where += [(q, col[name]) for name in got]
        c, w, vec = enc.encode_vectors(np.concatenate(arrays))
        rows, cols = np.array(where).T
        codes[rows, cols], valid[rows, cols] = c, True
        if w is not None:
            weights[rows, cols] = w
        else:
            weights = None
        if vectors is not None:
            vectors[rows, cols] = vec
    return codes, weights, valid, names, vectors


def distances(q_codes: np.ndarray, q_weights: np.ndarray | None, r_codes: np.ndarray,
              costs: np.ndarray | None = None, valid: np.ndarray | None = None,
              ref_view_cost: float = REF_VIEW_COST, q_vectors: np.ndarray | None = None,
              r_vectors: np.ndarray | None = None, value_width: int = 0,
              with_views: bool = False) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """(queries x refs) distances, min over each query's views and each ref's stored views
    (``r_codes`` (n, 1 + views, B), or (n, B) for one code per ref) of the pair's distance plus
    their prior costs (``encoders.tta.costs`` for the query's, ``ref_view_cost`` for a stored
    crop). The pair's distance is what the service ranks by: the side vectors' cosine distance
    (``shards.vectors``) when both sides have vectors (the service scores its Hamming top
    ``rerank_depth`` candidates; on this benchmark the top 40 gave the same figures as all refs;
    ``value_width``: the vectors' int8 values before their side hash, ``shards.vectors``),
    else weighted Hamming when the queries have bit confidences, else Hamming. Query views not
    ``valid`` are skipped. ``with_views`` also returns which query view gave each minimum."""
    r_codes = r_codes[:, None] if r_codes.ndim == 2 else r_codes
    best = np.full((len(q_codes), len(r_codes)), np.inf, np.float32)
    view = np.zeros(best.shape, np.int16)
    for v, j in np.ndindex(q_codes.shape[1], r_codes.shape[1]):
        refs = np.ascontiguousarray(r_codes[:, j])
        if q_vectors is not None and r_vectors is not None:
            d = vector_distances(q_vectors[:, v], r_vectors[:, j], value_width)
        elif q_weights is None:
            d = hamming(q_codes[:, v], refs).astype(np.float32)
        else:
            d = np.stack([weighted_hamming(c, w, refs) for c, w in zip(q_codes[:, v], q_weights[:, v])])
        d = d + (0.0 if costs is None else float(costs[v])) + (ref_view_cost if j else 0.0)
        if valid is not None:
            d[~valid[:, v]] = np.inf
        view[d < best] = v
        best = np.minimum(best, d)
    return (best, view) if with_views else best


def verified(dist: np.ndarray, q_keypoints: np.ndarray, r_keypoints: np.ndarray,
             depth: int = VERIFY_DEPTH, mirrored: np.ndarray | None = None) -> np.ndarray:
    """``dist`` with each query's ``depth`` nearest refs spatially verified as the service
    verifies them (``shards.verify``): a verified ref's distance drops by ``verify_bonus``.
    ``q_keypoints`` (n, 2, K) holds each query's blocks as given and mirrored; a pair whose
    best view was mirrored (``mirrored``, (queries, refs) bool) takes the better of both."""
    out = dist.copy()
    for q, row in enumerate(dist):
        for r in np.argsort(row, kind="stable")[:depth]:
            both = mirrored is not None and mirrored[q, r]
            n = max(inliers(b, r_keypoints[r]) for b in q_keypoints[q, :2 if both else 1])
            out[q, r] -= verify_bonus(n)
    return out


def keypoints_of(paths: list[Path], query: bool = False) -> np.ndarray:
    """Packed keypoints of image files: (n, K), or (n, 2, K) as given and mirrored for queries."""
    one = extract_query if query else extract
    return np.stack([one(load_image(p)) for p in paths])


def evaluate(encoders: list[str], refs_dir: str | Path, queries_dir: str | Path,
             ground_truth: str | Path, k_micro: int = 10, out: str | Path | None = None,
             extra: dict | None = None, write: bool = True, pairs: dict | None = None) -> dict:
    """Score each encoder spec on one benchmark; with ``write``, the JSON goes to ``out``
    (default bench/results/eval_<date>.json). With ``pairs``, each spec's labelled top hits
    (``top_hits``: rank values and whether each is the true copy) are put there too."""
    from encoders.registry import get_encoder
    rows = read_ground_truth(ground_truth)
    ref_paths = sorted(iter_image_files([refs_dir]))
    ref_index = {p.name: i for i, p in enumerate(ref_paths)}
    missing = [r for _, r, _ in rows if r and r not in ref_index]
    if missing:
        raise ValueError(f"ground truth names refs not in {refs_dir}: {missing[:5]}")
    q_paths = [Path(queries_dir) / q for q, _, _ in rows]
    gt_ref = np.array([ref_index[r] if r else -1 for _, r, _ in rows])
    families = [f for _, _, f in rows]
    results, keypoints = {}, None
    for spec in encoders:
        name, kwargs = parse_spec(spec)
        rank = check_rank(kwargs.pop("rank", "vector"))
        prior = {key: float(kwargs.pop(key, default)) for key, default in
                 (("flip_cost", FLIP_COST), ("rot_cost", ROT_COST), ("content_cost", CONTENT_COST),
                  ("half_turn_cost", HALF_TURN_COST), ("outside_cost", OUTSIDE_COST),
                  ("upright_cost", UPRIGHT_COST))}
        content = kwargs.pop("content", "on")
        content = "frame" if content == "frame" else content not in ("off", "0", "false")
        ref_views = _ref_views(kwargs.pop("ref_views", "+".join(DEFAULT_REF_VIEWS)))
        ref_view_cost = float(kwargs.pop("ref_view_cost", REF_VIEW_COST))
        depth = int(kwargs.pop("verify", VERIFY_DEPTH))
        enc = get_encoder(name, **kwargs)
        r_codes, r_vectors, speed = encode_refs(enc, ref_paths, ref_views)
        tta = getattr(enc, "tta", "none")
        q_codes, q_weights, valid, names, q_vectors = encode_queries(enc, q_paths, tta, content)
        q_weights = None if rank == "hamming" else q_weights
        q_vectors = q_vectors if rank == "vector" else None
        prior = tta_costs(names, **prior)
        dist, view = distances(q_codes, q_weights, r_codes, prior, valid, ref_view_cost,
                               q_vectors, r_vectors, enc.bits, with_views=True)
        if depth > 0:
            keypoints = keypoints or (keypoints_of(q_paths, query=True), keypoints_of(ref_paths))
            mirrored = np.array([is_mirrored(n) for n in names])[view]
            dist = verified(dist, *keypoints, depth, mirrored)
        used = "vector" if q_vectors is not None else "hamming" if q_weights is None else "weighted"
        results[spec] = {"bits": enc.bits, "encode_img_per_s": round(speed, 1), **enc.info(),
                         "rank": used,
                         "views": {n: round(float(c), 3) for n, c in zip(names, prior)},
                         "ref_views": {n: ref_view_cost for n in ref_views}, "verify": depth,
                         **score_codes(dist, enc.bits, gt_ref, families, k_micro)}
        if pairs is not None:
            pairs[spec] = top_hits(dist, gt_ref, k_micro)
        print(f"{spec:40s} mAP@100={results[spec]['mAP@100']:.3f} muAP={results[spec]['muAP']:.3f} "
              f"R@1={results[spec]['recall@1']:.3f} worst={results[spec]['worst_family']} "
              f"{speed:.0f} img/s", flush=True)
    report = {"date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
              "git_rev": git_rev(), "machine": {"platform": platform.platform(), "cpus": os.cpu_count()},
              "benchmark": {"refs": len(ref_paths), "queries": len(rows), "positive_queries": int((gt_ref >= 0).sum()),
                            "negative_queries": int((gt_ref < 0).sum()), "k_micro": k_micro, **(extra or {})},
              "results": results}
    if write:
        out = Path(out) if out else RESULTS_DIR / f"eval_{dt.date.today().isoformat()}.json"
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(report, indent=2))
    return report


def top_hits(dist: np.ndarray, gt_ref: np.ndarray, k: int = 10) -> tuple[np.ndarray, np.ndarray]:
    """Every query's ``k`` best refs as (rank values, is the true copy), flattened: what a
    confidence is calibrated on (negative queries give only wrong hits)."""
    k = min(k, dist.shape[1])
    idx = np.argsort(dist, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(dist, idx, axis=1).ravel(), (idx == gt_ref[:, None]).ravel()


def _ref_views(value: str) -> tuple[str, ...]:
    """A spec's ``ref_views`` option: names joined by '+', or none/off for one code per ref."""
    names = [] if value.lower() in ("", "none", "off") else value.split("+")
    return check_ref_views(names)


def git_rev() -> str | None:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              cwd=Path(__file__).parent, timeout=5).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None
