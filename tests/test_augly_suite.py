"""The AugLy edit suite (encoders/augly_edits.py) on the bundled real photos: a fade, a clear
error, training never imports it, and a benchmark built with it records which photo each
composite shows (every family's run is in test_independent_suite, beside the other suite's)."""
from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

from encoders import augly_edits
from encoders.benchmark import SUITES, build_benchmark
from encoders.decode import load_image
from tests.test_independent_suite import _imports

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = ROOT / "rayapp" / "samples"


@pytest.fixture(scope="module")
def photo() -> np.ndarray:
    return np.asarray(load_image(sorted(SAMPLES.glob("*.jpg"))[0]))


def test_a_fade_is_the_photo_blended_toward_white(photo):
    out, _ = augly_edits.apply("opacity", photo, np.random.default_rng(0))
    assert out.shape == photo.shape and out.mean() > photo.mean() + 40


def test_unknown_family_is_a_clear_error(photo):
    with pytest.raises(KeyError, match="unknown augly edit"):
        augly_edits.apply("sepia", photo, np.random.default_rng(0))


def test_training_never_sees_the_augly_suite():
    training = [ROOT / "encoders/augment.py", *sorted((ROOT / "encoders").glob("train*.py"))]
    for module in training:
        assert not any("augly" in n for n in _imports(module)), module.name


def test_a_benchmark_built_with_augly_records_the_photos_composites_show(tmp_path):
    fams = len(SUITES["augly"])
    info = build_benchmark(SAMPLES, tmp_path, n_refs=10, n_queries=fams, n_negatives=4, n_distractors=6,
                           seed=2, suite="augly")
    assert info["suite"] == "augly" and info["positive_queries"] == fams
    gt = {r["query"]: r["family"] for r in csv.DictReader(open(tmp_path / "ground_truth.csv"))}
    assert set(gt.values()) >= set(augly_edits.SINGLES)
    pasted = {gt[r["query"]] for r in csv.DictReader(open(tmp_path / "pasted.csv"))}
    assert pasted >= {"paste_into", "overlay"}
    assert len(list((tmp_path / "queries").glob("*.jpg"))) == len(gt)
