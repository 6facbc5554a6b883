"""Inliers of a similarity transform, within tolerance in both images (``shards.similarity``)."""
from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from shards.similarity import similarity_inliers

PX = 4.0


def _points(seed: int, m: int) -> np.ndarray:
    return np.random.default_rng(seed).uniform(0, 320, (m, 2)).astype(np.float32)


def _similar(src: np.ndarray, scale: float, degrees: float, shift: tuple[float, float]) -> np.ndarray:
    a = np.radians(degrees)
    rot = scale * np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]], np.float32)
    return src @ rot.T + np.array(shift, np.float32)


def test_a_transform_that_shrinks_the_query_to_a_speck_explains_nothing():
    """Unrelated matches crowded into a few stored pixels are all within 4 stored pixels of a
    query shrunk ten times, but no two of them agree within 4 query pixels."""
    src = _points(0, 40)
    dst = np.random.default_rng(1).uniform(150, 158, (40, 2)).astype(np.float32)
    assert similarity_inliers(src, dst, PX, 2000) <= 3


@settings(max_examples=40, deadline=None)
@given(scale=st.floats(0.3, 3.0), degrees=st.floats(-180, 180), copies=st.integers(12, 120),
       noise=st.integers(0, 60), seed=st.integers(0, 10_000))
def test_a_true_similarity_keeps_its_matches_at_any_scale(scale, degrees, copies, noise, seed):
    """A crop (scale under 1), a copy at its size and a thumbnail (over 1), turned any way,
    with unrelated matches mixed in: every true match is counted, give or take a few."""
    src = _points(seed, copies + noise)
    dst = _similar(src, scale, degrees, (20.0, -10.0))
    dst[copies:] = _points(seed + 1, noise)
    got = similarity_inliers(src, dst, PX, 2000)
    assert copies - 2 <= got <= copies + noise


def test_the_count_is_the_same_every_time():
    src = _points(3, 150)
    dst = _similar(src, 0.5, 30.0, (5.0, 5.0))
    dst[40:] = _points(4, 110)
    assert len({similarity_inliers(src, dst, PX, 2000) for _ in range(5)}) == 1


def test_the_module_docstring_examples_hold():
    import doctest

    import shards.similarity
    assert doctest.testmod(shards.similarity).failed == 0
