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
    specs = ["deephash:tta=flip_rot90", "deephash:content=off,ref_views=none,verify=0", "pdq", "pdq:verify=0"]
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
    from encoders.tta import CONTENT_COST, FLIP_COST, NEGATIVE_COST, OUTSIDE_COST, ROT_COST, TILT_COST, UPRIGHT_COST
    assert full["views"] == {"original": 0.0, "flip": FLIP_COST, "rot90": ROT_COST, "rot270": ROT_COST,
                             "negative": NEGATIVE_COST,
                             "content": CONTENT_COST, "content+flip": CONTENT_COST + FLIP_COST,
                             "outside": OUTSIDE_COST, "upright": UPRIGHT_COST, "tilt": TILT_COST}
    from encoders.tta import REF_VIEW_COST
    assert full["ref_views"] == {"center70": REF_VIEW_COST}  # each ref is stored with its centre crop
    plain = rep["results"]["deephash:content=off,ref_views=none,verify=0"]
    assert plain["views"] == {"original": 0.0} and plain["ref_views"] == {}
    assert rep["results"]["pdq"]["rank"] == "hamming"
    assert rep["results"]["pdq"]["views"] == {"original": 0.0, "negative": NEGATIVE_COST, "content": CONTENT_COST,
                                              "outside": OUTSIDE_COST,
                                              "upright": UPRIGHT_COST, "tilt": TILT_COST}
    assert full["per_family_recall@1"]["center_crop"] == 1.0


def test_deephash_beats_pdq_on_real_edits(report):
    """Through the same pipeline deephash finds every copy PDQ finds, and the mirrored and
    turned ones PDQ's code cannot. On this small benchmark verification lifts both pipelines
    near the ceiling, so the margin is checked without it: deephash's code, the query as given,
    against PDQ's with its views."""
    rep, _ = report
    deep, pdq = rep["results"]["deephash:tta=flip_rot90"], rep["results"]["pdq"]
    assert deep["mAP@100"] >= pdq["mAP@100"], (deep["mAP@100"], pdq["mAP@100"])
    assert all(deep["per_family_recall@1"][f] >= r for f, r in pdq["per_family_recall@1"].items())
    assert deep["per_family_recall@1"]["rot90"] == 1.0 and deep["per_family_recall@1"]["hflip"] == 1.0
    plain, pdq_plain = rep["results"]["deephash:content=off,ref_views=none,verify=0"], rep["results"]["pdq:verify=0"]
    assert plain["mAP@100"] > pdq_plain["mAP@100"] + 0.1, (plain["mAP@100"], pdq_plain["mAP@100"])


def test_metrics_count_a_ref_not_returned_as_missed():
    import numpy as np
    from rayapp.evaluate import rank_pessimistic, score_codes, top_hits
    inf = np.inf
    dist = np.array([[1.0, inf, 3.0], [inf, 2.0, 2.0], [inf, inf, 0.5]], dtype=np.float32)
    assert rank_pessimistic(dist, np.array([0, 1, 0])).tolist() == [1, 2, inf]
    res = score_codes(dist, 8, np.array([0, 1, 0]), ["a", "b", "c"], k_micro=3)
    assert res["mAP@100"] == round((1 + 0.5 + 0) / 3, 4) and res["recall@1"] == round(1 / 3, 4)
    assert res["median_positive_distance"] == 2.0  # the one not returned counts as the farthest
    ranks, correct, inliers = top_hits(dist, np.array([0, 1, -1]), k=3)
    assert ranks.tolist() == [1.0, 3.0, 2.0, 2.0, 0.5] and correct.tolist() == [True, False, True, False, False]
    assert inliers.tolist() == [0] * 5
    kp = np.array([[40, 0, 3], [0, 12, 7], [0, 0, 5]], dtype=np.int16)
    assert top_hits(dist, np.array([0, 1, -1]), 3, kp)[2].tolist() == [40, 3, 12, 7, 5]


def test_a_spec_sets_how_its_queries_are_searched():
    from rayapp.evaluate import spec_config
    cfg, rest = spec_config("deephash:tta=flip,rank=weighted,flip_cost=0.7,content=frame,"
                            "ref_views=none,verify=0,weights=w.safetensors,side_hash=0,index=flat")
    q = cfg.query
    assert (cfg.encoder.name, q.rank, q.flip_cost, q.content, cfg.storage.ref_views, q.verify) == (
        "deephash", "weighted", 0.7, "frame", [], 0)
    assert cfg.storage.index_kind == "flat" and spec_config("pdq")[0].storage.index_kind is None
    assert rest == {"tta": "flip", "weights": "w.safetensors", "side_hash": "0"}
