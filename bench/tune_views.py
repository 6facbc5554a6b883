"""Pick the query views' prior costs and the verification credit on a validation benchmark.

Each benchmark is encoded once, as the service encodes (refs through ingest's stages,
``rayapp.eval_search.encode_refs``; queries' views through ``rayapp.searcher.encode_queries``),
with every view the service can search (all eight symmetries, the framed or pasted photo's crop
and its mirror; refs as given and as their stored crops), and the side-vector distances are kept
per (query view, stored view). A grid of hundreds of view sets and costs cannot each be stored
and searched, so this keeps its own cached dense scorer, built from the service's own rules
(``encoders.tta.costs``, ``shards.verify.verify_bonus``): the minimum over views of distance plus
cost, the top ``VERIFY_DEPTH`` verified by keypoints (cached per pair), mAP@100 and µAP. It
scores every ref (no shard re-rank depth or index candidates), so check the chosen row with
``neardup eval``, which searches through the service's shards and ``Searcher``. Run it on
validation sources only:

    python -m bench.tune_views --workdir runs/bench-val --weights W.safetensors --out bench/results/tune.json
"""
from __future__ import annotations

import argparse
import itertools
import json
from pathlib import Path

import numpy as np

from encoders.decode import load_image
from encoders.registry import get_encoder
from encoders.tta import costs, is_mirrored, view_names
from rayapp.config import QueryConfig
from rayapp.eval_search import encode_refs
from rayapp.evaluate import load_benchmark, score_codes
from rayapp.searcher import encode_queries
from shards.vectors import vector_distances
from shards.verify import inliers, verify_bonus

VERIFY_DEPTH = QueryConfig().verify  # hits verified per query, as the service does
REF_VIEWS = ("center70", "top_left70", "top_right70", "bottom_left70", "bottom_right70")
MODES = {"flip_rot90": ("original", "flip", "rot90", "rot270"),
         "flip_turns": ("original", "flip", "rot90", "rot270", "rot180", "flip+rot180"),
         "d4": ("original", "flip", "rot90", "rot270", "rot180", "flip+rot180", "flip+rot90", "flip+rot270")}


class Encoded:
    """One benchmark encoded once: per-view distance matrices, keypoints, truth."""

    def __init__(self, work: Path, weights: str | None):
        bench = load_benchmark(work / "refs", work / "queries", work / "ground_truth.csv")
        self.ref_paths, self.q_paths = bench["ref_paths"], bench["q_paths"]
        self.gt, self.families = bench["gt_ref"], bench["families"]
        enc = get_encoder("deephash", **({"weights": weights} if weights else {}))
        refs = encode_refs(enc, self.ref_paths, REF_VIEWS, keypoints=True)
        r_vec = np.concatenate([refs["vector"][:, None], refs["view_vectors"]], axis=1)
        self.names, q_vec, valid, self.q_kp = _queries(enc, self.q_paths)
        self.r_kp = refs["keypoints"]
        self.d = {}
        for v, name in enumerate(self.names):
            for j in range(r_vec.shape[1]):
                d = vector_distances(q_vec[:, v], r_vec[:, j], enc.bits)
                d[~valid[:, v]] = np.inf
                self.d[name, j] = d
        self._inl: dict[tuple[int, int, int], int] = {}

    def inliers(self, q: int, r: int, block: int) -> int:
        key = (q, r, block)
        if key not in self._inl:
            self._inl[key] = inliers(self.q_kp[q, block], self.r_kp[r])
        return self._inl[key]

    def score(self, views: tuple[str, ...], cost: dict, ref_cost: float, credit: tuple,
              ref_views: int = 1) -> dict:
        names = [n for n in self.names if n in views or (cost["content"] is not None and "content" in n)
                 or (n == "outside" and cost.get("outside") is not None)]
        c = costs(names, cost["flip"], cost["rot"], cost["content"] or 0.0, cost["half"],
                  cost.get("outside") or 0.0)
        best = np.full(self.d[names[0], 0].shape, np.inf, np.float32)
        view = np.zeros(best.shape, np.int16)
        for v, name in enumerate(names):
            for j in range(1 + ref_views):
                d = self.d[name, j] + c[v] + (ref_cost if j else 0.0)
                view[d < best] = v
                best = np.minimum(best, d)
        mirrored = np.array([is_mirrored(n) for n in names])[view]
        first, full, bonus = credit
        out = best.copy()
        for q, row in enumerate(best):
            for r in np.argsort(row, kind="stable")[:VERIFY_DEPTH]:
                n = max(self.inliers(q, r, b) for b in range(2 if mirrored[q, r] else 1))
                out[q, r] -= verify_bonus(n, first, full, bonus)
        return score_codes(out, 128, self.gt, self.families)


def _queries(enc, paths: list[Path], batch: int = 128) -> tuple:
    """The queries' views as the service encodes them (``encode_queries``, mode d4 with the
    content views), laid out over every view name -> (names, side vectors (n, views, d), valid
    (n, views): False where a query has no such view, keypoints (n, 2, K) as given and mirrored)."""
    cfg = QueryConfig(tta="d4", content=True)
    names = list(view_names("d4", True))
    col = {name: j for j, name in enumerate(names)}
    vectors = np.zeros((len(paths), len(names), enc.vector_bytes), np.int8)
    valid = np.zeros((len(paths), len(names)), bool)
    keypoints = []
    for i in range(0, len(paths), batch):
        for qi, q in enumerate(encode_queries(enc, [load_image(p) for p in paths[i:i + batch]], cfg), start=i):
            cols = [col[name] for name in q.names]
            vectors[qi, cols], valid[qi, cols] = q.vectors, True
            keypoints.append(q.keypoints)
    return names, vectors, valid, np.stack(keypoints)


def grid() -> list[dict]:
    """Every (views, costs, credit) combination tried."""
    out = []
    for mode, flip, rot, half, content in itertools.product(
            MODES, (0.25, 0.5, 1.0), (1.5, 2.5, 3.5), (1.5, 2.5, 3.5), (None, 0.25, 0.5, 1.0)):
        if mode == "flip_rot90" and half != 2.5:
            continue
        out.append({"mode": mode, "flip": flip, "rot": rot, "half": half, "content": content,
                    "outside": None, "ref_cost": 0.5, "ref_views": 1, "credit": (10, 40, 4.0)})
    return out


def edges() -> list[dict]:
    """Past the first grid's edges (turn and mirror costs, the crop views' cost, the credit),
    one stored view, the outside view at its best."""
    out = []
    for flip, rot, half, content, credit in itertools.product(
            (1.0, 1.5), (3.5, 5.0), (3.5, 5.0), (1.0, 1.5), ((8, 30, 6.0), (6, 25, 6.0), (8, 30, 8.0), (6, 30, 8.0))):
        out.append({"mode": "flip_turns", "flip": flip, "rot": rot, "half": half, "content": content,
                    "outside": 0.5, "ref_cost": 1.0, "ref_views": 1, "credit": credit})
    return out


def stages() -> list[list]:
    """Refinements tried one after another, each around the best row so far: the outside view,
    stored corner crops and their cost, then the verification credit."""
    return [
        [lambda b, c=c: {**b, "outside": c} for c in (0.5, 1.0, 2.0, 3.0)],
        [lambda b, v=v, c=c: {**b, "ref_views": v, "ref_cost": c}
         for v, c in ((1, 0.25), (1, 1.0), (5, 0.5), (5, 1.0))],
        [lambda b, cr=cr: {**b, "credit": cr} for cr in itertools.product((8, 10, 14), (30, 40, 60), (3.0, 4.0, 6.0))],
    ]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.tune_views", description=__doc__.splitlines()[0])
    ap.add_argument("--workdir", required=True, help="benchmark root with one folder per suite")
    ap.add_argument("--suite", nargs="+", default=["independent", "own"])
    ap.add_argument("--objective", default="independent", help="the suite whose mAP@100 + µAP picks")
    ap.add_argument("--weights")
    ap.add_argument("--grid", choices=("full", "edges"), default="full",
                    help="full: the grid then staged refinements; edges: past the full grid's edges")
    ap.add_argument("--out", required=True)
    args = ap.parse_args(argv)
    import torch
    torch.set_num_threads(1)
    bench = {s: Encoded(Path(args.workdir) / s, args.weights) for s in args.suite}
    def run(g: dict) -> dict:
        res = {s: b.score(MODES[g["mode"]], g, g["ref_cost"], g["credit"], g["ref_views"])
               for s, b in bench.items()}
        row = {**g, **{s: {k: r[k] for k in ("mAP@100", "muAP", "recall@1", "worst_family")}
                       for s, r in res.items()}}
        row["objective"] = round(res[args.objective]["mAP@100"] + res[args.objective]["muAP"], 4)
        print(json.dumps(row), flush=True)
        return row

    if args.grid == "edges":
        rows = sorted((run(g) for g in edges()), key=lambda r: -r["objective"])
    else:
        rows = sorted((run(g) for g in grid()), key=lambda r: -r["objective"])
    for stage in (stages() if args.grid == "full" else []):
        best = {k: v for k, v in rows[0].items() if k in grid()[0]}
        rows = sorted(rows + [run(make(best)) for make in stage], key=lambda r: -r["objective"])
    Path(args.out).write_text(json.dumps({"weights": args.weights, "workdir": args.workdir,
                                          "objective": args.objective, "rows": rows}, indent=2))
    for r in rows[:10]:
        print(r["objective"], {k: r[k] for k in ("mode", "flip", "rot", "half", "content", "outside",
                                                 "ref_views", "ref_cost", "credit")})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
