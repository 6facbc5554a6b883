"""How often the query views hold the photo pasted into a picture, with the true box known.

    python -m bench.paste_finder --photos DIR            # -> bench/results/paste_finder_<date>.json
    python -m bench.paste_finder --photos DIR --n 20     # smoke size

Each trial shrinks one photo to 40-70% of another's side and pastes it there (the independent
edit suite's ``paste_into``, ``encoders.independent_composites``), both at most 320 px on the long
side as the eval's benchmarks are. A trial counts as found when a crop the query searches has an
intersection over union of at least 0.7 with the true box. Three rules run on the same trials:
the frame's box first (the pasted-photo finder only when the frame finder does not fire; the
baseline), both finders' boxes when they differ, and those plus the pasted-photo finder's
runners-up (``encoders.tta.PASTE_BOXES``; what ``encoders.tta.query_variants`` searches).
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image

from bench import common
from encoders.independent_composites import paste_into_box
from encoders.tta import SAME_BOX_IOU, box_iou, content_boxes

FOUND_IOU = 0.7


def _load(path: Path) -> np.ndarray:
    img = Image.open(path).convert("RGB")
    img.thumbnail((320, 320))
    return np.asarray(img)


def _outcome(boxes: list, truth: tuple) -> str:
    if not boxes:
        return "none"
    return "found" if any(box_iou(b, truth) >= FOUND_IOU for b in boxes) else "wrong"


def trial(img: np.ndarray, other: np.ndarray, rng: np.random.Generator) -> dict[str, str]:
    """One pasted picture -> each rule's outcome: found, wrong (boxes, none right) or none."""
    out, truth = paste_into_box(img, rng, [other])
    found = content_boxes(Image.fromarray(out))
    both = [b for b in (found.frame, found.pasted) if b is not None]
    return {"frame_first": _outcome(both[:1], truth), "both_boxes": _outcome(both, truth),
            "with_runners_up": _outcome(both + found.more, truth)}


def run(argv: list[str] | None = None) -> Path:
    """Run the trials and write ``paste_finder_<date>.json`` -> its path."""
    ap = argparse.ArgumentParser(prog="python -m bench.paste_finder", description=__doc__.splitlines()[0])
    ap.add_argument("--photos", required=True, help="folder of photos (validation sources)")
    ap.add_argument("--n", type=int, default=300)
    ap.add_argument("--seed", type=int, default=5)
    ap.add_argument("--out-dir", default=str(common.REPO_ROOT / "bench" / "results"))
    args = ap.parse_args(argv)
    paths = sorted(p for p in Path(args.photos).iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    rng = np.random.default_rng(args.seed)
    counts = {rule: {"found": 0, "wrong": 0, "none": 0} for rule in ("frame_first", "both_boxes", "with_runners_up")}
    for _ in range(args.n):
        a, b = rng.choice(len(paths), 2, replace=False)
        for rule, outcome in trial(_load(paths[a]), _load(paths[b]), rng).items():
            counts[rule][outcome] += 1
    result = {"machine": common.machine_info(), "photos": args.photos, "trials": args.n, "seed": args.seed,
              "found_iou": FOUND_IOU, "same_box_iou": SAME_BOX_IOU, **counts,
              "found_ratio_both_to_frame_first": round(counts["both_boxes"]["found"]
                                                       / max(1, counts["frame_first"]["found"]), 3),
              "found_ratio_runners_up_to_both": round(counts["with_runners_up"]["found"]
                                                      / max(1, counts["both_boxes"]["found"]), 3)}
    print({rule: counts[rule] for rule in counts}, flush=True)
    return common.write_json(Path(args.out_dir) / f"paste_finder_{common.today()}.json", result)


main = common.main_for(run)


if __name__ == "__main__":
    raise SystemExit(main())
