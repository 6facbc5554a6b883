"""Look-alike hard negatives: the other half of the same photo.

Two shots of one room, one floor or one shelf share light, colour and texture without sharing
a pixel, and repeated texture (tiles, carpet, brick, grass) can even line up under one
geometry, so a search may call them copies with confidence. The edit suites hold no such pairs:
their negatives are unrelated photos. This suite builds them from any folder of photos: each
of ``n_pairs`` photos is cut in two halves (side by side or one above the other, at random),
one half is stored and the other is a query whose right answer is "no copy"; ``n_distractors``
more photos are stored whole, so hits compete as in the other suites. The benchmark has the
same layout as ``encoders.benchmark``'s (every query is a negative, family ``lookalike``), and
its labelled hits join the confidence curves' fit (``neardup eval --suite ... lookalike
--calibrate``), so a curve learns how sure a look-alike's hit can look.
"""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
from PIL import Image

FAMILY = "lookalike"


def halves(image: Image.Image, vertical_cut: bool) -> tuple[Image.Image, Image.Image]:
    """The two halves of ``image``: left and right (``vertical_cut``), else top and bottom."""
    w, h = image.size
    if vertical_cut:
        return image.crop((0, 0, w // 2, h)), image.crop((w - w // 2, 0, w, h))
    return image.crop((0, 0, w, h // 2)), image.crop((0, h - h // 2, w, h))


def build_lookalikes(files: list[Path], out_dir: str | Path, n_pairs: int, n_distractors: int,
                     seed: int) -> tuple[list[tuple], list[tuple], dict]:
    """Write refs/ (stored halves ``h*``, whole distractors ``r*``) and queries/ (the other
    halves) under ``out_dir`` from ``files`` -> (ground-truth rows, each query's edit, the
    counts), which ``encoders.benchmark`` writes as any suite's tables."""
    from encoders.decode import load_image
    if len(files) < n_pairs + n_distractors:
        raise ValueError(f"{len(files)} images, need {n_pairs + n_distractors} (pairs+distractors)")
    rng = np.random.default_rng(seed)
    order = [files[i] for i in rng.permutation(len(files))]
    out = Path(out_dir)
    (out / "refs").mkdir(parents=True, exist_ok=True)
    (out / "queries").mkdir(parents=True, exist_ok=True)
    for i, f in enumerate(order[n_pairs:n_pairs + n_distractors]):
        shutil.copyfile(f, out / "refs" / f"r{i:05d}{f.suffix.lower()}")
    rows, edits = [], []
    for i, f in enumerate(order[:n_pairs]):
        cut = bool(rng.integers(0, 2))
        stored, query = halves(load_image(f, work_side=None), cut)
        if rng.integers(0, 2):
            stored, query = query, stored
        stored.save(out / "refs" / f"h{i:05d}.jpg", quality=95)
        query.save(out / "queries" / f"q{i:05d}.jpg", quality=95)
        rows.append((f"q{i:05d}.jpg", "", FAMILY))
        edits.append((f"q{i:05d}.jpg", "halve_" + ("side" if cut else "top")))
    info = {"suite": FAMILY, "refs": n_pairs + n_distractors, "stored_halves": n_pairs,
            "distractors": n_distractors, "positive_queries": 0, "negative_queries": n_pairs,
            "families": [FAMILY], "seed": seed}
    return rows, edits, info
