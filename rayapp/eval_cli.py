"""`neardup eval`: build a benchmark per edit suite, score encoder specs on each side by side,
and fit or check the confidence curves; one JSON per run in bench/results.

    neardup eval --originals DIR... --subset 1/2 --workdir runs/bench-test --encoders SPEC...
    python -m rayapp.eval_cli --refs DIR --queries DIR --ground-truth gt.csv --encoders deephash pdq
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
from pathlib import Path

import numpy as np

from encoders.benchmark import EDIT_SUITES, SUITES, add_distractors, build_benchmark
from rayapp.evaluate import RESULTS_DIR, evaluate, fmt, git_rev, parse_spec
from shards.verify import BONUS_FROM, BONUS_FULL, VERIFY_BONUS, VERIFY_DEPTH, VERIFY_MORE


def ranked_by(row: dict) -> str:
    """What a report row's hits were ranked by: "vector + verify top 20 (40 unless confirmed)"."""
    depth, more = row.get("verify"), row.get("verify_more")
    deeper = f" ({depth + more} unless confirmed)" if depth and more else ""
    return row.get("rank", "hamming") + (f" + verify top {depth}{deeper}" if depth else "")


def format_table(report: dict) -> str:
    """Markdown table of the headline metrics (for the model card)."""
    lines = ["| encoder | bits | ranked by | mAP@100 | µAP | recall@1 | worst family (R@1) | img/s |",
             "|---|---|---|---|---|---|---|---|"]
    for spec, r in report["results"].items():
        worst = r["worst_family"]
        ranked = ranked_by(r)
        lines.append(f"| {spec} | {r['bits']} | {ranked} | {r['mAP@100']:.3f} | "
                     f"{r['muAP']:.3f} | {r['recall@1']:.3f} | "
                     f"{worst} ({r['per_family_recall@1'].get(worst, 0):.2f}) | {r['encode_img_per_s']:.0f} |")
    return "\n".join(lines)


DEFAULT_SPECS = ["deephash:tta=flip_turns", "deephash:tta=flip_turns,verify=0",
                 "deephash:tta=flip_turns,ref_views=none,verify=0",
                 "deephash:tta=flip_turns,ref_views=none,content=off,verify=0",
                 "deephash:tta=flip_rot90,content=frame,verify=0",
                 "deephash:ref_views=none,content=off,rank=hamming,verify=0",
                 "pdq", "pdq:verify=0", "phash"]


CODE_SPEC = "deephash:tta=none,content=off,rank=hamming,verify=0"


def _pooled(pairs: dict, spec: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A spec's labelled top hits (rank values, is the true copy, verified keypoints) over every suite."""
    got = [p[spec] for p in pairs.values() if spec in p]
    if not got:
        raise SystemExit(f"neardup: error: --encoders has no spec {spec!r} to calibrate")
    return tuple(np.concatenate(column) for column in zip(*got))


def save_pairs(pairs: dict, path: Path) -> Path:
    """Every suite's and spec's labelled top hits in one ``.npz`` (keys ``suite|spec|field``), so
    confidence curves can be refitted without searching again."""
    arrays = {f"{suite}|{spec}|{field}": column for suite, by_spec in pairs.items()
              for spec, hits in by_spec.items() for field, column in zip(("rank", "correct", "inliers"), hits)}
    np.savez_compressed(path, **arrays)
    return path


def load_pairs(paths: list[str]) -> dict:
    """The ``save_pairs`` files merged back into {suite: {spec: (rank, correct, inliers)}}."""
    pairs: dict = {}
    for path in paths:
        with np.load(path) as data:
            for key in data.files:
                suite, spec, field = key.rsplit("|", 2)
                pairs.setdefault(suite, {}).setdefault(spec, {})[field] = data[key]
    return {suite: {spec: (f["rank"], f["correct"].astype(bool), f["inliers"]) for spec, f in by_spec.items()}
            for suite, by_spec in pairs.items()}


def _pipelines(args) -> dict[str, str]:
    return {"image": args.encoders[0], **({"code": args.code_spec} if args.code_spec in args.encoders else {})}


def fit_curve(ranks: np.ndarray, correct: np.ndarray, inliers: np.ndarray) -> tuple:
    """One pipeline's curve, how it reads keypoints chosen by cross-validation when its hits
    were verified -> (the curve, each reading's cross-validated Brier score)."""
    from encoders import calibration
    if not inliers.any():
        return calibration.fit(ranks, correct), {}
    rule = [BONUS_FROM, BONUS_FULL, VERIFY_BONUS]
    reading, scores = calibration.choose_reading(ranks, correct, inliers, BONUS_FULL, rule)
    return calibration.fit(ranks, correct, inliers, reading), scores


def _calibrate(args, pairs: dict) -> dict:
    """Fit and save one curve per pipeline; report each curve's error on the data it was fit on."""
    from encoders import calibration
    from encoders.weights_files import model_id
    spec_weights = parse_spec(args.encoders[0])[1].get("weights")
    fitted = {name: fit_curve(*_pooled(pairs, spec)) for name, spec in _pipelines(args).items()}
    curves = {name: curve for name, (curve, _) in fitted.items()}
    calibration.save(curves, model_id(spec_weights), Path(args.calibrate),
                     {"specs": _pipelines(args), "suites": list(pairs), "date": dt.date.today().isoformat()})
    return {name: {"spec": spec, "reading_cv_brier": fitted[name][1],
                   **calibration.calibration_error(curves[name], *_pooled(pairs, spec))}
            for name, spec in _pipelines(args).items()}


def _confidence_error(args, pairs: dict) -> dict:
    """Each pipeline's curve from --confidence against the observed precision here, per suite."""
    from encoders import calibration
    data = json.loads(Path(args.confidence).read_text())
    out = {}
    for name, spec in _pipelines(args).items():
        curve = calibration.Curve(**data["curves"][name])
        out[name] = {suite: calibration.calibration_error(curve, *p[spec]) for suite, p in pairs.items() if spec in p}
    return out


def format_suites(combined: dict) -> str:
    """Markdown table, one row per encoder spec, each suite's headline metrics side by side."""
    suites = list(combined["suites"])
    head = "| encoder | ranked by | " + " | ".join(
        f"{s}: mAP@100 | {s}: µAP | {s}: recall@1 | {s}: worst family (R@1)" for s in suites) + " |"
    lines = [head, "|---|---|" + "---|---|---|---|" * len(suites)]
    first = combined["suites"][suites[0]]["results"]
    for spec, r in first.items():
        ranked = ranked_by(r)
        cells = []
        for s in suites:
            x = combined["suites"][s]["results"].get(spec)
            if x is None:
                cells.append("— | — | — | —")
                continue
            w = x["worst_family"]
            worst = f"{w} ({x['per_family_recall@1'].get(w, 0):.2f})" if w else "—"
            cells.append(f"{fmt(x['mAP@100'])} | {fmt(x['muAP'])} | {fmt(x['recall@1'])} | {worst}")
        lines.append(f"| {spec} | {ranked} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _suite_benchmark(args, suite: str) -> tuple[Path, Path, Path, dict]:
    """(refs, queries, ground truth, benchmark info) of one suite, built under --workdir/SUITE."""
    work = Path(args.workdir) / suite
    gt = work / "ground_truth.csv"
    if not gt.exists():
        info = build_benchmark(args.originals, work, args.n_refs, args.n_queries, args.n_negatives,
                               args.n_distractors, args.seed, suite=suite, subset=args.subset)
    else:
        info = json.loads((work / "benchmark.json").read_text()) if (work / "benchmark.json").exists() else {}
    if args.extra_distractors:
        info = {**info, "extra_distractors": add_distractors(work / "refs", args.extra_distractors,
                                                             args.n_extra_distractors, args.seed)}
    return work / "refs", work / "queries", gt, info


def main(argv: list[str] | None = None) -> int:
    """CLI: build benchmarks from --originals (one per --suite, under --workdir) or score a given
    --refs/--queries/--ground-truth; writes one JSON with every suite's report."""
    ap = argparse.ArgumentParser(prog="neardup eval", description=__doc__.splitlines()[0])
    ap.add_argument("--originals", nargs="+", help="folder(s) of originals to build a benchmark from")
    ap.add_argument("--suite", nargs="+", default=list(EDIT_SUITES), choices=list(SUITES),
                    help="suites to build and score, side by side (default: own and independent; "
                         "augly: the DISC21 kinds of edit drawn by AugLy, needs the eval extra; "
                         "lookalike: halves of photos, hard negatives for --calibrate)")
    ap.add_argument("--subset", help="K/N: every N-th source file from the K-th (validation/test halves)")
    ap.add_argument("--workdir", default="runs/eval-bench", help="where the built benchmarks go (one folder per suite)")
    ap.add_argument("--refs")
    ap.add_argument("--queries")
    ap.add_argument("--ground-truth")
    ap.add_argument("--encoders", nargs="+", default=DEFAULT_SPECS,
                    help="encoder specs, name[:opt=value,...] (opts: tta, rank=vector|weighted|hamming, "
                         "content=on|frame|off (frame: flat frames only, no pasted-photo finder), "
                         "flip_cost, rot_cost, half_turn_cost, content_cost, outside_cost, upright_cost, tilt_cost, "
                         "negative_cost, "
                         "ref_views=none|center70[+top_left70...], ref_view_cost, "
                         f"verify=N (spatially verify the top N; default {VERIFY_DEPTH}, 0 = off), "
                         f"verify_more=N (verify N more when no hit is confirmed; default {VERIFY_MORE}), "
                         "index=KIND (the shards' index, default the service's; flat: exact Hamming candidates), weights); "
                         "the default gives the model card's table")
    ap.add_argument("--n-refs", type=int, default=450)
    ap.add_argument("--n-queries", type=int, default=900)
    ap.add_argument("--n-negatives", type=int, default=280)
    ap.add_argument("--n-distractors", type=int, default=250)
    ap.add_argument("--extra-distractors", nargs="+", metavar="DIR",
                    help="also store photos from these folders (never the originals' own) as refs no query "
                         "copies, to search a collection of a user's size")
    ap.add_argument("--n-extra-distractors", type=int, default=1500)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--k-micro", type=int, default=10)
    ap.add_argument("--out", help="JSON path (default bench/results/eval_<date>.json)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1 = speed per CPU core)")
    ap.add_argument("--calibrate", metavar="PATH",
                    help="fit confidence curves on these benchmarks (pooled over suites) and write them to "
                         "PATH: 'image' from the first --encoders spec, 'code' from --code-spec")
    ap.add_argument("--code-spec", default=CODE_SPEC, help="the spec that ranks as a hex-code query does")
    ap.add_argument("--confidence", metavar="PATH",
                    help="score these benchmarks' hits against the curves in PATH (calibration error)")
    ap.add_argument("--pairs-out", metavar="PATH",
                    help="also write every spec's labelled top hits (rank value, copy or not, keypoints) "
                         "to PATH (.npz), to refit confidence curves later")
    ap.add_argument("--from-pairs", nargs="+", metavar="NPZ",
                    help="skip the search: fit (--calibrate) or check (--confidence) the curves on hits "
                         "saved by --pairs-out (specs from --encoders and --code-spec)")
    args = ap.parse_args(argv)
    import torch
    torch.set_num_threads(args.threads)
    if args.from_pairs:
        if not (args.calibrate or args.confidence):
            ap.error("--from-pairs needs --calibrate PATH or --confidence PATH")
        benches = {}
    elif args.originals:
        benches = {s: _suite_benchmark(args, s) for s in args.suite}
    elif args.refs and args.queries and args.ground_truth:
        benches = {"given": (Path(args.refs), Path(args.queries), Path(args.ground_truth), {})}
    else:
        ap.error("give --originals DIR, or all of --refs, --queries and --ground-truth")
    reports, pairs = {}, load_pairs(args.from_pairs) if args.from_pairs else {}
    for suite, (refs, queries, gt, info) in benches.items():
        print(f"== suite {suite}", flush=True)
        pairs[suite] = {}
        reports[suite] = evaluate(args.encoders, refs, queries, gt, args.k_micro, write=False,
                                  extra={**info, "threads": args.threads}, pairs=pairs[suite])
    combined = {"date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
                "git_rev": git_rev(), "machine": {"platform": platform.platform(), "cpus": os.cpu_count()},
                "suites": reports}
    if args.pairs_out:
        save_pairs(pairs, Path(args.pairs_out))
    if args.calibrate:
        combined["calibration"] = _calibrate(args, pairs)
    if args.confidence:
        combined["confidence"] = _confidence_error(args, pairs)
    out = Path(args.out) if args.out else RESULTS_DIR / f"eval_{dt.date.today().isoformat()}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(combined, indent=2))
    if reports:
        print(format_suites(combined))
    return 0



if __name__ == "__main__":
    raise SystemExit(main())
