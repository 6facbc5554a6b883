"""Find a photo pasted into another picture: an axis-aligned rectangle with sharp straight sides.

A copy pasted onto another photo, or framed by a social-media post with avatars, icons and
captions, shares too few pixels with the original for its global code to land near it, and its
surroundings are not flat, so ``encoders.frame`` does not fire. What such a paste always leaves is
a rectangle whose sides are one- or two-pixel steps that run straight for their whole length;
edges inside photos are rarely both straight and that sharp for so long.

At 192 pixels on the long side, every pixel gets a ridge test per axis: its step across the line
(the largest over the three colour channels, so a side between two regions of like brightness but
unlike colour still counts) is large and at least twice the steps two pixels to either side.
Columns and rows rich in ridges are the candidate sides; every rectangle they form (10-85% of the
image, each side at least 22% of its length) is scored by the ridge share along its sides that
are not on the image border, and the best one is returned when those sides keep on average
``MIN_MEAN_SUPPORT`` of their length and each at least ``MIN_SUPPORT``. Where a pasted photo
meets a background of like colour its side has gaps, so one weak side must not veto a box that
the others hold.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np
from PIL import Image

from encoders.frame import axis_scales, channel_max, in_image

SIZE = 192
MIN_STEP = 12.0  # levels (of 255) a side's step must reach in some colour channel
MIN_SUPPORT = 0.45  # share of each inner side's length that must be a ridge
MIN_MEAN_SUPPORT = 0.7  # mean share over the inner sides
CANDIDATES = 8  # candidate columns and rows per axis
MIN_SIDE = 0.22  # each side of the rectangle spans at least this share of the image's side
MIN_AREA, MAX_AREA = 0.10, 0.85  # the rectangle's share of the image
DISTINCT_IOU = 0.5  # a rectangle overlapping a better one this much is that one again


def _small(img: Image.Image) -> tuple[np.ndarray, float]:
    """(H, W, 3) int16 RGB at SIZE on the long side (steps between pixels stay exact and cheap),
    and the scale from ``img``."""
    w, h = img.size
    scale = SIZE / max(w, h)
    size = (max(16, round(w * scale)), max(16, round(h * scale)))
    return np.asarray(img.convert("RGB").resize(size, Image.BILINEAR), dtype=np.int16), scale


def _ridges(rgb: np.ndarray) -> np.ndarray:
    """(H, W-1) bool: the step between columns x and x+1 is a sharp ridge along the row."""
    d = channel_max(np.abs(np.diff(rgb, axis=1)))
    pad = np.pad(d, ((0, 0), (2, 2)))
    side = np.maximum(pad[:, :-4], pad[:, 4:])
    return (d >= MIN_STEP) & (d >= 2 * side)


def _peaks(profile: np.ndarray, k: int) -> list[int]:
    """Up to ``k`` local maxima of a ridge-count profile, strongest first, 3 apart."""
    out: list[int] = []
    for i in np.argsort(-profile, kind="stable"):
        if profile[i] <= 0 or len(out) == k:
            break
        if all(abs(int(i) - j) > 2 for j in out):
            out.append(int(i))
    return out


def _runs(ridge: np.ndarray, lines: np.ndarray) -> np.ndarray:
    """Per candidate line, the running count of rows where it (or a neighbour) is a ridge, so
    any side's support is one subtraction; a line on the image border never breaks a side, so
    its count runs as if every row were a ridge."""
    out = np.tile(np.arange(ridge.shape[0] + 1), (len(lines), 1))
    for i, x in enumerate(lines):
        if 0 <= x < ridge.shape[1]:
            band = ridge[:, max(0, x - 1):x + 2].any(axis=1)
            out[i, 1:] = np.cumsum(band)
    return out


def _side(runs: np.ndarray, line: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """Share of rows lo..hi (broadcast) where each ``line`` (an index into ``runs``) is a ridge."""
    return (runs[line, hi] - runs[line, lo]) / np.maximum(1, hi - lo)


def _best_boxes(vr: np.ndarray, hr: np.ndarray, xs: list[int], ys: list[int], k: int = 1) -> list[tuple]:
    """The ``k`` best-scored distinct rectangles over every pair of candidate columns and rows
    (first of equals in row-major order of (column pair, row pair)), as (x0, y0, x1, y1) lines;
    a rectangle overlapping a better one by DISTINCT_IOU or more is that one again."""
    h, w = vr.shape[0], hr.shape[0]
    xl, yl = np.array(sorted(set(xs))), np.array(sorted(set(ys)))
    # every pair a < b of each, in ``itertools.combinations`` order
    (xa, xb), (ya, yb) = np.triu_indices(len(xl), k=1), np.triu_indices(len(yl), k=1)
    x0, x1 = xl[xa][:, None], xl[xb][:, None]   # column pairs down, row pairs across
    y0, y1 = yl[ya][None, :], yl[yb][None, :]
    bw, bh = x1 - x0, y1 - y0
    area = bw * bh / (w * h)
    ok = (MIN_SIDE * w <= bw) & (MIN_SIDE * h <= bh) & (MIN_AREA <= area) & (area <= MAX_AREA)
    vruns, hruns = _runs(vr, xl), _runs(hr, yl)
    sides = [_side(vruns, xa[:, None], y0 + 1, y1 + 1), _side(vruns, xb[:, None], y0 + 1, y1 + 1),
             _side(hruns, ya[None, :], x0 + 1, x1 + 1), _side(hruns, yb[None, :], x0 + 1, x1 + 1)]
    inner = [~np.broadcast_to(e, ok.shape) for e in (x0 < 0, x1 >= w - 1, y0 < 0, y1 >= h - 1)]
    count = sum(m.astype(int) for m in inner)
    total, low = np.zeros(ok.shape), np.full(ok.shape, np.inf)
    for side, m in zip(sides, inner):  # summed in side order, as a mean over the inner sides is
        total = total + np.where(m, side, 0.0)
        low = np.minimum(low, np.where(m, side, np.inf))
    score = total / np.maximum(count, 1)
    ok &= (count >= 3) & (low >= MIN_SUPPORT) & (score >= MIN_MEAN_SUPPORT) & (score > 0)
    out: list[tuple] = []
    ranked = np.argsort(-np.where(ok, score, -1.0).ravel(), kind="stable")
    for i, j in zip(*np.unravel_index(ranked[:int(ok.sum())], ok.shape)):
        box = (int(x0[i, 0]) + 1, int(y0[0, j]) + 1, int(x1[i, 0]) + 1, int(y1[0, j]) + 1)
        if all(box_iou(box, b) < DISTINCT_IOU for b in out):
            out.append(box)
        if len(out) == k:
            break
    return out


def box_iou(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> float:
    """Intersection over union of two (left, top, right, bottom) boxes.

    >>> box_iou((0, 0, 10, 10), (5, 0, 15, 10))
    0.3333333333333333
    """
    w = max(0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = w * h
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def paste_box(img: Image.Image) -> tuple[int, int, int, int] | None:
    """(left, top, right, bottom) of a photo pasted into ``img``, or None when there is none.

    >>> ramp = np.linspace(40, 200, 192).astype(np.uint8)
    >>> bg = Image.fromarray(np.stack([np.tile(ramp, (144, 1))] * 3, axis=-1))
    >>> bg.paste(Image.fromarray(np.stack([np.tile(ramp[::-2, None], (1, 96))[:72]] * 3, -1)), (60, 40))
    >>> paste_box(bg)
    (60, 40, 156, 112)
    """
    boxes = paste_boxes(img, 1)
    return boxes[0] if boxes else None


class RidgeMaps(NamedTuple):
    """An image at the finders' size and its sharp steps (``ridge_maps``)."""
    rgb: np.ndarray     # (H, W, 3) int16 at SIZE on the long side
    scale: float        # from the image's pixels to these
    vr: np.ndarray      # (H, W-1): ridges between columns, along rows (vertical sides)
    hr: np.ndarray      # (W, H-1): ridges between rows, along columns (horizontal sides)


def ridge_maps(img: Image.Image) -> RidgeMaps:
    """``img`` at SIZE with its ridge maps, computed once for the pasted-photo finder and the
    collage splitter (``encoders.panels``)."""
    rgb, scale = _small(img)
    return RidgeMaps(rgb, scale, _ridges(rgb), _ridges(rgb.transpose(1, 0, 2)))


def paste_boxes(img: Image.Image, k: int, maps: RidgeMaps | None = None) -> list[tuple[int, int, int, int]]:
    """The ``k`` most likely boxes of a photo pasted into ``img``, best first, each a different
    rectangle (:func:`paste_box` is the first): where the true sides are broken, the runner-up
    is often the pasted photo. ``maps``: ``ridge_maps(img)`` when the caller has them."""
    maps = maps if maps is not None else ridge_maps(img)
    rgb, _, vr, hr = maps
    h, w = rgb.shape[:2]
    xs = _peaks(vr.sum(axis=0).astype(np.float32), CANDIDATES) + [-1, w - 1]
    ys = _peaks(hr.sum(axis=0).astype(np.float32), CANDIDATES) + [-1, h - 1]
    return in_pixels(_best_boxes(vr, hr, xs, ys, k), maps, img.size)


def in_pixels(boxes: list[tuple], maps: RidgeMaps, size: tuple[int, int]) -> list[tuple[int, int, int, int]]:
    """Boxes at the finders' size -> (left, top, right, bottom) in the pixels of an image of
    ``size``, clipped to it; a box left empty is dropped. An axis that ``_small`` stretched to
    its 16-pixel floor (a strip of an image) maps back by its own scale, not the long side's."""
    h, w = maps.rgb.shape[:2]
    scales = axis_scales(size, (w, h), maps.scale)
    return [b for b in (in_image(box, scales, size) for box in boxes) if b is not None]
