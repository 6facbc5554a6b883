"""Calibrated confidence: the isotonic curve, the keypoint credit it reads, and the hits it rates."""
from __future__ import annotations

import numpy as np
import pytest

from encoders.calibration import Curve, Reading, calibration_error, choose_reading, fit, score
from rayapp.hits import Hit
from rayapp.ranking import with_confidence
from shards.verify import verify_bonus


def test_with_confidence_adds_the_rank_value_and_its_calibrated_precision():
    hits = [Hit("a", 3, score=1.0, cost=0.5, inliers=40), Hit("b", 9, score=6.0)]
    plain = with_confidence(hits)
    assert [h.rank for h in plain] == [1.5 - verify_bonus(40), 6.0] and plain[0].confidence is None
    curve = Curve(ranks=[1.5 - verify_bonus(40), 6.0], precision=[1.0, 0.2])
    rated = with_confidence(hits, curve)
    assert [h.confidence for h in rated] == [1.0, 0.2]
    assert [h.id for h in with_confidence(hits, curve, min_confidence=0.5)] == ["a"]


def test_calibration_fit_is_monotone_and_reports_its_error():
    rng = np.random.default_rng(0)
    ranks = rng.uniform(0, 10, 4000)
    correct = rng.random(4000) < 1 / (1 + np.exp(ranks - 5))  # true precision falls with rank
    curve = fit(ranks, correct)
    p = curve(np.linspace(0, 10, 50))
    assert np.all(np.diff(p) <= 1e-9) and p[0] > 0.9 and p[-1] < 0.1
    err = calibration_error(curve, ranks, correct)
    assert err["mean_abs_error"] < 0.05 and len(err["bins"]) == 10 and 0 < err["brier"] < 0.25


def test_more_keypoints_than_the_base_raise_confidence_and_fewer_do_not_lower_it():
    curve = Curve(ranks=[0.0, 4.0], precision=[1.0, 0.0], inlier_credit=1.0, inlier_base=10)
    assert curve(2.0) == curve(2.0, 10) == curve(2.0, 3) == curve(2.0, None) == 0.5
    assert curve(2.0, 20) == 0.75 and curve(2.0, 40) == 1.0  # one and two doublings over the base
    lifted = with_confidence([Hit("a", 3, score=2.0 + verify_bonus(40), inliers=40)], curve)
    assert lifted[0].confidence == 1.0


def _keypoints_carry_signal(n: int = 6000, seed: int = 0):
    """Hits whose rank value says little once verified, but whose keypoint count tells copies
    (many) from look-alikes (few over the base)."""
    rng = np.random.default_rng(seed)
    correct = rng.random(n) < 0.5
    ranks = rng.normal(0, 1, n) - correct
    inliers = np.where(correct, rng.integers(10, 200, n), rng.integers(0, 14, n))
    return ranks, correct, inliers


def test_the_keypoint_credit_is_chosen_where_keypoints_tell_copies_apart():
    ranks, correct, inliers = _keypoints_carry_signal()
    reading, scores = choose_reading(ranks, correct, inliers, base=10)
    assert reading.per_doubling > 0 and reading.weight == 1.0
    assert scores[f"weight=1.0,credit={reading.per_doubling}"] < scores["weight=1.0,credit=0.0"]
    with_kp = fit(ranks, correct, inliers, reading)
    assert with_kp.inlier_credit == reading.per_doubling
    assert calibration_error(with_kp, ranks, correct, inliers)["brier"] < calibration_error(
        fit(ranks, correct), ranks, correct)["brier"]


def test_no_credit_is_chosen_where_keypoints_add_nothing():
    rng = np.random.default_rng(1)
    ranks = rng.uniform(0, 10, 4000)
    correct = rng.random(4000) < 1 / (1 + np.exp(ranks - 5))
    inliers = rng.integers(0, 100, 4000)  # unrelated to being a copy
    assert choose_reading(ranks, correct, inliers, base=10)[0] == Reading(0.0, 1.0, 10, None)


RULE = [6, 10, 16.0]  # the ranking's credit: none at 6 keypoints, all 16 from 10


def test_a_curve_can_keep_part_of_the_rankings_credit():
    curve = Curve(ranks=[-10.0, 0.0], precision=[1.0, 0.0], credit_weight=0.5, credit_rule=RULE)
    assert score(-12.0, 10, curve.reading()) == -4.0 and score(-12.0, 0, curve.reading()) == -12.0
    assert curve(-12.0, 10) == pytest.approx(0.4) and curve(-12.0, None) == 1.0


def test_look_alikes_lifted_by_the_credit_teach_the_curve_to_keep_less_of_it():
    """Look-alikes: poor side-vector scores, a few keypoints on repeated texture, so the full
    credit lifts them among copies, which score well unverified or verify with many keypoints."""
    rng = np.random.default_rng(2)
    n = 4000
    copy = rng.random(n) < 0.5
    base_rank = np.where(copy, rng.normal(-6, 1, n), rng.normal(4, 1, n))
    inliers = np.where(copy, np.where(rng.random(n) < 0.5, 0, rng.integers(40, 200, n)), rng.integers(10, 13, n))
    credit = 16.0 * np.clip((inliers - 6) / 4, 0, 1)
    reading, _ = choose_reading(base_rank - credit, copy, inliers, 10, RULE)
    assert reading.weight < 1.0 and reading.rule == RULE


def test_a_block_of_copies_keeps_its_precision_to_its_last_hit_shrunk_short_of_one():
    ranks = np.r_[np.arange(1000.0), np.arange(1000.0, 2000.0)]
    correct = np.r_[np.ones(1000, bool), np.zeros(1000, bool)]
    curve = fit(ranks, correct)
    assert curve(0) == curve(999) == pytest.approx(1001 / 1002, abs=1e-6)
    assert curve(1000) == curve(1999) == pytest.approx(1 / 1002, abs=1e-6)
    assert curve(999.5) == pytest.approx(0.5, abs=1e-6) and curve.fitted_on == 2000


def test_hits_of_equal_rank_value_are_pooled_whatever_their_order():
    ranks = np.array([1.0, 2.0, 2.0, 2.0, 2.0, 3.0])
    first = fit(ranks, np.array([1, 1, 1, 0, 0, 0], bool))
    second = fit(ranks, np.array([1, 0, 0, 1, 1, 0], bool))
    assert first(2.0) == second(2.0) == pytest.approx((2 + 1) / (4 + 2), abs=1e-6)


def test_curves_fitted_for_other_weights_load_from_the_configured_file(tmp_path):
    from encoders import calibration
    from rayapp.cluster import confidence_curves, model_id
    from rayapp.config import load_config
    bundled = load_config(None)
    assert set(confidence_curves(bundled)) == {"image", "code"}
    mine = Curve(ranks=[0.0, 5.0], precision=[0.9, 0.1])
    path = calibration.save({"image": mine}, model_id(bundled), tmp_path / "curves.json")
    cfg = load_config(None, overrides={"encoder": {"calibration": str(path)}})
    assert confidence_curves(cfg)["image"] == mine
    calibration.save({"image": mine}, "deephash:another-model", path)
    assert confidence_curves(cfg) == {}  # curves fitted for another model say nothing of this one


def test_the_fewest_inliers_that_lift_a_hit_match_a_count_by_count_search():
    """What a batch job tells verification it needs: for the shipped image curve, the first
    keypoint count at which each unverified hit reaches the floor."""
    from rayapp.cluster import confidence_curves
    from rayapp.config import load_config
    from rayapp.searcher import fewest_inliers
    from shards.verify import KEYPOINTS
    curve = confidence_curves(load_config(None))["image"]
    ranks = np.linspace(-10.0, 60.0, 57)
    for floor in (0.5, 0.9, 0.99):
        lifted = [[curve(r - verify_bonus(n), n) >= floor for n in range(KEYPOINTS + 1)] for r in ranks]
        want = [next((n for n, up in enumerate(row) if up), KEYPOINTS) for row in lifted]
        assert fewest_inliers(curve, ranks, floor).tolist() == want
