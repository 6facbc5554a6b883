"""Every picture a user can upload encodes as an image query: strips, slivers, turned shapes on
a fill, captions, noise. The finders (flat frame, pasted photo, collage panels, turned fill)
map their boxes back from a small copy of the picture, and a strip a few pixels high once came
back as an empty box that cropping refused (an HTTP 500). Pictures are drawn from a seed, so a
failing example replays exactly."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import example, given, settings, strategies as st
from PIL import Image, ImageDraw

from encoders.keypoints import extract
from encoders.registry import get_encoder
from encoders.tta import REF_VIEWS, content_boxes, ref_view_images, searched_boxes
from rayapp.config import QueryConfig
from rayapp.searcher import encode_query


def _side(rng: np.random.Generator) -> int:
    """A side length: a sliver, a thumbnail or a photo, equally likely."""
    return int(rng.choice([rng.integers(1, 12), rng.integers(12, 120), rng.integers(120, 900)]))


def _background(rng: np.random.Generator, w: int, h: int) -> Image.Image:
    kind = rng.integers(0, 4)
    if kind == 0:
        a = np.full((h, w, 3), rng.integers(0, 256, 3), np.uint8)
    elif kind == 1:
        a = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    elif kind == 2:
        a = np.repeat(np.linspace(0, 255, w, dtype=np.uint8)[None, :, None], h, 0).repeat(3, 2)
    else:
        period = max(1, int(rng.integers(1, 30)))
        a = ((np.arange(w)[None, :, None] // period) % 2 * 255).astype(np.uint8).repeat(h, 0).repeat(3, 2)
    return Image.fromarray(np.ascontiguousarray(a), "RGB")


def picture(seed: int) -> Image.Image:
    """A structured random picture: a flat, noisy, graded or striped ground, up to seven
    rectangles, lines, captions, pasted noise patches or ellipses, and sometimes a turn on a fill."""
    rng = np.random.default_rng(seed)
    w, h = _side(rng), _side(rng)
    img = _background(rng, w, h)
    draw = ImageDraw.Draw(img)
    for _ in range(int(rng.integers(0, 8))):
        kind = rng.integers(0, 5)
        x0, y0 = int(rng.integers(-w // 2 - 1, w + 1)), int(rng.integers(-h // 2 - 1, h + 1))
        x1, y1 = x0 + int(rng.integers(0, w + 1)), y0 + int(rng.integers(0, h + 1))
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        if kind == 0:
            draw.rectangle((x0, y0, x1, y1), fill=colour)
        elif kind == 1:
            draw.line((x0, y0, x1, y1), fill=colour, width=int(rng.integers(1, 6)))
        elif kind == 2:
            draw.text((x0, y0), "LINK IN BIO", fill=colour, font_size=int(rng.integers(4, 60)))
        elif kind == 3:
            img.paste(Image.fromarray(rng.integers(0, 256, (max(1, y1 - y0), max(1, x1 - x0), 3), dtype=np.uint8)),
                      (x0, y0))
        else:
            draw.ellipse((x0, y0, max(x0, x1), max(y0, y1)), fill=colour)
    if rng.random() < 0.4:
        fill = [(0, 0, 0), (255, 255, 255), tuple(int(c) for c in rng.integers(0, 256, 3))][int(rng.integers(0, 3))]
        img = img.rotate(float(rng.uniform(-60, 60)), expand=bool(rng.random() < 0.5), fillcolor=fill)
    return img


@pytest.fixture(scope="module")
def encoder():
    return get_encoder()


@settings(max_examples=120, deadline=None)
@given(st.integers(0, 2**32 - 1))
@example(5).via("a 137x6 strip: the pasted-photo finder's box came back upside down")
@example(60).via("a 4x867 strip: the same, on the other axis")
@example(1741).via("a 4x898 strip: the flat frame's box came back empty")
def test_any_picture_encodes_as_a_query_and_as_a_stored_image(encoder, seed):
    img = picture(seed)
    for box in searched_boxes(content_boxes(img)):
        assert 0 <= box[0] < box[2] <= img.width and 0 <= box[1] < box[3] <= img.height, (img.size, box)
    views = encode_query(encoder, img, QueryConfig())
    assert len(views.names) == len(views.codes) and 2 <= len(views.names) <= 24
    assert views.codes.shape[1] == encoder.bits // 8
    extract(img)
    for crop in ref_view_images(img, list(REF_VIEWS)):
        assert encoder.preprocess(crop).shape[:2] == (encoder.input_size, encoder.input_size)
