"""Find a photo turned by a few degrees inside a flat fill, and turn it back.

A copy turned by 8-45 degrees usually keeps its frame's size: the corners it lost are filled
with one flat colour (black, white), and the photo's sides cut across them as straight lines at
the turn's angle. Those lines give the angle: the fill that touches the image's corners is
flood-connected, the convex hull of everything else is traced, and the hull's sides that do not
lie on the image border vote for an angle modulo 90 degrees, weighted by length. Turning the
query back by that angle and cropping the photo's own extent gives a view the code knows.

A turn filled by reflection, or a photo with no flat fill, gives no such lines; then nothing is
returned. A turn cropped to the upright rectangle inside it has no fill at all. For these,
unless a framed, pasted or collaged photo is found, the query is also searched tilted a fixed
``TILT`` degrees either way (``tilted``): the model is
trained on turns, but its code drifts as the angle grows, and a view turned part of the way
back lands nearer the original for turns of about 10-45 degrees.
"""
from __future__ import annotations

import math

import cv2
import numpy as np
from PIL import Image

SIDE = 128          # longest side the fill is traced at
FILL_TOL = 10.0     # grey levels a fill pixel may differ from the corners' colour
MIN_FILL, MAX_FILL = 0.03, 0.6  # share of the image the corner fill covers
MIN_ANGLE = 3.0     # degrees; a smaller turn is searched as given
AGREE = 3.0         # degrees within which the hull's sides agree on one angle
MIN_SHARE = 0.6     # share of the inner hull length that must agree
EDGE_VOTES = 0.2    # Hough votes a straight fill edge needs, as a share of the shorter side
EDGE_FALLBACK = True  # look for straight fill edges when the hull's sides disagree
TILT = 22.0         # degrees either way a query in which no finder fires is also searched at
TILT_SIDE = 256     # a tilted view is made from the query reduced to a long side under twice this


def _corner_fill(g: np.ndarray) -> np.ndarray | None:
    """Bool mask of the flat fill connected to the image corners, or None when the corners do
    not share one colour."""
    corners = np.array([g[0, 0], g[0, -1], g[-1, 0], g[-1, -1]])
    fill = float(np.median(corners))
    if np.abs(corners - fill).max() > FILL_TOL:
        return None
    flat = (np.abs(g - fill) <= FILL_TOL).astype(np.uint8)
    _, labels = cv2.connectedComponents(flat)
    corner_labels = [labels[0, 0], labels[0, -1], labels[-1, 0], labels[-1, -1]]
    mask = np.isin(labels, corner_labels) & flat.astype(bool)
    return mask if MIN_FILL <= mask.mean() <= MAX_FILL else None


def _hull_sides(content: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(angles mod 90 in degrees, lengths) of the content's convex-hull sides that do not lie
    along the image border."""
    contours, _ = cv2.findContours(content.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    if not contours:
        return np.zeros(0), np.zeros(0)
    hull = cv2.convexHull(max(contours, key=cv2.contourArea))[:, 0, :].astype(np.float32)
    h, w = content.shape
    borders = ((0, 0.0), (0, w - 1.0), (1, 0.0), (1, h - 1.0))
    angles, lengths = [], []
    for p, q in zip(hull, np.roll(hull, -1, axis=0)):
        length = float(np.hypot(*(q - p)))
        on_border = any(abs(p[i] - e) < 1.5 and abs(q[i] - e) < 1.5 for i, e in borders)
        if length >= 4 and not on_border:
            angles.append(np.degrees(np.arctan2(q[1] - p[1], q[0] - p[0])) % 90.0)
            lengths.append(length)
    return np.array(angles), np.array(lengths)


def _gap(angles: np.ndarray, t: float) -> np.ndarray:
    """Degrees between each of ``angles`` and ``t``, both taken mod 90."""
    return np.abs((angles - t + 45.0) % 90.0 - 45.0)


def _hull_angle(fill: np.ndarray, shape: tuple[int, int]) -> float | None:
    """The angle (mod 90) most of the content's hull sides agree on, or None."""
    angles, lengths = _hull_sides(~fill)
    if not len(angles):
        return None
    best = max(angles, key=lambda t: lengths[_gap(angles, t) < AGREE].sum())
    agree = lengths[_gap(angles, best) < AGREE].sum()
    if agree < MIN_SHARE * lengths.sum() or agree < 0.3 * min(shape):
        return None
    return float(best)


def _edge_angle(fill: np.ndarray) -> float | None:
    """The angle (mod 90) of the fill's strongest straight edge (Hough) when another of its four
    strongest agrees, or None. A caption or a dark object touching the fill gives the content's
    hull extra corners that break its agreement, but few long straight edges."""
    edges = cv2.Canny(fill.astype(np.uint8) * 255, 50, 150)
    lines = cv2.HoughLines(edges, 1, np.pi / 360, threshold=max(8, int(EDGE_VOTES * min(fill.shape))))
    if lines is None or not len(lines):  # OpenCV answers None or an empty array
        return None
    angles = np.degrees(lines[:4, 0, 1]) % 90.0  # a line's normal and its direction agree mod 90
    return float(angles[0]) if (_gap(angles, angles[0]) < AGREE).sum() >= 2 else None


def turn_angle(img: Image.Image) -> float | None:
    """Degrees the photo inside ``img`` is turned clockwise (within ±45), or None when no flat
    corner fill with straight sides shows a turn of at least MIN_ANGLE."""
    scale = SIDE / max(img.size)
    size = (max(8, round(img.size[0] * scale)), max(8, round(img.size[1] * scale)))
    g = np.asarray(img.convert("L").resize(size, Image.BILINEAR), dtype=np.float32)
    fill = _corner_fill(g)
    if fill is None:
        return None
    best = _hull_angle(fill, g.shape)
    if best is None and EDGE_FALLBACK:
        best = _edge_angle(fill)
    if best is None:
        return None
    theta = best if best <= 45.0 else best - 90.0
    return theta if abs(theta) >= MIN_ANGLE else None


def turned_back(img: Image.Image, theta: float) -> Image.Image:
    """``img`` turned back by ``theta`` degrees (``turn_angle``) and cropped to the photo's
    extent: the bounding box of what is not corner fill, turned back the same way. That is the
    whole frame for a turn that kept its frame's size, and the photo's own rectangle for a turn
    that grew its frame to fit."""
    small = img.convert("L")
    small.thumbnail((4 * SIDE, 4 * SIDE), Image.BILINEAR)
    fill = _corner_fill(np.asarray(small, dtype=np.float32))
    content = Image.fromarray(np.where(fill, 0, 255).astype(np.uint8) if fill is not None
                              else np.full(small.size[::-1], 255, np.uint8))
    content = content.resize(img.size, Image.NEAREST)
    back = img.rotate(theta, resample=Image.BILINEAR, expand=True)
    box = content.rotate(theta, resample=Image.NEAREST, expand=True).getbbox()
    return back.crop(box) if box else back


def inscribed(width: float, height: float, degrees: float) -> tuple[float, float]:
    """(width, height) of the largest upright rectangle inside a ``width`` x ``height`` one
    turned by ``degrees``."""
    a = math.radians(abs(degrees))
    sin, cos = abs(math.sin(a)), abs(math.cos(a))
    long, short = max(width, height), min(width, height)
    if short <= 2.0 * sin * cos * long or abs(sin - cos) < 1e-10:
        half = 0.5 * short  # two corners touch the longer side
        return (half / sin, half / cos) if width >= height else (half / cos, half / sin)
    cos2 = cos * cos - sin * sin
    return (width * cos - height * sin) / cos2, (height * cos - width * sin) / cos2


def tilted(img: Image.Image, degrees: float, side: int = TILT_SIDE) -> Image.Image:
    """``img`` turned counter-clockwise by ``degrees`` and cropped to the largest upright
    rectangle inside the turned photo, so no fill enters the view. A big image is first
    reduced to a long side under ``2 * side``: the view only feeds the encoder's small input."""
    factor = int(max(img.size) // side)
    small = np.asarray((img.reduce(factor) if factor > 1 else img).convert("RGB"))
    h, w = small.shape[:2]
    out_w, out_h = (max(2, round(v)) for v in inscribed(w, h, degrees))
    turn = cv2.getRotationMatrix2D((w / 2.0, h / 2.0), degrees, 1.0)  # counter-clockwise, as PIL
    turn[:, 2] += (out_w / 2.0 - w / 2.0, out_h / 2.0 - h / 2.0)  # the photo's centre to the view's
    return Image.fromarray(cv2.warpAffine(small, turn, (out_w, out_h), flags=cv2.INTER_LINEAR,
                                          borderMode=cv2.BORDER_REPLICATE))
