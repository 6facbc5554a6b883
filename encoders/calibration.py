"""Calibrated confidence: the estimated precision of a hit at its final rank value.

A hit's rank value (``rank``: lower is better) mixes side-vector distance, view costs and the
verification credit, so its scale means nothing to a user. On a validation benchmark every
query's top hits are labelled true copy or not, and an isotonic fit (precision can only fall as
the rank value grows) maps rank value to the share of true copies at that value. A confidence
of 0.99 then means: of hits that scored like this one on validation, 99 in 100 were copies.

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

    def __call__(self, rank: float | np.ndarray) -> np.ndarray:
        return np.interp(rank, self.ranks, self.precision, left=self.precision[0], right=self.precision[-1])


def fit(ranks: np.ndarray, correct: np.ndarray, points: int = 48) -> Curve:
    """Isotonic (non-increasing) fit of ``correct`` against ``ranks``, kept as at most ``points``
    knots at the quantiles of the fitted blocks' centres."""
    ranks, correct = np.asarray(ranks, np.float64), np.asarray(correct, np.float64)
    keep = np.isfinite(ranks)
    ranks, correct = ranks[keep], correct[keep]
    if len(ranks) < 2:
        raise ValueError("calibration needs at least two labelled hits")
    order = np.argsort(ranks, kind="stable")
    r, y = ranks[order], isotonic_regression(correct[order], increasing=False).x
    blocks = np.flatnonzero(np.r_[True, np.diff(y) != 0, True])
    knots_r = np.array([(r[a] + r[b - 1]) / 2 for a, b in zip(blocks[:-1], blocks[1:])])
    knots_p = np.array([y[a] for a in blocks[:-1]])
    if len(knots_r) > points:
        pick = np.unique(np.linspace(0, len(knots_r) - 1, points).round().astype(int))
        knots_r, knots_p = knots_r[pick], knots_p[pick]
    return Curve([round(float(v), 4) for v in knots_r], [round(float(v), 4) for v in knots_p], len(r))


def calibration_error(curve: Curve, ranks: np.ndarray, correct: np.ndarray, bins: int = 10) -> dict:
    """Predicted against observed precision on a labelled set, over equal-width bins of
    predicted confidence (a reliability diagram): the mean and max |predicted - observed| over
    the bins that hold hits, the same weighted by hits (expected calibration error), and each
    bin's counts. Equal-width bins keep the confident hits,
    the ones a user acts on, from being averaged away by the many hits near zero."""
    ranks, correct = np.asarray(ranks, np.float64), np.asarray(correct, bool)
    keep = np.isfinite(ranks)
    pred, correct = curve(ranks[keep]), correct[keep]
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
