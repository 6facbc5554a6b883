"""The framed-photo finder (encoders/frame.py) and the query views built on it, on the bundled
real photos (JPEG files, CC0/free licences in rayapp/samples/LICENSES.tsv)."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from PIL import Image, ImageDraw
from scipy import ndimage

from encoders.augment import screenshot
from encoders.frame import _opened, channel_max, content_box
from encoders.registry import get_encoder
from encoders.tta import costs, query_variants, view_names
from tests.helpers_images import SAMPLES, SCENES, as_jpeg, iou


def _framed(photo: Image.Image, colour: tuple[int, int, int], where: tuple[int, int],
            canvas: tuple[int, int], caption: bool) -> Image.Image:
    out = Image.new("RGB", canvas, colour)
    out.paste(photo, where)
    if caption:  # a meme-style caption in the band above the photo
        ImageDraw.Draw(out).text((10, 8), "WHEN THE BUILD IS GREEN", fill=(0, 0, 0), font_size=28)
    return as_jpeg(out)


@pytest.mark.parametrize("colour,caption", [((255, 255, 255), True), ((30, 30, 34), False),
                                            ((200, 40, 90), False)])
def test_finds_the_photo_inside_a_flat_frame(colour, caption):
    assert SCENES, "bundled scene photos missing"
    for path in SCENES:
        photo = Image.open(path).convert("RGB")
        photo.thumbnail((360, 360))
        w, h = photo.size
        framed = _framed(photo, colour, (40, 70), (w + 90, h + 140), caption)
        box = content_box(framed)
        assert box is not None, path.name
        # the finder works at 160 px, and a dark photo edge on a dark frame is lost to it
        assert iou(box, (40, 70, 40 + w, 70 + h)) >= 0.85, (path.name, box)


def test_finds_screenshots_and_leaves_plain_photos_alone():
    rng = np.random.default_rng(0)
    found = sum(content_box(as_jpeg(screenshot(Image.open(p).convert("RGB"), rng))) is not None
                for p in SAMPLES)
    assert found >= 0.8 * len(SAMPLES)
    for path in SCENES:  # a photo edge to edge is no frame
        assert content_box(Image.open(path).convert("RGB")) is None, path.name
    assert content_box(Image.new("RGB", (200, 100), "white")) is None  # nothing inside


def test_query_views_add_the_framed_photo_and_its_mirror():
    enc = get_encoder("deephash", device="cpu")
    photo = Image.open(SCENES[0]).convert("RGB")
    photo.thumbnail((300, 300))
    framed = _framed(photo, (250, 250, 250), (30, 60), (photo.width + 60, photo.height + 160), True)
    arrays, names = query_variants(framed, enc.preprocess, "flip_rot90")
    assert names == ["original", "flip", "rot90", "rot270", "negative", "content", "content+flip"]  # no tilt: a photo found
    assert tuple(names) == view_names("flip_rot90")[:7] and view_names("none", content=False) == ("original",)
    assert view_names("flip_rot90")[7:] == ("outside", "upright", "tilt")  # only a pasted photo has an outside
    assert all(a.shape == (1, enc.input_size, enc.input_size, 3) for a in arrays)
    assert np.array_equal(arrays[6], arrays[5][:, :, ::-1]) and np.array_equal(arrays[4], 255 - arrays[0])
    assert query_variants(framed, enc.preprocess, "none", content=False)[1] == ["original"]
    assert query_variants(framed, enc.preprocess, "none")[1] == ["original", "negative", "content"]
    assert query_variants(photo, enc.preprocess, "flip")[1] == ["original", "flip", "negative", "tilt", "tilt"]
    assert costs(names, 0.5, 1.5, 0.5, negative_cost=4).tolist() == [0, 0.5, 1.5, 1.5, 4, 0.5, 1.0]
    # the crop's code is much nearer the photo's own code than the framed image's code is
    own = enc.encode_batch(enc.preprocess(photo)[None])
    codes = [enc.encode_batch(a) for a in arrays]
    hamming = [int(np.unpackbits(c ^ own).sum()) for c in codes]
    assert hamming[5] < hamming[0], hamming


def test_a_framed_looking_picture_with_a_photo_pasted_in_searches_both_crops():
    """A photo beside flat space looks framed, and a second photo pasted into that space is
    what the pasted-photo finder sees: the two boxes differ, so both crops are searched."""
    from encoders.tta import box_iou, most_views
    enc = get_encoder("deephash", device="cpu")
    a, b = (Image.open(p).convert("RGB") for p in SCENES[:2])
    canvas = Image.new("RGB", (480, 360), (235, 235, 232))
    canvas.paste(a.resize((260, 200)), (0, 0))
    canvas.paste(b.resize((180, 135)), (290, 215))
    query = as_jpeg(canvas)
    arrays, names = query_variants(query, enc.preprocess, "flip_rot90")
    assert names[:9] == ["original", "flip", "rot90", "rot270", "negative", "content", "content+flip",
                         "content", "content+flip"]
    assert len(names) <= most_views("flip_rot90") and most_views("flip_rot90", "frame") == len(view_names("flip_rot90"))
    own = enc.encode_batch(enc.preprocess(b.resize((180, 135)))[None])
    hamming = [int(np.unpackbits(enc.encode_batch(x) ^ own).sum()) for x in arrays]
    assert hamming[7] < hamming[0], hamming  # the pasted photo's crop is near its own code
    assert box_iou((0, 0, 10, 10), (0, 0, 10, 10)) == 1.0 and box_iou((0, 0, 1, 1), (2, 2, 3, 3)) == 0.0


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 40), st.integers(1, 40), st.integers(0, 2**32 - 1), st.floats(0.1, 0.9))
def test_fast_opening_and_channel_max_equal_the_plain_numpy_and_scipy(h, w, seed, density):
    """The finder's OpenCV opening is scipy's binary opening (border included) and channel_max
    is max over the last axis, so the faster finder finds the same boxes."""
    rng = np.random.default_rng(seed)
    mask = rng.random((h, w)) < density
    assert np.array_equal(_opened(mask), ndimage.binary_opening(mask, structure=np.ones((5, 5), bool)))
    pixels = rng.integers(-300, 300, (h, w, 3)).astype(np.int16)
    assert np.array_equal(channel_max(pixels), pixels.max(axis=-1))


def test_a_pillarboxed_photo_in_a_post_is_searched_without_its_bars():
    """A portrait photo fitted into a landscape slot of a post sits between two black bars: the
    framed-photo view is the photo alone, and one-sided flat edges or thin flat margins (a
    backdrop) stay."""
    from encoders.frame import without_bars
    from encoders.tta import content_boxes
    photo = Image.open(SCENES[0]).convert("RGB").resize((150, 220))
    slot = Image.new("RGB", (330, 220), "black")
    slot.paste(photo, (90, 0))
    post = Image.new("RGB", (420, 420), (250, 250, 250))
    ImageDraw.Draw(post).rectangle((0, 0, 420, 40), fill=(59, 89, 152))  # the app's title bar
    post.paste(slot, (45, 130))
    frame = content_boxes(as_jpeg(post), "frame").frame
    assert iou(frame, (135, 130, 285, 350)) >= 0.9, frame
    backdrop = Image.new("RGB", (300, 200), (240, 240, 240))
    backdrop.paste(photo.resize((150, 200)), (150, 0))  # flat on the left only
    assert without_bars(backdrop, (0, 0, 300, 200)) == (0, 0, 300, 200)
    margins = Image.new("RGB", (300, 200), (240, 240, 240))
    margins.paste(photo.resize((282, 200)), (9, 0))  # a backdrop's thin flat margins are no letterbox
    assert without_bars(margins, (0, 0, 300, 200)) == (0, 0, 300, 200)
