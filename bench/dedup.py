"""Dedup quality and throughput: the shipped job on a collection with known duplicate groups,
against single linkage over the same matches in the same run, plus a synthetic index.

Quality: a benchmark folder (``encoders.benchmark``: ``refs/`` and ``queries/`` with
``ground_truth.csv``) becomes one collection: every ref (queried originals and distractors) and
every edited copy of a ref (the edited non-indexed photos are left out: they are the photos
pasted into copies, so they share content with them, and so are copies that show the same pasted
photo as another copy: ``_truth``). The job (``rayapp.dedup``) indexes it,
searches every stored image and groups the matches at ``--min-confidence``. Scored: pair
precision and recall over all pairs and over pairs that involve an edited copy, purity, the
largest group against its true size, and the same for connected components of the same
matches (what single linkage would have made).

Throughput: ``--synthetic N`` stores N random codes with side vectors in a fresh local index and
times the job over them (no keypoints: the edges are all misses, the work is the search),
beside the bare shard search of the same codes in batches (the floor), as a ratio.

    python -m bench.dedup --collection runs/bench-val/independent --synthetic 100000
"""
from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import os
import shutil
import tempfile
import threading
import time
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np

from bench.common import RESULTS_DIR, machine_info, write_json
from encoders.benchmark import PASTED_CSV

SUPPORTS = (0.0, 0.34, 0.5, 0.67)  # star_groups rules scored on the same matches


class PeakTreeMemory:
    """The largest resident bytes of this process and every descendant (the embedded Ray's GCS,
    raylet, workers and shard actors) seen while the block runs, sampled every ``interval_s``."""

    def __init__(self, interval_s: float = 0.5):
        self.interval_s, self.peak, self._stop = interval_s, 0, threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        from bench.soak import tree_rss
        while not self._stop.is_set():
            self.peak = max(self.peak, sum(b for b, _ in tree_rss(os.getpid()).values()))
            self._stop.wait(self.interval_s)

    def __enter__(self) -> "PeakTreeMemory":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def stage(collection: Path, out: Path) -> tuple[list[Path], dict[str, str]]:
    """Symlinks of the refs and the kept copies (``_truth``) under ``out``; the true label of
    each id."""
    for sub in ("refs", "copies"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    truth = _truth(collection)
    for name, source in truth.items():
        sub, folder = ("refs", "refs") if name == source else ("copies", "queries")
        os.symlink((collection / folder / name).resolve(), out / sub / name)
    return [out / "refs", out / "copies"], truth


def components(edges: list[tuple[str, str, float]]) -> list:
    """Connected components of the matches, as groups (single linkage)."""
    from rayapp.groups import Group
    parent: dict[str, str] = {}

    def root(x: str) -> str:
        parent.setdefault(x, x)
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x
    for a, b, _ in edges:
        parent[root(a)] = root(b)
    members = defaultdict(list)
    for x in list(parent):
        members[root(x)].append(x)
    return [Group(m[0], {x: 1.0 for x in m[1:]}) for m in members.values() if len(m) > 1]


def _oversize(groups: list, truth: dict[str, str]) -> int:
    """The most any group exceeds the true size of its majority label's group."""
    size = defaultdict(int)
    for label in truth.values():
        size[label] += 1
    worst = 0
    for g in groups:
        labels = [truth.get(i, i) for i in g.ids]
        major = max(set(labels), key=labels.count)
        worst = max(worst, len(g) - size[major])
    return worst


def _copy_pairs(edges: list[dict], truth: dict[str, str]) -> dict:
    """Precision and recall of the matches that involve an edited copy (a query)."""
    copies = {i for i, label in truth.items() if i != label}
    found = {(e["a"], e["b"]) for e in edges if e["a"] in copies or e["b"] in copies}
    right = {p for p in found if truth[p[0]] == truth[p[1]]}
    true = sum(1 for i in copies) + sum(  # copy-original pairs plus copy-copy pairs of one original
        n * (n - 1) // 2 for n in _count_by_label(copies, truth).values())
    return {"found": len(found), "right": len(right),
            "precision": round(len(right) / len(found), 4) if found else 1.0,
            "recall": round(len(right) / true, 4) if true else 1.0}


def _count_by_label(ids: set[str], truth: dict[str, str]) -> dict[str, int]:
    out = defaultdict(int)
    for i in ids:
        out[truth[i]] += 1
    return out


def index_collection(collection: Path, work: Path):
    """Stage and index the collection once -> (config of its index, true labels)."""
    from rayapp.config import load_config
    from rayapp.ingest import IngestOptions, run_ingest
    staged = (work / "collection").exists()
    sources, truth = ([work / "collection" / "refs", work / "collection" / "copies"], _truth(collection)) \
        if staged else stage(collection, work / "collection")
    cfg = load_config(overrides={"storage": {"index_dir": str(work / "index"), "namespace": "bench-dedup-q"}})
    t0 = time.perf_counter()
    run_ingest(cfg, [str(s) for s in sources], IngestOptions(progress=False))  # resumes a kept index
    return cfg, truth, time.perf_counter() - t0


def _truth(collection: Path) -> dict[str, str]:
    """id -> its source: every ref, and every edited copy of a ref except those that show a
    non-indexed photo another copy shows too (``pasted.csv``): two such copies share that
    photo's pixels without sharing a source, so neither answer about them would be wrong."""
    truth = {ref.name: ref.name for ref in (collection / "refs").iterdir()}
    pasted = collection / PASTED_CSV
    shown = [(r["query"], r["other_photo"]) for r in csv.DictReader(open(pasted))] if pasted.exists() else []
    uses = Counter(photo for _, photo in shown)
    shared = {query for query, photo in shown if uses[photo] > 1}
    for r in csv.DictReader(open(collection / "ground_truth.csv")):
        if r["ref"] and r["query"] not in shared:
            truth[r["query"]] = r["ref"]
    return truth


def quality(cfg, truth: dict[str, str], min_confidence: float, views: str, work: Path,
            overlap_check: bool | None = None) -> dict:
    """The job at one setting over the indexed collection, scored against the truth."""
    from rayapp.dedup import DedupOptions, _strength, run_dedup
    from rayapp.groups import pair_scores, star_groups
    import pyarrow.parquet as pq
    shutil.rmtree(work, ignore_errors=True)  # a fresh job, not a resumed one
    with PeakTreeMemory() as memory:
        report = run_dedup(cfg, DedupOptions(out_dir=str(work), min_confidence=min_confidence, views=views,
                                             progress=False, overlap_check=overlap_check))
    edges = pq.read_table(work / "edges.parquet").to_pylist()
    weighted = [(e["a"], e["b"], _strength(e, report.bits)) for e in edges]
    single = components(weighted)
    pixels = {r["id"]: r["pixels"] for f in (work / "parts").glob("*.images.parquet")
              for r in pq.read_table(f).to_pylist()}
    rules = {f"star_support_{sup:g}": star_groups(weighted, pixels, sup) for sup in SUPPORTS}
    look_alikes = pq.read_table(work / "look_alikes.parquet").to_pylist()
    return {"images": report.images, "min_confidence": min_confidence, "views": views,
            "overlap_check": DedupOptions(views=views, overlap_check=overlap_check).checks_overlap,
            "look_alikes_dropped": {"pairs": len(look_alikes),
                                    "true_copies": sum(truth.get(e["a"], e["a"]) == truth.get(e["b"], e["b"])
                                                       for e in look_alikes)},
            "matching_pairs": report.edges, "dedup_s": round(report.seconds, 1),
            "dedup_images_per_s": round(report.images_per_s, 1), "peak_rss_all_processes_bytes": memory.peak,
            "star_groups": {**pair_scores(report.groups, truth), "oversize": _oversize(report.groups, truth)},
            "single_linkage_same_matches": {**pair_scores(single, truth), "oversize": _oversize(single, truth)},
            "rules_same_matches": {name: {**pair_scores(g, truth), "oversize": _oversize(g, truth)}
                                   for name, g in rules.items()},
            "pairs_with_an_edited_copy": _copy_pairs(edges, truth)}


def throughput(n: int, work: Path, batch: int = 256) -> dict:
    """The job over ``n`` random stored codes, and the bare batched search of the same codes."""
    import ray
    from rayapp.cluster import ensure_shards, kill_shards
    from rayapp.config import load_config
    from rayapp.dedup import DedupOptions, run_dedup
    from rayapp.router import ShardRouter
    from shards.vectors import records
    cfg = load_config(overrides={"storage": {"index_dir": str(work / "synthetic"), "keypoints": False,
                                             "ref_views": [], "namespace": "bench-dedup"}})
    rng = np.random.default_rng(0)
    shards = ensure_shards(cfg, bits=128, vector_bytes=128)
    router = ShardRouter(shards, timeout_s=120)
    codes = rng.integers(0, 256, (n, 16), dtype=np.uint8)
    vectors = rng.integers(-127, 128, (n, 128), dtype=np.int8)
    for s in range(0, n, 20_000):
        router.add([f"s{i:09d}" for i in range(s, min(n, s + 20_000))],
                   records(codes[s:s + 20_000], vectors[s:s + 20_000]))
    t0 = time.perf_counter()
    for s in range(0, n, batch):
        router.search(codes[s:s + batch], 21, vectors=vectors[s:s + batch])
    floor = time.perf_counter() - t0
    with PeakTreeMemory() as memory:
        report = run_dedup(cfg, DedupOptions(out_dir=str(work / "synthetic-job"), report=False, batch=batch,
                                             views="stored"))
    rss = sum(ray.get([h.stats.remote() for h in shards])[i]["memory_bytes"] for i in range(len(shards)))
    kill_shards(cfg)
    return {"stored_codes": n, "dedup_s": round(report.seconds, 1),
            "dedup_images_per_s": round(report.images_per_s, 1),
            "bare_search_s": round(floor, 1), "bare_search_images_per_s": round(n / floor, 1),
            "ratio_to_bare_search": round(report.seconds / floor, 2), "shard_memory_bytes": rss,
            "peak_rss_all_processes_bytes": memory.peak}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.dedup", description=__doc__.splitlines()[0])
    ap.add_argument("--collection", type=Path, help="a benchmark folder (refs/, queries/, ground_truth.csv)")
    ap.add_argument("--min-confidence", type=float, nargs="+", default=[0.99])
    ap.add_argument("--views", nargs="+", default=["full", "stored"], choices=["full", "stored"])
    ap.add_argument("--overlap-check", nargs="+", default=["default"], choices=["default", "on", "off"],
                    help="the job's look-alike check (rayapp.dedup_overlap); several: side by side")
    ap.add_argument("--calibration", nargs="+", default=[None], metavar="PATH",
                    help="confidence curves files to score side by side (default: the bundled ones)")
    ap.add_argument("--synthetic", type=int, default=0, help="also time the job over N random codes")
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--work", type=Path, default=None, help="keep the staged collection and its index here (re-used)")
    args = ap.parse_args(argv)
    from rayapp.cluster import init_ray
    init_ray()
    work = args.work or Path(tempfile.mkdtemp(prefix="bench-dedup-"))
    work.mkdir(parents=True, exist_ok=True)
    result = {"machine": machine_info(), "quality": [], "throughput": None}
    try:
        if args.collection:
            from rayapp.cluster import kill_shards
            cfg, truth, seconds = index_collection(args.collection, work)
            result["collection"] = {"path": str(args.collection), "images": len(truth), "index_s": round(seconds, 1)}
            checks = {"default": None, "on": True, "off": False}
            settings = [(mc, v, c, checks[o]) for c in args.calibration for mc in args.min_confidence
                        for v in args.views for o in args.overlap_check]
            for i, (mc, views, curves, check) in enumerate(settings):
                with_curves = dataclasses.replace(cfg, encoder=dataclasses.replace(cfg.encoder, calibration=curves))
                result["quality"].append({"calibration": curves or "bundled",
                                          **quality(with_curves, truth, mc, views, work / f"job{i}", check)})
                print(json.dumps(result["quality"][-1], indent=1), flush=True)
            kill_shards(cfg)
        if args.synthetic:
            result["throughput"] = throughput(args.synthetic, work)
            print(json.dumps(result["throughput"], indent=1), flush=True)
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    out = args.out or RESULTS_DIR / f"dedup_{time.strftime('%Y-%m-%d')}.json"
    write_json(out, result)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
