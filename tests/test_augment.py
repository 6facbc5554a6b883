"""The near-duplicate transform suite: every family gives a sane RGB image, deterministically."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from encoders.augment import COMBOS, FAMILIES, apply_family, random_edit
from tests.helpers_images import make_photo

NAMES = sorted(FAMILIES) + sorted(COMBOS)


@pytest.fixture(scope="module")
def photo() -> Image.Image:
    return make_photo(3, (200, 150))


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("strength", [1.0, 2.0])
def test_family_returns_valid_rgb(photo, name, strength):
    out = apply_family(name, photo, np.random.default_rng(0), strength)
    assert isinstance(out, Image.Image) and out.mode == "RGB"
    w, h = out.size
    assert 8 <= w <= 4 * photo.width and 8 <= h <= 4 * photo.height
    assert np.asarray(out).std() > 1.0  # not blank


@pytest.mark.parametrize("name", NAMES)
def test_family_is_deterministic_under_seed(photo, name):
    a = apply_family(name, photo, np.random.default_rng(42))
    b = apply_family(name, photo, np.random.default_rng(42))
    assert a.size == b.size and np.array_equal(np.asarray(a), np.asarray(b))


def test_family_accepts_non_rgb_input(photo):
    out = apply_family("rotate", photo.convert("L"), np.random.default_rng(0))
    assert out.mode == "RGB"


def test_unknown_family_is_a_clear_error(photo):
    with pytest.raises(KeyError, match="unknown edit family"):
        apply_family("sepia-ish", photo, np.random.default_rng(0))


def test_random_edit_composes_distinct_families(photo):
    rng = np.random.default_rng(7)
    for _ in range(30):
        out, names = random_edit(photo, rng, strength=1.5)
        assert 1 <= len(names) <= 3 and len(set(names)) == len(names)
        assert set(names) <= set(FAMILIES) and out.mode == "RGB" and min(out.size) >= 8
    a, na = random_edit(photo, np.random.default_rng(5))
    b, nb = random_edit(photo, np.random.default_rng(5))
    assert na == nb and np.array_equal(np.asarray(a), np.asarray(b))


def test_strength_widens_ranges(photo):
    """Training strength 2 reaches harder edits than the evaluation range allows."""
    sizes1 = [apply_family("downscale", photo, np.random.default_rng(s), 1.0).width for s in range(40)]
    sizes2 = [apply_family("downscale", photo, np.random.default_rng(s), 2.0).width for s in range(40)]
    assert min(sizes1) >= round(0.2 * photo.width) - 1 and max(sizes1) <= round(0.35 * photo.width) + 1
    assert max(sizes2) > max(sizes1)
