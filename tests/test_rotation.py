"""The turned-photo finder (encoders/rotation.py): a real photo turned by a few degrees inside a
black or white fill is found at its angle and turned back, ordinary photos are left alone, and
the query views search the upright photo."""
from __future__ import annotations

import cv2
import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFont

from encoders.registry import get_encoder
from encoders import rotation
from encoders.rotation import TILT, inscribed, tilted, turn_angle, turned_back
from encoders.tta import TILT_COST, costs, query_variants, view_names
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


def _small(im: Image.Image) -> np.ndarray:
    return np.asarray(im.convert("RGB").resize((32, 32)))


@pytest.mark.parametrize("degrees", [TILT, -TILT, 45.0, 5.0])
def test_a_tilted_view_holds_no_fill(degrees):
    """The tilted view is cropped inside the turned photo: its corners are photo, not fill."""
    white = Image.new("RGB", (300, 200), (255, 255, 255))
    view = tilted(white, degrees)
    w, h = inscribed(300, 200, degrees)
    assert abs(view.size[0] - w) <= 2 and abs(view.size[1] - h) <= 2
    assert np.asarray(view).min() >= 250, "fill inside the tilted view"


def test_a_query_with_no_turned_photo_is_searched_tilted_either_way():
    plain = as_jpeg(Image.open(SCENES[0]).convert("RGB"))
    arrays, names = query_variants(plain, _small, "flip")
    assert names.count("tilt") == 2 and len(arrays) == len(names) and "upright" not in names
    assert costs(["original", "tilt"], tilt_cost=1.5).tolist() == pytest.approx([0.0, 1.5])
    assert costs(["tilt"]).tolist() == pytest.approx([TILT_COST])
    turned = _turned(Image.open(SCENES[0]).convert("RGB"), 15)
    assert "tilt" not in query_variants(turned, _small, "flip")[1]  # turned back upright instead
    assert "tilt" not in query_variants(plain, _small, "flip", content=False)[1]


def test_a_copy_turned_with_a_reflected_fill_is_nearer_through_a_tilted_view():
    """A copy turned 40 degrees in its own frame, the corners filled by reflection (no flat fill
    for the upright finder), is nearer its original through the view tilted back part of the way."""
    enc = get_encoder("deephash")
    originals = [Image.open(p).convert("RGB") for p in SCENES]
    copies = []
    for im in originals:
        w, h = im.size
        turn = cv2.getRotationMatrix2D((w / 2, h / 2), -40, 1.0)
        copies.append(as_jpeg(Image.fromarray(cv2.warpAffine(np.asarray(im), turn, (w, h),
                                                             borderMode=cv2.BORDER_REFLECT_101))))
    assert all(turn_angle(c) is None for c in copies)
    vec = lambda ims: enc.encode_vectors(np.stack([enc.preprocess(i) for i in ims]))[2]  # noqa: E731
    ref, as_given, back = vec(originals), vec(copies), vec([tilted(c, TILT) for c in copies])
    d_given = np.diag(vector_distances(as_given, ref, enc.bits))
    d_back = np.diag(vector_distances(back, ref, enc.bits))
    assert (d_back < d_given).sum() >= len(SCENES) - 1, (d_back, d_given)


def _captioned_thumbnail(img: Image.Image, degrees: float) -> Image.Image:
    """Turned in a black fill, two caption lines drawn across photo and fill, shrunk to a third."""
    w, h = img.size
    out = img.rotate(-degrees, resample=Image.BILINEAR, fillcolor=(0, 0, 0))
    draw, font = ImageDraw.Draw(out), ImageFont.load_default(size=max(10, h // 6))
    draw.text((w // 50, h // 20), "BIG NEWS today", fill=(40, 220, 90), font=font)
    draw.text((w // 50, 3 * h // 4), "me when classic", fill=(230, 60, 200), font=font)
    return as_jpeg(out.resize((w // 3, h // 3), Image.BILINEAR))


def test_a_caption_across_the_fill_does_not_hide_the_turn(monkeypatch):
    """Captions drawn over the fill give the photo's outline extra corners; its straight edges
    still give the angle (``_edge_angle``), where the outline alone gives none."""
    copies = [(_captioned_thumbnail(Image.open(p).convert("RGB"), d), d) for p in SCENES for d in (12, -20, 30)]

    def found() -> int:
        return sum(a is not None and abs(a - d) < 2.5 for a, d in ((turn_angle(c), d) for c, d in copies))

    assert found() >= 0.75 * len(copies)
    monkeypatch.setattr(rotation, "EDGE_FALLBACK", False)
    assert found() <= 0.25 * len(copies)


def test_a_fill_with_no_long_straight_edge_gives_no_angle():
    """Short fill edges give OpenCV no line (it answers an empty array, not None): no angle."""
    fill = np.zeros((96, 128), bool)
    for i in range(10):
        fill[i, :10 - i] = True  # a small corner triangle, its hypotenuse under the vote count
    assert rotation._edge_angle(fill) is None
