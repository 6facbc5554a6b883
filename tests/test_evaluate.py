"""`neardup eval` end to end on a small benchmark built from the bundled real photos: the same
views and ranking as the service, every metric reported, JSON written."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from rayapp.evaluate import ALL_FAMILIES, build_benchmark, evaluate

SAMPLES = Path(__file__).resolve().parents[1] / "rayapp" / "samples"


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    work = tmp_path_factory.mktemp("bench")
    info = build_benchmark(SAMPLES, work, n_refs=14, n_queries=len(ALL_FAMILIES), n_negatives=6,
                           n_distractors=8, seed=3)
    assert info["positive_queries"] == len(ALL_FAMILIES) and info["refs"] == 22
    specs = ["deephash:tta=flip_rot90", "deephash:content=off,ref_views=none", "pdq"]
    return evaluate(specs, work / "refs", work / "queries", work / "ground_truth.csv",
                    out=work / "eval.json"), work


def test_report_has_every_metric_per_encoder(report):
    rep, work = report
    assert json.loads((work / "eval.json").read_text())["results"].keys() == rep["results"].keys()
    for spec, res in rep["results"].items():
        for key in ("mAP@100", "muAP", "recall@1"):
            assert 0.0 <= res[key] <= 1.0, (spec, key)
        assert set(res["per_family_recall@1"]) == set(ALL_FAMILIES)
        assert res["encode_img_per_s"] > 0
    assert rep["benchmark"]["negative_queries"] == 6


def test_views_and_costs_follow_the_service(report):
    rep, _ = report
    full = rep["results"]["deephash:tta=flip_rot90"]
    assert full["rank"] == "vector"  # the side vectors' cosine, as the service ranks
    from encoders.tta import CONTENT_COST, FLIP_COST, OUTSIDE_COST, ROT_COST, UPRIGHT_COST
    assert full["views"] == {"original": 0.0, "flip": FLIP_COST, "rot90": ROT_COST, "rot270": ROT_COST,
                             "content": CONTENT_COST, "content+flip": CONTENT_COST + FLIP_COST,
                             "outside": OUTSIDE_COST, "upright": UPRIGHT_COST}
    from encoders.tta import REF_VIEW_COST
    assert full["ref_views"] == {"center70": REF_VIEW_COST}  # each ref is stored with its centre crop
    plain = rep["results"]["deephash:content=off,ref_views=none"]
    assert plain["views"] == {"original": 0.0} and plain["ref_views"] == {}
    assert rep["results"]["pdq"]["rank"] == "hamming"
    assert rep["results"]["pdq"]["views"] == {"original": 0.0, "content": CONTENT_COST, "outside": OUTSIDE_COST,
                                              "upright": UPRIGHT_COST}
    assert full["per_family_recall@1"]["center_crop"] == 1.0


def test_deephash_beats_pdq_on_real_edits(report):
    rep, _ = report
    deep, pdq = rep["results"]["deephash:tta=flip_rot90"], rep["results"]["pdq"]
    assert deep["mAP@100"] > pdq["mAP@100"] + 0.1, (deep["mAP@100"], pdq["mAP@100"])
    assert deep["per_family_recall@1"]["rot90"] == 1.0 and deep["per_family_recall@1"]["hflip"] == 1.0


def test_distances_take_the_best_stored_view_plus_its_cost():
    import numpy as np
    from rayapp.evaluate import distances
    q = np.array([[[0b1111]]], dtype=np.uint8)                    # 1 query, 1 view, 1 byte
    refs = np.array([[[0b0000], [0b1110]], [[0b1100], [0b0000]]], dtype=np.uint8)  # 2 refs x 2
    assert distances(q, None, refs, ref_view_cost=0.5).tolist() == [[1.5, 2.0]]
    assert distances(q, None, refs[:, 0]).tolist() == [[4.0, 2.0]]  # one code per ref
