"""Copy-detection benchmarks built from folders of originals, with one of two edit suites.

- ``own``: the training suite's families (``encoders.augment``) at their evaluation strength.
- ``independent``: ``encoders.independent_edits``, written apart from training (albumentations
  and OpenCV), at the strengths users apply; the suite every constant is chosen on.
- ``augly``: ``encoders.augly_edits``, the same kinds of edit drawn by AugLy, the library the
  DISC21 queries were made with: a third implementation, to check that nothing fits one.

A third suite, ``lookalike`` (``encoders.lookalikes``), holds no copies: each query is the other
half of a stored half photo, a hard negative for the confidence curves.

A benchmark is a folder: ``refs/`` (queried originals plus distractors), ``queries/`` (edited
copies, and edited non-indexed photos as negatives) and ``ground_truth.csv`` (query,ref,family;
ref empty for a negative). ``subset="K/N"`` keeps every N-th source file from the K-th, so one
source splits into validation (``0/2``) and test (``1/2``) halves of different photos.
"""
from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
from PIL import Image

from encoders import augly_edits, independent_edits, lookalikes
from encoders.augment import COMBOS, FAMILIES, apply_family
from encoders.decode import iter_image_files, load_image

ALL_FAMILIES = tuple(FAMILIES) + tuple(COMBOS)
#: The suites whose edits take an RGB array, a rng and the pool of other photos.
_ARRAY_SUITES = {"independent": independent_edits, "augly": augly_edits}
SUITES = {"own": ALL_FAMILIES, **{name: m.FAMILIES for name, m in _ARRAY_SUITES.items()},
          lookalikes.FAMILY: (lookalikes.FAMILY,)}
EDIT_SUITES = ("own", "independent")  # the suites with copies, scored by default
#: Which non-indexed photo each composite query shows (pasted around or over its copy): two
#: copies that show the same one share content without sharing a source.
PASTED_CSV = "pasted.csv"
#: The single edits each query was made with, in order (a chain's draw, a recipe's steps).
EDITS_CSV = "edits.csv"


def source_files(originals: str | Path | list, subset: str | None = None) -> list[Path]:
    """Image files under the folders, sorted, optionally every N-th from the K-th (``"K/N"``)."""
    dirs = originals if isinstance(originals, (list, tuple)) else [originals]
    files = list(iter_image_files(dirs))
    if subset:
        k, n = (int(x) for x in subset.split("/"))
        if not 0 <= k < n:
            raise ValueError(f"subset must be K/N with 0 <= K < N, got {subset!r}")
        files = files[k::n]
    return files


class _TakenFrom(list):
    """The pool of other photos, remembering which of them edits took (``taken``: indices)."""

    def __init__(self, items: list):
        super().__init__(items)
        self.taken: list[int] = []

    def __getitem__(self, i):
        self.taken.append(i)
        return super().__getitem__(i)


def _editor(suite: str, pool: list[Path]):
    """fn(source path, family, rng) -> (edited PIL image, names of the pool photos it shows,
    the single edits applied), for the named suite. Edits start from the original at full size,
    as a user's copies do."""
    if suite == "own":
        return lambda src, fam, rng: (apply_family(fam, load_image(src, work_side=None), rng, strength=1.0), [], [fam])
    if suite not in _ARRAY_SUITES:
        raise ValueError(f"unknown edit suite {suite!r}; choose from {list(SUITES)}")
    others, module = _TakenFrom([np.asarray(load_image(p)) for p in pool]), _ARRAY_SUITES[suite]

    def edit(src: Path, fam: str, rng: np.random.Generator) -> tuple[Image.Image, list[str], list[str]]:
        others.taken.clear()
        out, singles = module.apply(fam, np.asarray(load_image(src, work_side=None)), rng, others)
        return Image.fromarray(out), [pool[i].name for i in others.taken], singles
    return edit


def add_distractors(refs_dir: str | Path, folders: list, n: int, seed: int = 0) -> int:
    """Copy ``n`` photos drawn (by ``seed``) from ``folders`` into a built benchmark's refs as
    ``x00000.jpg``... : stored images no query is a copy of, so that a benchmark's collection can
    grow to the size of the one a user searches (more look-alikes for every view to meet) without
    more edited queries. Photos already there (from an earlier call) are kept. Returns how many
    there are. The folders must not hold the benchmark's own originals."""
    refs = Path(refs_dir)
    have = len(list(refs.glob("x*")))
    files = source_files(list(folders))
    order = np.random.default_rng(seed).permutation(len(files))
    for i in range(have, min(n, len(files))):  # the same draw, so a second call only extends it
        src = files[order[i]]
        shutil.copyfile(src, refs / f"x{i:05d}{src.suffix.lower()}")
    return len(list(refs.glob("x*")))


def build_benchmark(originals_dir: str | Path | list, out_dir: str | Path, n_refs: int = 450,
                    n_queries: int = 900, n_negatives: int = 280, n_distractors: int = 250,
                    seed: int = 0, families: tuple[str, ...] | None = None, suite: str = "own",
                    subset: str | None = None) -> dict:
    """Write refs/, queries/ and ground_truth.csv (query,ref,family) under ``out_dir``, with
    edits.csv (query,edits: the single edits joined by ``+``) and pasted.csv.

    ``n_refs`` originals get ``n_queries`` edited queries (families cycled evenly), ``n_distractors``
    more originals are indexed without queries, and ``n_negatives`` non-indexed originals give edited
    queries whose ref is empty (and, for the independent suite, the photos pasted around or over
    a copy). Returns the counts.
    """
    families = tuple(families or SUITES.get(suite, ()))
    files = source_files(originals_dir, subset)
    if suite == lookalikes.FAMILY:
        rows, edits, info = lookalikes.build_lookalikes(files, out_dir, n_refs, n_distractors, seed)
        return _write_benchmark(Path(out_dir), originals_dir, subset, rows, edits, [], info)
    need = n_refs + n_distractors + n_negatives
    if len(files) < need:
        raise ValueError(f"{originals_dir}: {len(files)} images, need {need} (refs+distractors+negatives)")
    rng = np.random.default_rng(seed)
    order = [files[i] for i in rng.permutation(len(files))]
    refs, distractors, negatives = order[:n_refs], order[n_refs:n_refs + n_distractors], \
        order[n_refs + n_distractors:need]
    edit = _editor(suite, negatives)
    out = Path(out_dir)
    (out / "refs").mkdir(parents=True, exist_ok=True)
    (out / "queries").mkdir(parents=True, exist_ok=True)
    ref_names = {}
    for i, f in enumerate(refs + distractors):
        name = f"r{i:05d}{f.suffix.lower()}"
        shutil.copyfile(f, out / "refs" / name)
        ref_names[f] = name
    fam_order = [families[i % len(families)] for i in range(n_queries)]
    rng.shuffle(fam_order)
    sources = [(refs[i % len(refs)], fam) for i, fam in enumerate(fam_order)]
    sources += [(f, families[int(rng.integers(0, len(families)))]) for f in negatives]
    rows, shown, edits = [], [], []
    for j, (src, fam) in enumerate(sources):
        qname = f"q{j:05d}.jpg"
        image, others, singles = edit(src, fam, rng)
        image.save(out / "queries" / qname, quality=95)
        rows.append((qname, ref_names.get(src, ""), fam))
        shown += [(qname, name) for name in others]
        edits.append((qname, "+".join(singles)))
    info = {"suite": suite, "refs": len(refs) + len(distractors), "queried_refs": len(refs),
            "distractors": len(distractors), "positive_queries": n_queries,
            "negative_queries": len(negatives), "families": list(families), "seed": seed}
    return _write_benchmark(out, originals_dir, subset, rows, edits, shown, info)


def _write_benchmark(out: Path, originals_dir, subset: str | None, rows: list[tuple], edits: list[tuple],
                     shown: list[tuple], info: dict) -> dict:
    """A built suite's tables (ground truth, ``EDITS_CSV``, ``PASTED_CSV``) and ``benchmark.json``
    (``info``, the counts, after where the photos came from) -> that JSON's content."""
    _write_csv(out / "ground_truth.csv", ["query", "ref", "family"], rows)
    _write_csv(out / EDITS_CSV, ["query", "edits"], edits)
    _write_csv(out / PASTED_CSV, ["query", "other_photo"], shown)
    dirs = originals_dir if isinstance(originals_dir, (list, tuple)) else [originals_dir]
    info = {"originals": [str(d) for d in dirs], "subset": subset, **info}
    (out / "benchmark.json").write_text(json.dumps(info, indent=2))
    return info


def _write_csv(path: Path, header: list[str], rows: list[tuple]) -> None:
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(header)
        w.writerows(rows)


def read_ground_truth(path: str | Path) -> list[tuple[str, str, str]]:
    """CSV with header query,ref[,family]; ref empty for negatives -> [(query, ref, family)]."""
    with open(path, newline="") as fh:
        reader = csv.DictReader(fh)
        if not reader.fieldnames or not {"query", "ref"} <= set(reader.fieldnames):
            raise ValueError(f"{path}: ground truth needs a header with columns query,ref")
        return [(r["query"], r["ref"] or "", r.get("family") or "unknown") for r in reader]
