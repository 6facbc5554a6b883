"""The independent edit suite (encoders/independent_edits.py) on the bundled real photos: every
family runs and is reproducible, training never imports it, and `neardup eval` builds and scores
both suites side by side on a tiny benchmark."""
from __future__ import annotations

import ast
import csv
import json
from pathlib import Path

import numpy as np
import pytest

from encoders import augly_edits, independent_edits
from encoders.benchmark import SUITES, build_benchmark, source_files
from encoders.decode import load_image

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = ROOT / "rayapp" / "samples"


@pytest.fixture(scope="module")
def photos() -> list[np.ndarray]:
    return [np.asarray(load_image(p)) for p in sorted(SAMPLES.glob("*.jpg"))[:4]]


@pytest.mark.parametrize("suite,family", [(m, f) for m in (independent_edits, augly_edits) for f in m.FAMILIES],
                         ids=lambda x: x if isinstance(x, str) else x.__name__.split(".")[-1])
def test_every_family_gives_an_rgb_image_reproducibly(suite, family, photos):
    """Both suites written apart from training (albumentations and OpenCV; AugLy)."""
    a, names = suite.apply(family, photos[0], np.random.default_rng(7), photos[1:])
    b, _ = suite.apply(family, photos[0], np.random.default_rng(7), photos[1:])
    assert a.dtype == np.uint8 and a.ndim == 3 and a.shape[2] == 3 and min(a.shape[:2]) >= 8
    assert np.array_equal(a, b), "same seed, same edit"
    assert set(names) <= set(suite.SINGLES)
    if family == suite.CHAIN:
        assert 2 <= len(names) <= 4


def test_unknown_family_is_a_clear_error(photos):
    with pytest.raises(KeyError, match="unknown independent edit"):
        independent_edits.apply("sepia", photos[0], np.random.default_rng(0))


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names |= {node.module} | {f"{node.module}.{a.name}" for a in node.names}
    return names


def test_training_never_sees_the_independent_suite():
    training = [ROOT / "encoders/augment.py", *sorted((ROOT / "encoders").glob("train*.py"))]
    assert len(training) > 2
    for module in training:
        names = _imports(module)
        assert not any("independent" in n or "albumentations" in n for n in names), module.name


def test_subsets_split_sources_into_disjoint_halves():
    a, b = source_files(SAMPLES, "0/2"), source_files(SAMPLES, "1/2")
    assert a and b and not set(a) & set(b) and len(a) + len(b) == len(source_files(SAMPLES))
    with pytest.raises(ValueError, match="K/N"):
        source_files(SAMPLES, "2/2")


def test_eval_scores_both_suites_side_by_side(tmp_path):
    from rayapp.eval_cli import main
    out = tmp_path / "eval.json"
    fams = len(SUITES["independent"])
    rc = main(["--originals", str(SAMPLES), "--workdir", str(tmp_path / "bench"), "--n-refs", "10",
               "--n-queries", str(fams), "--n-negatives", "4", "--n-distractors", "6", "--seed", "2",
               "--encoders", "deephash:tta=flip_turns,verify=0", "pdq:verify=0", "--out", str(out),
               "--pairs-out", str(tmp_path / "pairs.npz")])
    assert rc == 0
    pairs = np.load(tmp_path / "pairs.npz")
    assert {k.rsplit("|", 1)[1] for k in pairs.files} == {"rank", "correct", "inliers"}
    assert "independent|pdq:verify=0|correct" in pairs.files
    report = json.loads(out.read_text())
    assert set(report["suites"]) == {"own", "independent"}
    ind = report["suites"]["independent"]
    assert ind["benchmark"]["suite"] == "independent" and ind["benchmark"]["positive_queries"] == fams
    gt = {r["query"]: r["family"] for r in csv.DictReader(open(tmp_path / "bench/independent/ground_truth.csv"))}
    pasted = list(csv.DictReader(open(tmp_path / "bench/independent/pasted.csv")))
    assert {gt[r["query"]] for r in pasted} >= {"paste_into", "overlay"}  # the photo each one shows
    edits = {r["query"]: r["edits"].split("+") for r in csv.DictReader(open(tmp_path / "bench/independent/edits.csv"))}
    assert set(edits) == set(gt)  # every query says which single edits made it
    for query, family in gt.items():
        singles = edits[query]
        if family == independent_edits.CHAIN:
            assert 2 <= len(singles) <= 4 and set(singles) <= set(independent_edits.SINGLES)
        else:
            assert singles == list(independent_edits.COMBOS.get(family, (family,)))
    deep = ind["results"]["deephash:tta=flip_turns,verify=0"]
    assert set(deep["per_family_recall@1"]) == set(independent_edits.FAMILIES)
    assert "rot180" in deep["views"] and "flip+rot180" in deep["views"]
    for suite in report["suites"].values():
        for res in suite["results"].values():
            assert 0.0 <= res["mAP@100"] <= 1.0 and 0.0 <= res["muAP"] <= 1.0


def test_build_benchmark_refuses_an_unknown_suite(tmp_path):
    with pytest.raises(ValueError, match="unknown edit suite"):
        build_benchmark(SAMPLES, tmp_path, n_refs=4, n_queries=4, n_negatives=2, n_distractors=2,
                        suite="nope")


def test_the_lookalike_suite_stores_one_half_of_each_photo_and_queries_the_other(tmp_path):
    from PIL import Image
    from rayapp.evaluate import score_codes
    info = build_benchmark(SAMPLES, tmp_path, n_refs=6, n_queries=0, n_negatives=0, n_distractors=4,
                           suite="lookalike", seed=3)
    assert (info["suite"], info["negative_queries"], info["refs"]) == ("lookalike", 6, 10)
    rows = list(csv.DictReader(open(tmp_path / "ground_truth.csv")))
    assert len(rows) == 6 and all(r["ref"] == "" and r["family"] == "lookalike" for r in rows)
    assert json.loads((tmp_path / "benchmark.json").read_text())["stored_halves"] == 6
    for i in range(6):  # the two halves of one photo: same short side, no pixel in common
        stored, query = (Image.open(tmp_path / d / f"{p}{i:05d}.jpg").size for d, p in (("refs", "h"), ("queries", "q")))
        assert stored[0] == query[0] or stored[1] == query[1]
    dist = np.array([[1.0, 2.0], [0.5, 3.0]])
    res = score_codes(dist, 8, np.array([-1, -1]), ["lookalike"] * 2, k_micro=2)
    assert res["mAP@100"] is None and res["muAP"] is None and res["worst_family"] is None
    assert res["median_negative_nearest_distance"] == 0.75


def test_extra_distractors_grow_the_stored_collection_without_queries(tmp_path):
    """``--extra-distractors``: photos from other folders are stored as refs no query copies, a
    second call keeps them, and the ground truth is untouched."""
    from encoders.benchmark import add_distractors
    samples = sorted(SAMPLES.glob("*.jpg"))
    own, other = tmp_path / "own", tmp_path / "other"
    own.mkdir(), other.mkdir()
    for i, p in enumerate(samples[:20]):
        (own if i < 12 else other).joinpath(p.name).write_bytes(p.read_bytes())
    build_benchmark(own, tmp_path / "b", n_refs=4, n_queries=4, n_negatives=2, n_distractors=2, suite="own")
    before = (tmp_path / "b" / "ground_truth.csv").read_text()
    assert add_distractors(tmp_path / "b" / "refs", [other], 5, seed=1) == 5
    assert add_distractors(tmp_path / "b" / "refs", [other], 6, seed=1) == 6
    stored = sorted(p.name for p in (tmp_path / "b" / "refs").iterdir())
    assert len(stored) == 6 + 6 and sum(n.startswith("x") for n in stored) == 6
    copied = {(tmp_path / "b" / "refs" / n).read_bytes() for n in stored if n.startswith("x")}
    assert len(copied) == 6  # six different photos
    assert (tmp_path / "b" / "ground_truth.csv").read_text() == before
