"""The pasted-photo finder (encoders/region.py): a real photo pasted into another real photo is
found, ordinary photos mostly are not, and the query views search the pasted photo's crop."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from hypothesis import given, settings, strategies as st
from PIL import Image

from encoders.region import paste_box
from encoders.tta import content_boxes, filled, outside_box, query_variants
from tests.helpers_images import SAMPLES, SCENES, as_jpeg, iou


def _pasted(photo: Path, background: Path, frac: float, where: tuple[float, float]):
    bg = Image.open(background).convert("RGB").resize((480, 360))
    img = Image.open(photo).convert("RGB")
    w, h = int(480 * frac), int(480 * frac * img.height / img.width)
    h = min(h, 330)
    x, y = int(where[0] * (480 - w)), int(where[1] * (360 - h))
    bg.paste(img.resize((w, h)), (x, y))
    return as_jpeg(bg), (x, y, x + w, y + h)


def test_finds_a_photo_pasted_onto_another_photo():
    found = 0
    clothes = [p for p in SAMPLES if p.name.startswith("clothing")][:6]
    pairs = list(zip(SCENES, SCENES[1:] + SCENES[:1])) + list(zip(clothes, SCENES))
    for i, (photo, background) in enumerate(pairs):
        where = (0.2 + 0.3 * (i % 3), 0.2 + 0.3 * ((i + 1) % 3))  # inside, as pastes mostly are
        img, box = _pasted(photo, background, 0.45 + 0.05 * (i % 4), where)
        got = paste_box(img)
        found += got is not None and iou(got, box) > 0.8
    assert found >= 0.6 * len(pairs), f"{found} of {len(pairs)}"


def test_leaves_most_ordinary_photos_alone():
    fired = sum(paste_box(as_jpeg(Image.open(p).convert("RGB"))) is not None for p in SAMPLES)
    assert fired <= 0.2 * len(SAMPLES), f"{fired} of {len(SAMPLES)}"


def test_query_views_search_the_pasted_photo():
    clothes = [p for p in SAMPLES if p.name.startswith("clothing")]
    img, box = _pasted(clothes[1], SCENES[1], 0.5, (0.5, 0.2))
    frame, pasted, _, _ = content_boxes(img)
    assert frame is None and pasted is not None and iou(pasted, box) > 0.8
    arrays, names = query_variants(img, lambda im: np.asarray(im.resize((32, 32))), "flip")
    # a photo pasted nearly full height also cuts the picture into panels, searched after it
    assert names[:5] == ["original", "flip", "negative", "content", "content+flip"]
    assert names[-1] == "outside"  # no tilted views: the finder found a photo
    assert len(arrays) == len(names)
    # the outside views: the widest strip beside the pasted photo (a clean part of the picture)
    # and the whole picture with the pasted photo filled in from around it
    assert outside_box(img.size, pasted) is not None and names.count("outside") >= 2


def test_filled_box_continues_what_surrounds_it():
    img = Image.new("RGB", (80, 60), (10, 20, 30))
    img.paste((90, 100, 110), (40, 0, 80, 60))
    img.paste((250, 250, 250), (30, 20, 50, 40))  # the box: half over each colour
    out = np.asarray(filled(img, (30, 20, 50, 40)))
    assert np.abs(out[30, 31].astype(int) - (10, 20, 30)).max() < 25  # its left edge: the left colour
    assert np.abs(out[30, 48].astype(int) - (90, 100, 110)).max() < 25  # its right edge: the right one
    assert (out[:20] == np.asarray(img)[:20]).all()  # the rest is untouched
    assert np.asarray(img)[30, 40].tolist() == [250, 250, 250]  # and so is the query itself
    whole = filled(img, (0, 0, 80, 60))  # nothing around the box: the image as it is
    assert (np.asarray(whole) == np.asarray(img)).all()


def test_a_photo_covered_by_another_is_nearer_its_code_with_the_box_filled_in():
    """Another photo pasted over about a third of each of 12 real photos: the query with the
    found box filled in from around it is nearer the photo's code than the query as given."""
    from encoders.registry import get_encoder
    enc = get_encoder("deephash")
    as_given, with_fill = [], []
    for i in range(12):
        photo = Image.open(SAMPLES[i]).convert("RGB")
        w, h = photo.size
        box = (int(w * 0.3), int(h * 0.25), int(w * 0.85), int(h * 0.85))
        query = photo.copy()
        query.paste(Image.open(SAMPLES[-1 - i]).convert("RGB").resize((box[2] - box[0], box[3] - box[1])), box[:2])
        found = content_boxes(query).pasted
        codes = enc.encode([photo, query, filled(query, found or box)])
        as_given.append(int(np.unpackbits(codes[0] ^ codes[1]).sum()))
        with_fill.append(int(np.unpackbits(codes[0] ^ codes[2]).sum()))
    assert np.mean(with_fill) < np.mean(as_given) - 4, (as_given, with_fill)


@settings(max_examples=150, deadline=None, derandomize=True)
@given(st.integers(1, 300), st.integers(1, 300), st.lists(st.floats(0, 1), min_size=4, max_size=4))
def test_filled_takes_any_box_of_any_picture(w, h, corners):
    """Any box of any picture, strips included: the picture comes back its size, changed only in the box."""
    x0, x1 = sorted(int(c * w) for c in corners[:2])
    y0, y1 = sorted(int(c * h) for c in corners[2:])
    _check_filled(w, h, (x0, y0, x1, y1))


def test_filled_takes_a_box_on_the_last_row_of_a_strip():
    """A box on the last row or column of a strip once left an empty patch to scale."""
    _check_filled(248, 5, (44, 4, 175, 5))  # the small copy is one row high
    _check_filled(210, 24, (34, 23, 69, 24))


def _check_filled(w: int, h: int, box: tuple[int, int, int, int]) -> None:
    x0, y0, x1, y1 = box
    img = Image.fromarray(np.random.default_rng(w * 1000 + h).integers(0, 255, (h, w, 3), dtype=np.uint8))
    out = np.asarray(filled(img, (x0, y0, x1, y1)))
    assert out.shape == (h, w, 3)
    keep = np.ones((h, w), bool)
    keep[y0:y1, x0:x1] = False
    assert (out[keep] == np.asarray(img)[keep]).all()  # only the box changes


def test_a_side_between_like_brightness_and_unlike_colour_is_found():
    """A photo pasted where the background has its brightness but not its colour: the step
    across the side is in the colour channels, not in grey."""
    bg = np.zeros((240, 320, 3), np.uint8)
    bg[..., 1] = 150  # green, grey level about 88
    ramp = np.linspace(0, 1, 140, dtype=np.float32)[:, None]
    photo = np.zeros((140, 120, 3), np.uint8)
    photo[..., 0] = (230 * (0.6 + 0.4 * ramp)).astype(np.uint8)  # reds, grey levels 41-69
    photo[..., 2] = (180 * (0.6 + 0.4 * ramp)).astype(np.uint8)  # ... with blue: about as bright
    img = bg.copy()
    img[50:190, 100:220] = photo
    got = paste_box(as_jpeg(Image.fromarray(img)))
    assert got is not None and iou(got, (100, 50, 220, 190)) > 0.8, got


def _best_box_one_by_one(vr, hr, xs, ys):
    """The box search written out box by box: what the vectorised ``_best_box`` must equal."""
    import itertools
    from encoders import region as r
    h, w = vr.shape[0], hr.shape[0]
    xl, yl = sorted(set(xs)), sorted(set(ys))
    vruns, hruns = r._runs(vr, np.array(xl)), r._runs(hr, np.array(yl))
    best, best_score = None, 0.0
    for (a, b), (c, d) in itertools.product(itertools.combinations(range(len(xl)), 2),
                                            itertools.combinations(range(len(yl)), 2)):
        x0, x1, y0, y1 = xl[a], xl[b], yl[c], yl[d]
        bw, bh = x1 - x0, y1 - y0
        if not (r.MIN_SIDE * w <= bw and r.MIN_SIDE * h <= bh and r.MIN_AREA <= bw * bh / (w * h) <= r.MAX_AREA):
            continue
        sides = [(vruns[i, y1 + 1] - vruns[i, y0 + 1]) / max(1, bh) for i in (a, b)] + \
                [(hruns[i, x1 + 1] - hruns[i, x0 + 1]) / max(1, bw) for i in (c, d)]
        inner = [s for s, edge in zip(sides, (x0 < 0, x1 >= w - 1, y0 < 0, y1 >= h - 1)) if not edge]
        if len(inner) < 3 or min(inner) < r.MIN_SUPPORT or np.mean(inner) < r.MIN_MEAN_SUPPORT:
            continue
        if np.mean(inner) > best_score:
            best, best_score = (x0 + 1, y0 + 1, x1 + 1, y1 + 1), float(np.mean(inner))
    return best


def test_the_vectorised_box_search_equals_the_search_box_by_box():
    from encoders import region as r
    rng = np.random.default_rng(0)
    images = [Image.open(p).convert("RGB") for p in SAMPLES[:12]]
    for i, photo in enumerate(SCENES):
        images.append(_pasted(photo, SCENES[(i + 1) % len(SCENES)], rng.uniform(0.3, 0.7),
                              tuple(rng.uniform(0, 1, 2)))[0])
    fired = 0
    for img in images:
        rgb, _ = r._small(img)
        vr, hr = r._ridges(rgb), r._ridges(rgb.transpose(1, 0, 2))
        xs = r._peaks(vr.sum(axis=0).astype(np.float32), r.CANDIDATES) + [-1, rgb.shape[1] - 1]
        ys = r._peaks(hr.sum(axis=0).astype(np.float32), r.CANDIDATES) + [-1, rgb.shape[0] - 1]
        best = (r._best_boxes(vr, hr, xs, ys, 1) or [None])[0]
        assert best == _best_box_one_by_one(vr, hr, xs, ys)
        fired += best is not None
    assert fired >= len(SCENES) // 2  # the comparison covers boxes found, not only misses
