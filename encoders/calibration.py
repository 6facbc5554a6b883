"""Calibrated confidence: the estimated precision of a hit at its final rank value.

A hit's rank value (``rank``: lower is better) mixes side-vector distance, view costs and the
verification credit, so its scale means nothing to a user. On a validation benchmark every
query's top hits are labelled true copy or not, and an isotonic fit (precision can only fall as
the rank value grows) maps rank value to the share of true copies at that value. A confidence
of 0.99 then means: of hits that scored like this one on validation, 99 in 100 were copies.

The rank value is a ranking's sum: it orders one query's hits well, but the verification credit
in it was set to order hits, not to say how sure a match is. A look-alike (the same floor or
shelf in two shots) can earn the credit with a few keypoints on repeated texture, while a copy
verified by 80 keypoints earns no more than one verified by 10. The curve therefore reads a
rescored value: the rank value with only ``credit_weight`` of the ranking's credit
(``credit_rule``: from, full, bonus) kept, less ``inlier_credit`` per doubling of the keypoints
beyond ``inlier_base``. Both are chosen on the validation hits, look-alike hard negatives
included, by cross-validated Brier score (:func:`choose_reading`); (1, 0) reads the rank value
as it is.

Curves are stored per pipeline (``image``: an image query with the service's views, side vectors
and verification; ``code``: a hex code ranked by Hamming distance) beside the weights, keyed by
the model id, because another model's rank values mean something else.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from scipy.optimize import isotonic_regression

CALIBRATION_FILE = Path(__file__).resolve().parent / "weights" / "calibration.json"


@dataclass
class Curve:
    """Piecewise-linear map from rank value to precision, non-increasing."""

    ranks: list[float]
    precision: list[float]
    fitted_on: int = 0  # labelled hits behind the fit
    inlier_credit: float = 0.0  # rank units per doubling of verified keypoints over inlier_base
    inlier_base: int = 10
    credit_weight: float = 1.0  # share of the ranking's verification credit the curve keeps
    credit_rule: list[float] | None = None  # that credit: [from, full, bonus] (shards.verify)

    def __call__(self, rank: float | np.ndarray, inliers: int | np.ndarray | None = 0) -> np.ndarray:
        """Estimated precision of hits at ``rank`` verified by ``inliers`` keypoints (0 or None:
        not verified)."""
        s = score(rank, inliers, self.reading())
        return np.interp(s, self.ranks, self.precision, left=self.precision[0], right=self.precision[-1])

    def reading(self) -> "Reading":
        return Reading(self.inlier_credit, self.credit_weight, self.inlier_base, self.credit_rule)


@dataclass(frozen=True)
class Reading:
    """How a curve rescores a hit (module docstring): keypoint credit per doubling over ``base``,
    and the share ``weight`` kept of the ranking's credit ``rule`` (from, full, bonus)."""

    per_doubling: float = 0.0
    weight: float = 1.0
    base: int = 10
    rule: list[float] | None = None


def score(rank, inliers, reading: Reading = Reading()) -> np.ndarray:
    """What a curve reads: the rank value with ``reading.weight`` of the ranking's credit kept,
    less ``reading.per_doubling`` per doubling of keypoints over ``reading.base``."""
    n = np.nan_to_num(np.asarray(inliers if inliers is not None else 0, np.float64))
    out = np.asarray(rank, np.float64) - reading.per_doubling * np.log2(np.maximum(n, reading.base) / reading.base)
    if reading.rule is not None and reading.weight != 1.0:
        first, full, bonus = reading.rule
        out = out + (1.0 - reading.weight) * bonus * np.clip((n - first) / (full - first), 0.0, 1.0)
    return out


CREDITS = (0.0, 1.0, 2.0, 4.0, 8.0, 16.0)
WEIGHTS = (1.0, 0.75, 0.5, 0.25)


def choose_reading(ranks: np.ndarray, correct: np.ndarray, inliers: np.ndarray, base: int,
                   rule: list[float] | None = None, credits=CREDITS, weights=WEIGHTS, folds: int = 5,
                   seed: int = 0) -> tuple[Reading, dict[str, float]]:
    """The reading (keypoint credit, share of the ranking's credit kept) whose curve predicts
    held-out hits best: ``folds``-fold cross-validated Brier score of each pair -> (the chosen
    reading, every pair's score). The one-standard-error rule picks, among the pairs within one
    standard error of the best (of the per-hit differences, on the same folds), the one that
    keeps most of the ranking's credit, then the smallest keypoint credit: rescoring only where
    it beats noise."""
    correct = np.asarray(correct, np.float64)
    fold = np.random.default_rng(seed).integers(0, folds, len(ranks))
    errors = {(w, c): _held_out_errors(score(ranks, inliers, Reading(c, w, base, rule)), correct, fold)
              for w in (weights if rule is not None else (1.0,)) for c in credits}
    best = min(errors, key=lambda k: errors[k].mean())
    gap = {k: e - errors[best] for k, e in errors.items()}
    near = [k for k in errors if gap[k].mean() <= gap[k].std() / np.sqrt(len(ranks))]
    w, c = min(near, key=lambda k: (1.0 - k[0], k[1]))
    return Reading(c, w, base, rule), {f"weight={k[0]},credit={k[1]}": round(float(e.mean()), 6)
                                       for k, e in errors.items()}


def _held_out_errors(values: np.ndarray, correct: np.ndarray, fold: np.ndarray) -> np.ndarray:
    """Each hit's squared error under the curve fitted on the other folds."""
    err = np.empty(len(values))
    for f in np.unique(fold):
        test = fold == f
        err[test] = (fit(values[~test], correct[~test])(values[test]) - correct[test]) ** 2
    return err


def fit(ranks: np.ndarray, correct: np.ndarray, inliers: np.ndarray | None = None,
        reading: Reading = Reading()) -> Curve:
    """Isotonic (non-increasing) fit of ``correct`` against ``ranks`` (as ``reading`` rescores
    them with ``inliers``): equal values pooled first, each fitted block's precision
    shrunk by one pseudo-copy and one pseudo-miss (a block of 1,000 copies says 0.999, not 1),
    and the block's first and last value kept as knots, so a hit inside a block gets its
    precision and one between blocks a straight line between them (as scikit-learn's
    ``IsotonicRegression`` interpolates)."""
    if inliers is not None:
        ranks = score(ranks, inliers, reading)
    ranks, correct = np.asarray(ranks, np.float64), np.asarray(correct, np.float64)
    keep = np.isfinite(ranks)
    ranks, correct = ranks[keep], correct[keep]
    if len(ranks) < 2:
        raise ValueError("calibration needs at least two labelled hits")
    r, where, n = np.unique(ranks, return_inverse=True, return_counts=True)
    copies = np.bincount(where, weights=correct, minlength=len(r))
    knots_r, knots_p = _block_knots(r, n, copies)
    if inliers is None:
        reading = Reading()
    return Curve([round(float(v), 4) for v in knots_r], [round(float(v), 6) for v in knots_p], len(ranks),
                 float(reading.per_doubling), reading.base, float(reading.weight),
                 None if reading.rule is None else [float(v) for v in reading.rule])


def _block_knots(r: np.ndarray, n: np.ndarray, copies: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Knots of the isotonic fit over distinct rank values ``r`` (``n`` hits, ``copies`` of them
    true): each block's first and last value at its shrunk precision; a knot between two of
    equal precision says nothing and is dropped."""
    y = isotonic_regression(copies / n, weights=n.astype(np.float64), increasing=False).x
    edges = np.flatnonzero(np.r_[True, np.diff(y) != 0, True])
    first, stop = edges[:-1], edges[1:]
    size = np.add.reduceat(n, first).astype(np.float64)
    shrunk = (np.add.reduceat(copies, first) + 1.0) / (size + 2.0)
    shrunk = isotonic_regression(shrunk, weights=size, increasing=False).x
    ends = [[a] if b - 1 == a else [a, b - 1] for a, b in zip(first, stop)]
    at = np.array([i for e in ends for i in e])
    p = np.repeat(shrunk, [len(e) for e in ends])
    inner = np.r_[False, (p[1:-1] == p[:-2]) & (p[1:-1] == p[2:]), False] if len(p) > 2 else np.zeros(len(p), bool)
    return r[at][~inner], p[~inner]


def calibration_error(curve: Curve, ranks: np.ndarray, correct: np.ndarray, inliers: np.ndarray | None = None,
                      bins: int = 10) -> dict:
    """Predicted against observed precision on a labelled set, over equal-width bins of
    predicted confidence (a reliability diagram): the mean and max |predicted - observed| over
    the bins that hold hits, the same weighted by hits (expected calibration error), and each
    bin's counts. Equal-width bins keep the confident hits,
    the ones a user acts on, from being averaged away by the many hits near zero."""
    ranks, correct = np.asarray(ranks, np.float64), np.asarray(correct, bool)
    keep = np.isfinite(ranks)
    kp = np.zeros(len(ranks)) if inliers is None else np.asarray(inliers)
    pred, correct = curve(ranks[keep], kp[keep]), correct[keep]
    which = np.minimum((pred * bins).astype(int), bins - 1)
    rows = []
    for b in range(bins):
        part = which == b
        if part.any():
            rows.append({"bin": [b / bins, (b + 1) / bins], "predicted": round(float(pred[part].mean()), 4),
                         "observed": round(float(correct[part].mean()), 4), "hits": int(part.sum())})
    gaps = [abs(r["predicted"] - r["observed"]) for r in rows]
    weighted = sum(g * r["hits"] for g, r in zip(gaps, rows)) / max(1, sum(r["hits"] for r in rows))
    return {"mean_abs_error": round(float(np.mean(gaps)), 4), "max_abs_error": round(float(np.max(gaps)), 4),
            "brier": round(float(((pred - correct) ** 2).mean()), 6),
            "expected_calibration_error": round(float(weighted), 4), "bins": rows}


def save(curves: dict[str, Curve], model: str, path: Path = CALIBRATION_FILE, extra: dict | None = None) -> Path:
    path.write_text(json.dumps({"model": model, "curves": {k: asdict(c) for k, c in curves.items()},
                                **(extra or {})}, indent=1))
    return path


def load(model: str, path: Path = CALIBRATION_FILE) -> dict[str, Curve]:
    """The curves fitted for ``model``; empty when the file is missing or made for another model
    (hits then carry no confidence rather than a wrong one)."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return {}
    if data.get("model") != model:
        return {}
    return {k: Curve(**v) for k, v in data.get("curves", {}).items()}
