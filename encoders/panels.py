"""Split a collage into its panels: a picture cut by straight seams that run its whole length.

A copy shown as one panel of a collage (two photos side by side, a 2x2 grid, a multi-panel
meme) fills only part of the query, and the part's sides are seams: straight, sharp steps, or a
thin gutter, that cross the whole picture (or the whole of the panel they split, as cuts of a
guillotine do). ``encoders.region`` looks for one pasted rectangle and scores every rectangle its
candidate lines form; a grid has many such rectangles and the copy is only one cell of them.

Seams are found with the pasted-photo finder's ridge test (``encoders.region``): a column is a
seam of a part when it, or a neighbour, is a ridge on at least ``SEAM_SUPPORT`` of the part's
rows. A part is cut at every seam of one axis (the axis with the better-supported seam; seams a
few pixels apart are one gutter), and each piece is split again, up to ``DEPTH`` cuts deep.
The panels are the leaves whose sides are each at least ``MIN_SIDE`` of the picture's.
"""
from __future__ import annotations

import numpy as np
from PIL import Image

from encoders.frame import channel_max
from encoders.region import RidgeMaps, in_pixels, ridge_maps

SEAM_SUPPORT = 0.85  # share of a part's rows (columns) along which a seam must be a ridge
GUTTER = 4           # seams closer than this (pixels at the finder's size) are one gutter
FLAT_TOL = 12        # levels a gutter pixel may differ from its column's median colour
BUSY = 0.5           # ... and the most flat the photo beside a gutter may be
MIN_SIDE = 0.2       # each side of a panel spans at least this share of the picture's side
MAX_PANELS = 4       # a picture cut into more pieces is a pattern, not a collage
DEPTH = 2            # cuts nested at most this deep (a 2x2 grid is two)

Box = tuple[int, int, int, int]


def _seams(ridge: np.ndarray, lo: int, hi: int, x0: int, x1: int) -> tuple[list[int], float]:
    """Cuts strictly inside columns x0..x1, more than a gutter from either end, where a ridge
    runs along rows lo..hi for SEAM_SUPPORT of them (a gutter's two sides merged into one cut
    at its middle), and the best support among them."""
    sub = ridge[lo:hi]
    if sub.shape[0] == 0:
        return [], 0.0
    near = sub.copy()  # a column or its neighbour
    near[:, 1:] |= sub[:, :-1]
    near[:, :-1] |= sub[:, 1:]
    first, last = x0 + GUTTER, min(x1 - 1 - GUTTER, ridge.shape[1])
    if last <= first:
        return [], 0.0
    support = near[:, first:last].mean(axis=0)
    cols = [first + int(i) for i in np.flatnonzero(support >= SEAM_SUPPORT)]
    merged: list[list[int]] = []
    for c in cols:
        if merged and c - merged[-1][-1] <= GUTTER:
            merged[-1].append(c)
        else:
            merged.append([c])
    return [(g[0] + g[-1]) // 2 + 1 for g in merged], float(support[[c - first for c in cols]].max(initial=0.0))


def _gutters(rgb: np.ndarray, x0: int, x1: int) -> tuple[list[int], float]:
    """Cuts at thin gutters strictly inside columns x0..x1 of an (rows, columns, 3) part: runs of
    at most GUTTER columns, each one colour (within FLAT_TOL) down SEAM_SUPPORT of the rows,
    between columns that are not, and busier still (under BUSY) two columns beyond (the
    columns next to it are partly its colour at the finder's size). A gutter thinner than the
    ridge test's reach leaves its two sides each too close to the other to pass it; a wide flat
    band is a frame instead."""
    if rgb.shape[0] == 0 or x1 - x0 < 3:
        return [], 0.0
    part = rgb[:, x0:x1]
    middle = np.partition(part, len(part) // 2, axis=0)[len(part) // 2]  # each column's median colour
    flat = (channel_max(np.abs(part - middle)) <= FLAT_TOL).mean(axis=0)
    cuts, best, run = [], 0.0, []
    for i, f in enumerate(np.append(flat, 0.0)):
        if f >= SEAM_SUPPORT:
            run.append(i)
            continue
        if run and len(run) <= GUTTER and run[0] > GUTTER and i < len(flat) - GUTTER \
                and max(flat[run[0] - 3], flat[i + 2]) < BUSY:
            cuts.append(x0 + (run[0] + run[-1] + 1) // 2)
            best = max(best, float(flat[run].min()))
        run = []
    return cuts, best


def _cuts(ridge: np.ndarray, rgb: np.ndarray, lo: int, hi: int, x0: int, x1: int) -> tuple[list[int], float]:
    """The seams and gutters that cut columns x0..x1 of rows lo..hi, and the best support."""
    seams, s = _seams(ridge, lo, hi, x0, x1)
    gutters, g = _gutters(rgb[lo:hi], x0, x1)
    cuts = sorted(set(seams) | {c for c in gutters if all(abs(c - d) > GUTTER for d in seams)})
    return cuts, max(s, g)


def _split(vr: np.ndarray, hr: np.ndarray, rgb: np.ndarray, box: Box, depth: int) -> list[Box]:
    """The leaves of cutting ``box`` (x0, y0, x1, y1 at the finder's size) at its seams."""
    x0, y0, x1, y1 = box
    if depth == 0:
        return [box]
    vcuts, vs = _cuts(vr, rgb, y0, y1, x0, x1)                         # vertical: columns
    hcuts, hs = _cuts(hr, rgb.transpose(1, 0, 2), x0, x1, y0, y1)      # horizontal: rows
    if not vcuts and not hcuts:
        return [box]
    if vcuts and (not hcuts or vs >= hs):
        edges = [x0] + vcuts + [x1]
        parts = [(a, y0, b, y1) for a, b in zip(edges, edges[1:])]
    else:
        edges = [y0] + hcuts + [y1]
        parts = [(x0, a, x1, b) for a, b in zip(edges, edges[1:])]
    return [leaf for p in parts for leaf in _split(vr, hr, rgb, p, depth - 1)]


def panel_boxes(img: Image.Image, maps: RidgeMaps | None = None) -> list[Box]:
    """The panels of a collage ``img`` as (left, top, right, bottom) boxes in its pixels,
    largest first; [] when it is not cut into 2-``MAX_PANELS`` panels. ``maps``:
    ``encoders.region.ridge_maps(img)`` when the caller has them.

    >>> a = np.full((120, 100, 3), 30, np.uint8); a[:, :, 0] = np.arange(100)[None] * 2
    >>> b = np.full((120, 92, 3), 200, np.uint8); b[:, :, 1] = np.arange(120)[:, None]
    >>> panel_boxes(Image.fromarray(np.concatenate([a, b], axis=1)))
    [(0, 0, 100, 120), (100, 0, 192, 120)]
    """
    maps = maps if maps is not None else ridge_maps(img)
    rgb, _, vr, hr = maps
    h, w = rgb.shape[:2]
    leaves = _split(vr, hr, rgb, (0, 0, w, h), DEPTH)
    panels = [b for b in leaves if b[2] - b[0] >= MIN_SIDE * w and b[3] - b[1] >= MIN_SIDE * h]
    if not 2 <= len(panels) <= MAX_PANELS:
        return []
    out = in_pixels(panels, maps, img.size)
    return sorted(out, key=lambda b: -(b[2] - b[0]) * (b[3] - b[1]))
