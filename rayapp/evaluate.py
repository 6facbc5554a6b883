"""Copy-detection evaluation: build a benchmark from originals, score encoders side by side.

Each spec is scored on the service's own query path (``rayapp.eval_search``): the refs stored
as ingest stores images, in local shards, and every query's views searched through the one
``Searcher`` with the spec's view costs, stored views and verification depth; each query's top
``SEARCH_K`` hits and their rank values are what the metrics see. A ref the shards' index
does not find, or that falls outside their re-rank depth, is not returned, as in the service
(``index=flat`` searches exact Hamming top-k instead; see ``rayapp.eval_search``).

Metrics (per encoder):
- mAP@100: one relevant ref per positive query; ties are counted pessimistically (every
  irrelevant hit with the same rank value ranks before the relevant one); a relevant ref not
  among the query's hits scores 0.
- µAP (DISC21): one global precision-recall curve over all (query, ref, score) predictions
  (top ``k_micro`` hits per query, negatives included), recall relative to the positive queries;
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
from encoders.base import Encoder, check_rank
from encoders.decode import iter_image_files, load_image
from encoders.tta import DEFAULT_REF_VIEWS, check_ref_views, view_names
from rayapp.config import Config, EncoderConfig, QueryConfig, StorageConfig
from rayapp.eval_search import search_benchmark
from shards.index import DEFAULT_KIND

RESULTS_DIR = Path(__file__).resolve().parent.parent / "bench" / "results"
SEARCH_K = 100  # hits per query: mAP@100 looks no deeper
_PRIOR_COSTS = ("flip_cost", "rot_cost", "content_cost", "half_turn_cost", "outside_cost",
                "upright_cost", "tilt_cost", "negative_cost")


# ---------------------------------------------------------------- metrics
def rank_pessimistic(dist: np.ndarray, rel: np.ndarray) -> np.ndarray:
    """1-based rank of the relevant column per row; ties with irrelevant items rank it last;
    ``inf`` where the relevant column is ``inf`` (not returned)."""
    d_rel = dist[np.arange(len(dist)), rel]
    ranks = (dist <= d_rel[:, None]).sum(axis=1)  # counts itself once, every tie before it
    return np.where(np.isfinite(d_rel), ranks, np.inf)


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
    """Metrics from a (queries x refs) matrix of rank values (lower is better; ``inf``: not
    returned); gt_ref = ref column or -1 for negatives."""
    pos = gt_ref >= 0
    ranks = rank_pessimistic(dist[pos], gt_ref[pos])
    ap = np.where(ranks <= 100, 1.0 / ranks, 0.0)
    top1 = ranks == 1
    k = min(k_micro, dist.shape[1])
    idx = np.argpartition(dist, k - 1, axis=1)[:, :k]
    d_top = np.take_along_axis(dist, idx, axis=1)
    correct = idx == gt_ref[:, None]
    scores = 1.0 - d_top / bits
    found = np.isfinite(d_top)
    fam = np.array(families)
    per_family = {f: round(float(top1[fam[pos] == f].mean()), 4) for f in sorted(set(fam[pos]))}
    d_pos = dist[pos][np.arange(pos.sum()), gt_ref[pos]]
    nearest_neg = dist[~pos].min(axis=1) if (~pos).any() else np.array([])
    some = bool(pos.any())  # a suite of negatives only (look-alikes) has no copy to find
    return {
        "mAP@100": round(float(ap.mean()), 4) if some else None,
        "muAP": round(micro_ap(scores[found], correct[found], int(pos.sum())), 4) if some else None,
        "recall@1": round(float(top1.mean()), 4) if some else None,
        "per_family_recall@1": per_family,
        "worst_family": min(per_family, key=per_family.get) if per_family else None,
        "median_positive_distance": _median(d_pos),
        "median_negative_nearest_distance": _median(nearest_neg),
    }


def fmt(value: float | None) -> str:
    """A metric to three decimals, or a dash where the suite has none (no copies to find)."""
    return "—" if value is None else f"{value:.3f}"


def _median(values: np.ndarray) -> float | None:
    """The median, or None when there are no values or it is not finite (not returned)."""
    m = float(np.median(values)) if len(values) else float("nan")
    return m if np.isfinite(m) else None


# ---------------------------------------------------------------- specs
def parse_spec(spec: str) -> tuple[str, dict]:
    """'deephash:tta=flip_rot90,weights=x.safetensors' -> ('deephash', {...})."""
    name, _, opts = spec.partition(":")
    kwargs = {}
    for part in filter(None, opts.split(",")):
        key, _, value = part.partition("=")
        kwargs[key.strip()] = value.strip()
    return name, kwargs


def spec_config(spec: str) -> tuple[Config, dict]:
    """An encoder spec -> (its config: the encoder's name and weights; how its queries are
    searched: rank, view costs, content views, the stored crops' cost, verification depth;
    what is stored: reference views and the ``index`` kind, default the service's; the options
    left for the encoder, e.g. tta, weights, side_hash). ``query.tta`` is set once the encoder
    is built."""
    name, kwargs = parse_spec(spec)
    defaults = QueryConfig()
    prior = {key: float(kwargs.pop(key, getattr(defaults, key))) for key in _PRIOR_COSTS}
    content = kwargs.pop("content", "on")
    query = QueryConfig(
        rank=check_rank(kwargs.pop("rank", "vector")),
        content="frame" if content == "frame" else content not in ("off", "0", "false"),
        ref_view_cost=float(kwargs.pop("ref_view_cost", defaults.ref_view_cost)),
        verify=int(kwargs.pop("verify", defaults.verify)),
        verify_more=int(kwargs.pop("verify_more", defaults.verify_more)), **prior)
    storage = StorageConfig(index_kind=kwargs.pop("index", None),
                            ref_views=list(_ref_views(kwargs.pop("ref_views", "+".join(DEFAULT_REF_VIEWS)))))
    cfg = Config(encoder=EncoderConfig(name=name, weights=kwargs.get("weights")), query=query, storage=storage)
    return cfg.validate(), kwargs


def encode_speed(enc: Encoder, paths: list[Path], batch: int = 128) -> float:
    """Images per second through decode + preprocess + encode of the files as given, in one
    process (the report's encode speed)."""
    t0 = time.perf_counter()
    for i in range(0, len(paths), batch):
        enc.encode_vectors(np.stack([enc.preprocess(load_image(p)) for p in paths[i:i + batch]]))
    return len(paths) / max(1e-9, time.perf_counter() - t0)


def load_benchmark(refs_dir: str | Path, queries_dir: str | Path, ground_truth: str | Path) -> dict:
    """A built benchmark: ref and query paths, each query's ref column (-1: a negative) and
    edit family; ValueError when the ground truth names a ref that is not there."""
    rows = read_ground_truth(ground_truth)
    ref_paths = sorted(iter_image_files([refs_dir]))
    ref_index = {p.name: i for i, p in enumerate(ref_paths)}
    missing = [r for _, r, _ in rows if r and r not in ref_index]
    if missing:
        raise ValueError(f"ground truth names refs not in {refs_dir}: {missing[:5]}")
    return {"ref_paths": ref_paths, "ref_index": ref_index,
            "q_paths": [Path(queries_dir) / q for q, _, _ in rows],
            "gt_ref": np.array([ref_index[r] if r else -1 for _, r, _ in rows]),
            "families": [f for _, _, f in rows]}


def score_spec(spec: str, bench: dict, k_micro: int = 10) -> tuple[dict, np.ndarray, np.ndarray]:
    """One encoder spec on a benchmark (``load_benchmark``), searched as the service searches
    -> (its report row, the (queries x refs) rank values of each query's hits, and their
    verified keypoints)."""
    from encoders.registry import get_encoder
    cfg, kwargs = spec_config(spec)
    enc = get_encoder(cfg.encoder.name, **kwargs)
    query = cfg.query
    query.tta = getattr(enc, "tta", "none")
    speed = encode_speed(enc, bench["ref_paths"])
    dist, ranked, inliers = search_benchmark(enc, cfg, bench["ref_paths"], bench["q_paths"],
                                    bench["ref_index"], max(SEARCH_K, k_micro))
    names = view_names(query.tta, query.content)
    row = {"bits": enc.bits, "encode_img_per_s": round(speed, 1), **enc.info(), "rank": ranked,
           "index": cfg.storage.index_kind or DEFAULT_KIND,
           "views": {n: round(float(c), 3) for n, c in zip(names, query.view_costs(names))},
           "ref_views": {n: query.ref_view_cost for n in cfg.storage.ref_views}, "verify": query.verify,
           "verify_more": query.verify_more if query.verify else 0,
           **score_codes(dist, enc.bits, bench["gt_ref"], bench["families"], k_micro)}
    print(f"{spec:40s} mAP@100={fmt(row['mAP@100'])} muAP={fmt(row['muAP'])} "
          f"R@1={fmt(row['recall@1'])} worst={row['worst_family']} {speed:.0f} img/s", flush=True)
    return row, dist, inliers


def evaluate(encoders: list[str], refs_dir: str | Path, queries_dir: str | Path,
             ground_truth: str | Path, k_micro: int = 10, out: str | Path | None = None,
             extra: dict | None = None, write: bool = True, pairs: dict | None = None) -> dict:
    """Score each encoder spec on one benchmark; with ``write``, the JSON goes to ``out``
    (default bench/results/eval_<date>.json). With ``pairs``, each spec's labelled top hits
    (``top_hits``: rank values, whether each is the true copy, verified keypoints) are put there too."""
    bench = load_benchmark(refs_dir, queries_dir, ground_truth)
    gt_ref = bench["gt_ref"]
    results = {}
    for spec in encoders:
        results[spec], dist, inliers = score_spec(spec, bench, k_micro)
        if pairs is not None:
            pairs[spec] = top_hits(dist, gt_ref, k_micro, inliers)
    report = {"date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
              "git_rev": git_rev(), "machine": {"platform": platform.platform(), "cpus": os.cpu_count()},
              "benchmark": {"refs": len(bench["ref_paths"]), "queries": len(gt_ref),
                            "positive_queries": int((gt_ref >= 0).sum()),
                            "negative_queries": int((gt_ref < 0).sum()), "k_micro": k_micro, **(extra or {})},
              "results": results}
    if write:
        out = Path(out) if out else RESULTS_DIR / f"eval_{dt.date.today().isoformat()}.json"
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(report, indent=2))
    return report


def top_hits(dist: np.ndarray, gt_ref: np.ndarray, k: int = 10, inliers: np.ndarray | None = None
             ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every query's ``k`` best hits as (rank values, is the true copy, verified keypoints: 0
    where none or no ``inliers`` matrix), flattened: what a confidence is calibrated on
    (negative queries give only wrong hits)."""
    k = min(k, dist.shape[1])
    idx = np.argsort(dist, axis=1, kind="stable")[:, :k]
    ranks = np.take_along_axis(dist, idx, axis=1)
    found = np.isfinite(ranks)
    kp = np.zeros(idx.shape, np.int16) if inliers is None else np.take_along_axis(inliers, idx, axis=1)
    return ranks[found], (idx == gt_ref[:, None])[found], kp[found]


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
