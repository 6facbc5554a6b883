"""The look-alike check of the dedup job (``encoders.overlap``, ``rayapp.dedup_overlap``) on
real sample photos: copies agree once aligned, a different subject on the same background does
not, and a pair that cannot be aligned is given no verdict."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from PIL import Image, ImageEnhance, ImageOps

from encoders.overlap import agreement, tile_share
from rayapp.dedup_overlap import MIN_ALIGNED, MIN_SHARE, look_alike, split_look_alikes
from tests.helpers_images import edited_copy, look_alike as make_look_alike

SAMPLES = sorted((Path(__file__).resolve().parents[1] / "rayapp" / "samples").glob("*.jpg"))


@pytest.fixture(scope="module")
def photo() -> Image.Image:
    with Image.open(SAMPLES[0]) as im:
        return im.convert("RGB")


def _check(a: Image.Image, b: Image.Image) -> dict | None:
    found = agreement(a, b)
    return None if found is None else {"overlap": found.share, "overlap_colour": found.colour_share,
                                       "aligned": found.inliers}


def _channels_swapped(img: Image.Image) -> Image.Image:
    r, g, b = img.split()
    return Image.merge("RGB", (b, g, r))


@pytest.mark.parametrize("edit", ["resize", "jpeg", "text", "crop", "mirror", "colour", "grey", "swap"])
def test_a_copy_agrees_once_aligned(photo, edit):
    if edit == "mirror":
        copy = ImageOps.mirror(photo)
    elif edit == "colour":
        copy = ImageEnhance.Contrast(ImageEnhance.Brightness(photo).enhance(1.5)).enhance(0.6)
    elif edit in ("grey", "swap"):  # global colour maps: the colour check fits them
        copy = ImageOps.grayscale(photo).convert("RGB") if edit == "grey" else _channels_swapped(photo)
    else:
        copy = edited_copy(photo, edit)
    check = _check(copy, photo)
    assert check is not None and check["aligned"] >= MIN_ALIGNED, check
    assert check["overlap_colour"] >= MIN_SHARE and not look_alike(check), check
    assert check["overlap_colour"] >= check["overlap"] - 0.1, check  # a global colour edit is fitted


def test_a_subject_recoloured_apart_from_its_scene_loses_its_colour_tiles():
    """The subject recoloured and its many-coloured scene left alone fits no one global colour
    map: its tiles keep their grey texture but not their colour. (A subject on a plain wall
    does not show it: one linear map can send the wall to itself and one colour to another.)"""
    with Image.open(SAMPLES[0].parent / "pypi-scikit-image_00001.jpg") as im:
        scene = im.convert("RGB")
    w, h = scene.size
    box = (w // 5, h // 5, 4 * w // 5, 4 * h // 5)
    recoloured = scene.copy()
    recoloured.paste(ImageOps.colorize(ImageOps.grayscale(scene.crop(box)), "darkred", "yellow"), box[:2])
    check = _check(recoloured, scene)
    assert check is not None and check["aligned"] >= MIN_ALIGNED, check
    assert check["overlap"] >= 0.9 and check["overlap_colour"] <= check["overlap"] - 0.2, check


@pytest.mark.parametrize("other", [3, 4, 5])
def test_a_different_subject_on_the_same_background_is_a_look_alike(photo, other):
    with Image.open(SAMPLES[other]) as im:
        fake = make_look_alike(photo, im)
    check = _check(fake, photo)
    assert check is not None and check["aligned"] >= MIN_ALIGNED, check  # the background aligns
    assert look_alike(check), check


def test_an_unaligned_pair_keeps_its_edge(photo):
    flat = Image.new("RGB", photo.size, (120, 130, 140))
    assert agreement(flat, photo) is None  # no keypoints: no evidence either way
    assert not look_alike(None) and not look_alike({"overlap": None, "overlap_colour": None, "aligned": 0})
    edges = [{"a": "x", "b": "y"}, {"a": "x", "b": "z"}]
    check = {"a": "x", "b": "z", "overlap": 0.1, "overlap_colour": 0.1, "aligned": 30}
    kept, dropped = split_look_alikes(edges, {("x", "z"): check})
    assert [e["b"] for e in kept] == ["y"] and kept[0]["overlap"] is None
    assert [(e["b"], e["overlap"]) for e in dropped] == [("z", 0.1)]


def test_a_pixelated_copy_is_compared_at_its_block_size(photo, monkeypatch):
    """Pixelation's blocks are the copy's resolution: both images are blurred over half a block
    before their tiles are correlated, as for a copy shrunk onto the other."""
    import encoders.overlap as overlap
    from encoders.keypoints import detect
    w, h = photo.size
    pixelated = photo.resize((w // 10, h // 10), Image.BILINEAR).resize((w, h), Image.NEAREST)
    assert overlap.pixel_block(detect(pixelated)[0]) == 10.0 and overlap.pixel_block(detect(photo)[0]) == 0.0
    with_blocks = agreement(pixelated, photo)
    monkeypatch.setattr(overlap, "BLOCK_SIDES", range(0))  # no block looked for
    without = agreement(pixelated, photo)
    assert with_blocks.colour_share >= MIN_SHARE and with_blocks.colour_share > without.colour_share + 0.1


def test_an_alignment_onto_a_few_pixels_gives_no_verdict(monkeypatch):
    """A photo pasted at an eighth of the side into a plain canvas aligns onto a handful of the
    canvas' tiles: too few to judge, so no verdict (the pair keeps its edge)."""
    import encoders.overlap as overlap
    with Image.open(SAMPLES[0].parent / "pypi-scikit-image_00002.jpg") as im:
        photo = im.convert("RGB")
    canvas = Image.new("RGB", (1280, 1280), (128, 128, 128))
    w = int(1280 * 0.12)
    canvas.paste(photo.resize((w, round(w * photo.height / photo.width))), (500, 500))
    assert agreement(photo, canvas) is None and not look_alike(None)
    monkeypatch.setattr(overlap, "MIN_TEXTURED", 0)
    found = agreement(photo, canvas)  # it does align, on a few tiles
    assert found is not None and found.textured < 8, found


def test_tile_share_counts_textured_tiles_only():
    rng = np.random.default_rng(0)
    texture = rng.normal(128, 30, (64, 64)).astype(np.float32)
    cover = np.ones_like(texture)
    assert tile_share(texture, cover, texture) == (1.0, 16, 1.0)
    assert tile_share(texture, cover, 255 - texture)[0] == 0.0  # anti-correlated
    flat = np.full((64, 64), 100, np.float32)
    assert tile_share(flat, cover, flat) == (0.0, 0, 0.0)  # nothing to compare
    assert tile_share(texture, np.zeros_like(cover), texture) == (0.0, 0, 0.0)  # outside the warp


def test_tile_share_in_colour_fits_one_global_colour_map():
    rng = np.random.default_rng(1)
    tiles = rng.uniform(40, 200, (4, 4, 3)).astype(np.float32)  # one mean colour per 16-pixel tile
    colour = np.kron(tiles, np.ones((16, 16, 1), np.float32)) + rng.normal(0, 10, (64, 64, 1)).astype(np.float32)
    grey, cover = colour.mean(2), np.ones((64, 64), np.float32)
    tinted = colour @ np.array([[0.9, 0.1, 0.0], [0.0, 0.8, 0.2], [0.1, 0.0, 0.7]], np.float32) + 20
    assert tile_share(grey, cover, grey, (tinted, colour)) == (1.0, 16, 1.0)  # one map for all tiles
    half = colour.copy()
    half[:32] = colour[:32, :, ::-1]  # half the tiles recoloured differently from the rest
    assert tile_share(grey, cover, grey, (half, colour))[2] <= 0.75


@settings(max_examples=40, deadline=None)
@given(gain=st.floats(0.3, 3.0), offset=st.floats(-60, 60), seed=st.integers(0, 2**16))
def test_tile_share_ignores_brightness_and_contrast(gain, offset, seed):
    """A copy brighter, darker or flatter than its source agrees tile for tile: each tile's
    correlation is unchanged by any positive gain and offset of its intensities."""
    texture = np.random.default_rng(seed).normal(128, 30, (48, 64)).astype(np.float32)
    cover = np.ones_like(texture)
    assert tile_share(gain * texture + offset, cover, texture) == tile_share(texture, cover, texture)
