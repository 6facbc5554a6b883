"""The turned-photo finder (encoders/rotation.py): a real photo turned by a few degrees inside a
black or white fill is found at its angle and turned back, ordinary photos are left alone, and
the query views search the upright photo."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from encoders.registry import get_encoder
from encoders.rotation import turn_angle, turned_back
from encoders.tta import costs, query_variants, view_names
from shards.vectors import vector_distances
from tests.helpers_images import SAMPLES, SCENES, as_jpeg


def _turned(img: Image.Image, degrees: float, fill=(0, 0, 0), expand: bool = False) -> Image.Image:
    """PIL turns counter-clockwise; a clockwise turn of ``degrees`` as the finder reports it."""
    return as_jpeg(img.rotate(-degrees, resample=Image.BILINEAR, expand=expand, fillcolor=fill))


@pytest.mark.parametrize("degrees,fill,expand", [(12, (0, 0, 0), False), (-30, (0, 0, 0), False),
                                                 (20, (255, 255, 255), True), (-40, (0, 0, 0), True)])
def test_finds_the_angle_of_a_photo_turned_in_a_flat_fill(degrees, fill, expand):
    found = []
    for path in SCENES[:4]:
        theta = turn_angle(_turned(Image.open(path).convert("RGB"), degrees, fill, expand))
        found.append(theta is not None and abs(theta - degrees) < 2.0)
    assert sum(found) >= 3, found


def test_leaves_upright_photos_alone():
    fired = sum(turn_angle(as_jpeg(Image.open(p).convert("RGB"))) is not None for p in SAMPLES)
    assert fired <= 0.1 * len(SAMPLES), f"{fired} of {len(SAMPLES)}"


def test_the_upright_view_is_closer_to_the_original_than_the_turned_copy():
    enc = get_encoder("deephash")
    originals = [Image.open(p).convert("RGB") for p in SCENES[:4]]
    copies = [_turned(im, 25) for im in originals]
    backs = [turned_back(c, turn_angle(c)) for c in copies]
    vec = lambda ims: enc.encode_vectors(np.stack([enc.preprocess(i) for i in ims]))[2]  # noqa: E731
    ref, turned, upright = vec(originals), vec(copies), vec(backs)
    d_turned = np.diag(vector_distances(turned, ref, enc.bits))
    d_upright = np.diag(vector_distances(upright, ref, enc.bits))
    assert (d_upright < d_turned).sum() >= 3, (d_upright, d_turned)


def test_query_views_include_the_upright_view_at_its_cost():
    img = _turned(Image.open(SCENES[0]).convert("RGB"), 15)
    arrays, names = query_variants(img, lambda im: np.asarray(im.resize((32, 32))), "flip")
    assert names[-1] == "upright" and len(arrays) == len(names)
    assert set(names) <= set(view_names("flip"))
    assert costs(["original", "upright"], upright_cost=0.7).tolist() == pytest.approx([0.0, 0.7])
    plain = query_variants(as_jpeg(Image.open(SCENES[0]).convert("RGB")), lambda im: np.asarray(im.resize((32, 32))), "flip")[1]
    assert "upright" not in plain
    assert "upright" not in query_variants(img, lambda im: np.asarray(im.resize((32, 32))), "flip", content=False)[1]
