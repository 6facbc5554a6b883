"""The collage splitter (encoders/panels.py): real photos side by side or in a 2x2 grid are cut
into their panels, ordinary photos mostly are not, and a collage's query views search each
panel's crop instead of the pasted-photo finder's boxes."""
from __future__ import annotations

import numpy as np
from PIL import Image, ImageOps

from encoders.panels import panel_boxes
from encoders.tta import content_boxes, query_variants, searched_boxes
from tests.helpers_images import SAMPLES, SCENES, as_jpeg, iou


def _side_by_side(left, right, gutter: int) -> tuple[Image.Image, list[tuple]]:
    a = ImageOps.fit(Image.open(left).convert("RGB"), (300, 300))
    b = ImageOps.fit(Image.open(right).convert("RGB"), (260, 300))
    out = Image.new("RGB", (560 + gutter, 300), (255, 255, 255))
    out.paste(a, (0, 0))
    out.paste(b, (300 + gutter, 0))
    return as_jpeg(out), [(0, 0, 300, 300), (300 + gutter, 0, 560 + gutter, 300)]


def _grid(photos) -> tuple[Image.Image, list[tuple]]:
    out = Image.new("RGB", (400, 400))
    boxes = [(x, y, x + 200, y + 200) for y in (0, 200) for x in (0, 200)]
    for p, box in zip(photos, boxes):
        out.paste(ImageOps.fit(Image.open(p).convert("RGB"), (200, 200)), box[:2])
    return as_jpeg(out), boxes


def _all_found(got: list[tuple], want: list[tuple]) -> bool:
    return len(got) == len(want) and all(max(iou(g, w) for g in got) > 0.8 for w in want)


def test_cuts_photos_side_by_side_with_and_without_a_gutter():
    pairs = list(zip(SCENES, SCENES[1:] + SCENES[:1]))
    found = 0
    for i, (left, right) in enumerate(pairs):
        img, want = _side_by_side(left, right, gutter=(0, 4, 8)[i % 3])
        found += _all_found(panel_boxes(img), want)
    assert found >= 0.7 * len(pairs), f"{found} of {len(pairs)}"


def test_cuts_a_two_by_two_grid_into_its_cells():
    """Cells of photos that meet with like colours (two white product shots) cannot be told apart,
    so this counts the cells found in grids of scenes."""
    photos = SCENES * 2
    cells = 0
    for i in range(0, len(photos) - 3, 2):
        img, want = _grid(photos[i:i + 4])
        got = panel_boxes(img)
        cells += sum(any(iou(g, w) > 0.8 for g in got) for w in want)
    assert cells >= 0.6 * 4 * len(range(0, len(photos) - 3, 2)), cells


def test_leaves_most_ordinary_photos_alone():
    fired = sum(bool(panel_boxes(as_jpeg(Image.open(p).convert("RGB")))) for p in SAMPLES)
    assert fired <= 0.1 * len(SAMPLES), f"{fired} of {len(SAMPLES)}"


def test_a_collage_searches_each_panel():
    img, want = _side_by_side(SCENES[0], SCENES[1], gutter=6)
    found = content_boxes(img)
    assert _all_found(list(found.panels), want)
    assert not any(iou(b, p) >= 0.8 for b in [found.pasted, *found.more] if b for p in found.panels)
    _, names = query_variants(img, lambda im: np.asarray(im.resize((32, 32))), "flip", found=found)
    crops = len(searched_boxes(found))
    assert names[:3 + 2 * crops] == ["original", "flip", "negative"] + ["content", "content+flip"] * crops
