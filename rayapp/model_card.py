"""The model card: what a weights file is, how it was trained, and how it scores on both edit
suites (``encoders.benchmark``), written from the weights' metadata and an eval JSON.

    python -m rayapp.model_card WEIGHTS EVAL.json --notes NOTES.md --out encoders/weights/MODEL_CARD.md
    python -m rayapp.model_card --readme README.md EVAL.json    # the README's table, regenerated
"""
from __future__ import annotations

import argparse
import json
import re
import time
from pathlib import Path

from rayapp.eval_cli import format_suites

README_START, README_END = "<!-- eval-table:start -->", "<!-- eval-table:end -->"


def _header(weights: str | Path) -> list[str]:
    from encoders.deephash import read_metadata
    meta = read_metadata(weights)
    extra = json.loads(meta.get("extra", "{}"))
    cfg = extra.get("config", {})
    size_mb = Path(weights).stat().st_size / 2**20
    return [
        f"# deephash model card: `{Path(weights).name}`", "",
        f"- Architecture: {meta['backbone']} backbone, dual branch (GeM global + attention-pooled "
        f"local features) -> MLP -> {meta['bits']}-bit hash head; input {meta['input_size']}x"
        f"{meta['input_size']} squash resize, normalised {meta.get('input_norm', 'imagenet')}; "
        f"file {size_mb:.1f} MB (safetensors, fp32).",
        f"- Training data: {', '.join(Path(d).name for d in extra.get('data', []))} "
        f"({extra.get('images', '?')} images).",
        f"- Steps: {extra.get('steps')} in this run, {extra.get('train_minutes')} min on "
        f"{'one GPU' if cfg.get('use_gpu') else 'the CPU'}; started from: {cfg.get('init') or 'random init'}; "
        f"EMA weights: {extra.get('ema', False)}; "
        f"seed {cfg.get('seed')}; format version {meta['version']}.",
        f"- Date: {time.strftime('%Y-%m-%d')}.", "",
        "## Hyperparameters", "", "```json", json.dumps(cfg, indent=2, sort_keys=True), "```", "",
    ]


def _suite_section(name: str, report: dict) -> list[str]:
    b = report["benchmark"]
    lines = [f"### Suite `{name}`", "",
             f"{b.get('refs')} refs ({b.get('distractors', '?')} distractors), "
             f"{b.get('positive_queries')} edited queries over {len(b.get('families', []))} families, "
             f"{b.get('negative_queries')} negative queries; originals "
             f"{', '.join(Path(o).name for o in b.get('originals', []))}, subset {b.get('subset')}, "
             f"seed {b.get('seed')}.", "", "| family | " + " | ".join(report["results"]) + " |",
             "|---|" + "---|" * len(report["results"])]
    specs = list(report["results"])
    fams = sorted(report["results"][specs[0]]["per_family_recall@1"])
    for f in fams:
        lines.append(f"| {f} | " + " | ".join(
            f"{report['results'][s]['per_family_recall@1'].get(f, 0):.2f}" for s in specs) + " |")
    return lines + [""]


def write_model_card(weights: str | Path, combined: dict | None, path: str | Path, notes: str = "") -> Path:
    """Model card (markdown): data, hyperparameters, seed, training time, date, and every suite's
    tables (headline side by side, then per-family recall@1 per suite)."""
    lines = _header(weights)
    if combined:
        lines += ["## Evaluation (test sources, never seen in training or validation)", "",
                  "Each query is searched as the service searches it (the views each row names, refs "
                  "stored with their centre crop unless `ref_views=none`), ranked as the row says, "
                  "ties pessimistic. `own` is the training suite's edits (encoders/augment.py); "
                  "`independent` is encoders/independent_edits.py, written apart from training on "
                  "albumentations and OpenCV; `augly` is encoders/augly_edits.py, the DISC21 kinds of "
                  "edit drawn with AugLy, which neither training nor the independent suite uses.", "",
                  format_suites(combined), "",
                  "### Per-family recall@1", ""]
        for name, report in combined["suites"].items():
            lines += _suite_section(name, report)
    if notes:
        lines += ["## Notes", "", notes, ""]
    Path(path).write_text("\n".join(lines))
    return Path(path)


def render_readme(readme: str | Path, combined: dict, source: str) -> None:
    """Replace the README's table between the eval-table markers with ``combined``'s."""
    text = Path(readme).read_text()
    if README_START not in text or README_END not in text:
        raise ValueError(f"{readme}: no {README_START} ... {README_END} block to replace")
    table = f"{README_START}\n<!-- generated from {source} by python -m rayapp.model_card -->\n" \
            f"{format_suites(combined)}\n{README_END}"
    pattern = re.escape(README_START) + ".*?" + re.escape(README_END)
    Path(readme).write_text(re.sub(pattern, lambda _: table, text, flags=re.S))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m rayapp.model_card", description=__doc__.splitlines()[0])
    ap.add_argument("weights", nargs="?", help="weights file the card describes")
    ap.add_argument("eval_json", help="a `neardup eval` JSON (both suites)")
    ap.add_argument("--notes", help="markdown file appended as the card's notes")
    ap.add_argument("--out", help="model card path")
    ap.add_argument("--readme", help="also regenerate this README's eval table")
    args = ap.parse_args(argv)
    combined = json.loads(Path(args.eval_json).read_text())
    if args.readme:
        render_readme(args.readme, combined, Path(args.eval_json).name)
    if args.weights and args.out:
        notes = Path(args.notes).read_text() if args.notes else ""
        write_model_card(args.weights, combined, args.out, notes)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
