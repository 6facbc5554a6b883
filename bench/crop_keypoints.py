"""Would verifying a crop view's hit with the crop's own keypoints confirm more copies?

    python -m bench.crop_keypoints --bench runs/bench-val/independent   # a built eval benchmark

An image query is verified with the keypoints of the whole query, as given and mirrored, even
when the hit matched through the crop of a framed or pasted photo. In a screenshot or a
picture with a photo pasted into it, most of the whole query's keypoints lie outside the photo,
and the photo's own are found at the whole query's scale, so a true hit may verify with too few
inliers to earn the credit. For each edited query of some families this compares, against its
true original, the inliers of the whole query's keypoints with the best over the crops the
query searches (``encoders.tta.content_boxes``; each crop's keypoints as given and mirrored).
A count of ``CONFIRMED`` or more earns the full credit (``shards.verify.BONUS_FULL``).
"""
from __future__ import annotations

import argparse
import csv
from pathlib import Path

import numpy as np
from PIL import Image

from bench import common
from encoders.keypoints import extract, extract_query_views
from encoders.tta import content_boxes, searched_boxes
from shards.verify import BONUS_FULL, inliers

CONFIRMED = BONUS_FULL
FAMILIES = ("social_screenshot", "paste_into", "overlay", "combo_crop_text_jpeg", "chain_2_4", "stripes")


def one(query: Image.Image, ref: Image.Image) -> dict:
    """The inliers of the whole query and of its best crop against the original's keypoints."""
    stored = extract(ref)
    crops = searched_boxes(content_boxes(query))
    counts = [inliers(b, stored) for b in extract_query_views(query, crops)]
    return {"whole": max(counts[:2]), "crop": max([0] + counts[2:]), "crops": len(crops)}


def run(argv: list[str] | None = None) -> Path:
    """Score the families' first ``--per-family`` queries and write ``crop_keypoints_<date>.json``."""
    ap = argparse.ArgumentParser(prog="python -m bench.crop_keypoints", description=__doc__.splitlines()[0])
    ap.add_argument("--bench", required=True, help="an eval benchmark folder (refs/, queries/, ground_truth.csv)")
    ap.add_argument("--per-family", type=int, default=30)
    ap.add_argument("--out-dir", default=str(common.RESULTS_DIR))
    args = ap.parse_args(argv)
    root = Path(args.bench)
    with open(root / "ground_truth.csv", newline="") as f:
        truth = [r for r in csv.DictReader(f) if r["ref"]]
    families = {}
    for fam in FAMILIES:
        rows = [one(Image.open(root / "queries" / r["query"]).convert("RGB"),
                    Image.open(root / "refs" / r["ref"]).convert("RGB"))
                for r in [t for t in truth if t["family"] == fam][:args.per_family]]
        whole, crop = np.array([r["whole"] for r in rows]), np.array([r["crop"] for r in rows])
        with_crops = [r["crop"] for r in rows if r["crops"]]
        families[fam] = {"queries": len(rows), "with_a_crop": len(with_crops),
                         "confirmed_whole": int((whole >= CONFIRMED).sum()),
                         "confirmed_whole_or_crop": int((np.maximum(whole, crop) >= CONFIRMED).sum()),
                         "median_whole": float(np.median(whole)),
                         "median_crop_where_any": float(np.median(with_crops)) if with_crops else None}
        print(fam, families[fam], flush=True)
    result = {"machine": common.machine_info(), "bench": str(root), "confirmed_at": CONFIRMED, "families": families}
    return common.write_json(Path(args.out_dir) / f"crop_keypoints_{common.today()}.json", result)


main = common.main_for(run)


if __name__ == "__main__":
    raise SystemExit(main())
