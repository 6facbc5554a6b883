"""Query-time augmentation (TTA): the views of a query image that are searched together.

A flipped or rotated copy is found by searching the query's flipped and rotated variants too and
keeping, per stored id, its best distance. Modes: ``none``, ``flip`` (+ mirror), ``flip_rot90``
(+ mirror, 90 and 270 degrees), ``flip_turns`` (+ mirror, every turn and the vertical mirror),
``d4`` (all 8 symmetries). With ``content`` on, a query that is a photo inside a flat frame
(padding, meme bands, a screenshot; ``encoders.frame``) or a photo pasted into another picture
(``encoders.region``) also searches that photo's crop and its mirror, a collage (``encoders.panels``)
searches each panel's, and a photo turned by a few degrees inside a flat fill
(``encoders.rotation``) is also searched turned back upright; a query in which no finder fires
is searched tilted a fixed angle either way instead. With ``content`` on, the query's colour
negative is searched too: inverting it again undoes a negated copy exactly, where no learned
code of a photo is near its negative's.

The index side has views too (``ref_view_images``): an image may also be stored under the
codes of some of its crops (``REF_VIEWS``; ``shards.views``), because a 128-bit code of a
60-75% crop is far from the full image's, or of its mirror, for searches that have no query
views (a stored record's). A stored view's match pays ``REF_VIEW_COST``.

Each view's distance first pays a prior cost (``costs``): most copies are neither mirrored,
turned nor framed, so another view must match clearly better than the query as given. Without
it every extra view is one more chance for an unrelated image to come close; ``flip_rot90`` then
lifted rotated copies to 1.0 recall@1 but lost as much elsewhere. The default costs were picked
on a validation benchmark built from training sources (see the model card), not on held-out.
"""
from __future__ import annotations

import math
from typing import Callable, NamedTuple, Sequence

import cv2
import numpy as np
from PIL import Image, ImageOps

from encoders.frame import content_box, without_bars
from encoders.panels import MAX_PANELS, panel_boxes
from encoders.region import box_iou, paste_boxes, ridge_maps
from encoders.rotation import TILT, tilted, turn_angle, turned_back

TTA_MODES = ("none", "flip", "flip_rot90", "flip_turns", "d4")
# Dihedral variant names in the order ``variants`` returns them (a mode takes a prefix);
# flip+rot180 is the vertical mirror.
VARIANT_NAMES = ("original", "flip", "rot90", "rot270", "rot180", "flip+rot180", "flip+rot90", "flip+rot270")
_COUNT = {"none": 1, "flip": 2, "flip_rot90": 4, "flip_turns": 6, "d4": 8}
# Prior costs in weighted-Hamming units (one fully confident bit = 1; plain Hamming: bits).
FLIP_COST = 1.0
ROT_COST = 5.0
HALF_TURN_COST = 5.0  # upside down: rot180 and the vertical mirror
CONTENT_COST = 1.0
OUTSIDE_COST = 0.5  # the largest part of the query outside a pasted photo (a photo pasted over the copy)
UPRIGHT_COST = 1.0  # the query turned back upright when its photo sits turned in a flat fill
TILT_COST = 2.0  # the query tilted TILT degrees either way, when no turned, framed or pasted photo is found
NEGATIVE_COST = 5.0  # the query's colour negative (a negated copy is found as its original)
OUTSIDE_MIN_AREA = 0.25  # that part must hold at least this share of the query
# The pasted photo's box is also searched filled in from around it (``filled``), on a copy this
# many pixels long, spreading inward this many pixels a step (chosen on validation).
FILL_SIDE, FILL_RADIUS = 64, 3
# When the frame and the pasted-photo finders both fire, boxes overlapping at least this much
# (intersection over union) are one photo found twice; below it both crops are searched.
SAME_BOX_IOU = 0.8
# Boxes of the pasted-photo finder searched, best first: the runner-up is the pasted photo where
# the best box is not (chosen on validation, see the model card).
PASTE_BOXES = 2
# Stored views of an indexed image: name -> (side fraction kept, x and y anchor: 0 = left/top,
# 0.5 = centred, 1 = right/bottom, mirrored). The centre crop finds centre-cropped copies, the
# corners off-centre crops (each measured in the model card). ``mirror``, the whole image
# mirrored, lets a search by a stored record alone (dedup over stored records) find a mirrored
# copy; ORB is not mirror-invariant, so it is stored with its own keypoints, where a crop is
# verified by its image's. A query that searches its own mirror leaves stored mirrors out.
REF_VIEWS = {"center70": (0.7, 0.5, 0.5, False), "top_left70": (0.7, 0.0, 0.0, False),
             "top_right70": (0.7, 1.0, 0.0, False), "bottom_left70": (0.7, 0.0, 1.0, False),
             "bottom_right70": (0.7, 1.0, 1.0, False), "mirror": (1.0, 0.5, 0.5, True)}
MIRRORED_REF_VIEWS = frozenset(name for name, spec in REF_VIEWS.items() if spec[3])
DEFAULT_REF_VIEWS = ("center70",)
REF_VIEW_COST = 1.0


def check_mode(mode: str) -> str:
    """``mode`` if it is a known TTA mode, else ValueError."""
    if mode not in TTA_MODES:
        raise ValueError(f"tta must be one of {', '.join(TTA_MODES)}; got {mode!r}")
    return mode


def variant_names(mode: str) -> tuple[str, ...]:
    """Names of the variants ``variants(batch, mode)`` returns, in that order."""
    return VARIANT_NAMES[:_COUNT[check_mode(mode)]]


def is_mirrored(name: str) -> bool:
    """Whether a named query view is mirrored (``flip``, ``flip+rot90``, ``content+flip``...)."""
    return "flip" in name


def costs(names: Sequence[str], flip_cost: float = FLIP_COST, rot_cost: float = ROT_COST,
          content_cost: float = CONTENT_COST, half_turn_cost: float = HALF_TURN_COST,
          outside_cost: float = OUTSIDE_COST, upright_cost: float = UPRIGHT_COST,
          tilt_cost: float = TILT_COST, negative_cost: float = NEGATIVE_COST) -> np.ndarray:
    """Prior cost added to each named view's distance: 0 for the original, ``flip_cost`` for the
    mirror, ``rot_cost`` for a quarter turn, ``half_turn_cost`` for upside down (rot180 and the
    vertical mirror), ``content_cost`` for the framed or pasted photo's crop (plus ``flip_cost``
    for its mirror), ``outside_cost`` for the part of the query outside a pasted photo,
    ``upright_cost`` for the query turned back upright, ``tilt_cost`` for it tilted,
    ``negative_cost`` for its colour negative."""
    if isinstance(names, str):
        raise TypeError("costs() takes a sequence of view names, e.g. variant_names(mode)")
    if min(flip_cost, rot_cost, content_cost, half_turn_cost, outside_cost, upright_cost, tilt_cost,
           negative_cost) < 0:
        raise ValueError(f"TTA costs must be >= 0; got flip {flip_cost}, rot {rot_cost}, "
                         f"content {content_cost}, half turn {half_turn_cost}, outside {outside_cost}, "
                         f"upright {upright_cost}, tilt {tilt_cost}, negative {negative_cost}")

    def one(name: str) -> float:
        if name == "outside":
            return outside_cost
        if name == "upright":
            return upright_cost
        if name == "tilt":
            return tilt_cost
        if name == "negative":
            return negative_cost
        if "rot180" in name:
            return half_turn_cost
        if "rot" in name:
            return rot_cost
        return (content_cost if "content" in name else 0.0) + (flip_cost if is_mirrored(name) else 0.0)
    return np.array([one(n) for n in names], dtype=np.float32)


def view_names(mode: str, content: bool = True) -> tuple[str, ...]:
    """Every view ``query_variants`` can return for ``mode``, in its order: the dihedral
    variants, then with ``content`` the colour negative, the framed or pasted photo's crop and,
    unless mode is none, its mirror, the largest part of the query outside a pasted photo, and
    the query turned back upright or, when no finder fires, tilted either way (two views of one
    name)."""
    extra = ("content",) if mode == "none" else ("content", "content+flip")
    return variant_names(mode) + (("negative",) + extra + ("outside", "upright", "tilt") if content else ())


def query_variants(img: Image.Image, preprocess: Callable[[Image.Image], np.ndarray], mode: str,
                   content: bool | str = True, found: Found | None = None) -> tuple[list[np.ndarray], list[str]]:
    """The views of one query image to search, as (1, S, S, 3) arrays, and their names (in
    ``view_names`` order): the colour negative unless ``content`` is off; the framed or pasted
    photo's views and the upright view only when their detector fires, the two tilted views only
    when no finder does (``content="frame"`` looks for flat frames only, no pasted photo).
    When both finders fire on different boxes (a photo pasted onto a picture with flat areas
    looks framed too), both crops are searched, each as ``content``, and so is the pasted-photo
    finder's runner-up box (``PASTE_BOXES``), and each panel of a collage. ``found``:
    ``content_boxes(img, content)`` when the caller has it (the crops' keypoints need the same
    boxes)."""
    arrays, names = variants(preprocess(img)[None], mode), list(variant_names(mode))
    if content:  # a colour negative of a copy is searched as the copy
        arrays.append(255 - arrays[0])
        names.append("negative")
    found = found if found is not None else content_boxes(img, content)
    boxes = searched_boxes(found)
    for box in boxes:
        inner = preprocess(img.crop(box))[None]
        arrays += [inner] if mode == "none" else [inner, np.ascontiguousarray(inner[:, :, ::-1])]
        names += ["content"] if mode == "none" else ["content", "content+flip"]
    for box in ([found.pasted] + list(found.more)) if found.pasted is not None else []:
        rest = outside_box(img.size, box)
        if rest is not None:
            arrays.append(preprocess(img.crop(rest))[None])
            names.append("outside")
        arrays.append(preprocess(filled(img, box))[None])
        names.append("outside")
    theta = turn_angle(img) if content else None
    if theta is not None:
        arrays.append(preprocess(turned_back(img, theta))[None])
        names.append("upright")
    elif content and not boxes:
        arrays += [preprocess(tilted(img, degrees))[None] for degrees in (TILT, -TILT)]
        names += ["tilt", "tilt"]
    return arrays, names


class Found(NamedTuple):
    """The boxes a query's crops are searched at (``content_boxes``)."""
    frame: tuple | None       # the flat frame's photo, without the letterbox bars inside it
    pasted: tuple | None      # the pasted-photo finder's best box
    more: list[tuple]         # its runners-up
    panels: tuple = ()        # a collage's panels (``encoders.panels``)


def content_boxes(img: Image.Image, content: bool | str = True) -> Found:
    """The boxes of a query's framed, pasted or collaged photos, each None or empty where its
    finder does not fire or does not run (``content`` False; "frame": the flat frame only). A
    pasted box that is the frame's photo found again (IoU >= SAME_BOX_IOU) is left out, and when
    the best one is, the runners-up are too: the two finders agree on the photo. A panel that
    is the frame's photo or a pasted box is left out. The frame's box is compared as found,
    then searched without the letterbox bars inside it (``encoders.frame.without_bars``)."""
    frame = content_box(img) if content else None
    trimmed = None if frame is None else without_bars(img, frame)
    finders = bool(content) and content != "frame"
    maps = ridge_maps(img) if finders else None  # both finders look for the same sharp steps
    boxes = paste_boxes(img, PASTE_BOXES, maps) if finders else []
    if frame is not None and boxes and box_iou(frame, boxes[0]) >= SAME_BOX_IOU:
        boxes = []  # one photo, found by both
    boxes = [b for b in boxes if not _same(b, [frame])]
    panels = [b for b in (panel_boxes(img, maps) if finders else []) if not _same(b, [frame] + boxes)]
    return Found(trimmed, boxes[0] if boxes else None, boxes[1:], tuple(panels))


def _same(box: tuple, others: list) -> bool:
    """Whether ``box`` is one of ``others`` (None entries skipped) found again."""
    return any(o is not None and box_iou(o, box) >= SAME_BOX_IOU for o in others)


def searched_boxes(found: Found) -> list[tuple]:
    """The boxes whose crops a query searches as ``content`` views, in order, from
    ``content_boxes``' answer: the frame's photo, the pasted photo, the runners-up, the panels."""
    return [b for b in (found.frame, found.pasted) if b is not None] + list(found.more) + list(found.panels)


def most_views(mode: str, content: bool | str = True) -> int:
    """The most views ``query_variants`` returns for one image: ``view_names``, plus a crop
    (and its mirror) per further box when the finders fire on different boxes, and the outside
    strip and the filled-in frame of each pasted-photo box after the first."""
    crops = 1 if mode == "none" else 2
    more = crops * (PASTE_BOXES + MAX_PANELS) + 2 * PASTE_BOXES - 1 if content and content != "frame" else 0
    return len(view_names(mode, bool(content))) + more


def filled(img: Image.Image, box: tuple[int, int, int, int], side: int = FILL_SIDE) -> Image.Image:
    """``img`` with ``box`` filled in from the pixels around it (OpenCV's Telea inpainting, on a
    copy at most ``side`` pixels long, as the network sees little more): when a pasted photo
    covers the copy, the copy's whole frame without it. A flat fill of the mean colour left a
    hard-edged rectangle that the code read as content (validation, model card)."""
    rgb = np.asarray(img.convert("RGB"))
    h, w = rgb.shape[:2]
    scale = min(1.0, side / max(h, w))
    small = cv2.resize(rgb, (max(1, round(w * scale)), max(1, round(h * scale))), interpolation=cv2.INTER_AREA)
    x0, y0 = max(0, int(box[0])), max(0, int(box[1]))
    x1, y1 = min(w, int(box[2])), min(h, int(box[3]))
    sx0, sy0 = min(int(x0 * scale), small.shape[1] - 1), min(int(y0 * scale), small.shape[0] - 1)
    sx1, sy1 = max(sx0 + 1, math.ceil(x1 * scale)), max(sy0 + 1, math.ceil(y1 * scale))
    mask = np.zeros(small.shape[:2], np.uint8)
    mask[sy0:sy1, sx0:sx1] = 255
    out = rgb.copy()
    if x1 <= x0 or y1 <= y0 or mask.all():  # no box, or nothing around it to fill it from
        return Image.fromarray(out)
    patch = cv2.inpaint(small, mask, FILL_RADIUS, cv2.INPAINT_TELEA)[sy0:sy1, sx0:sx1]
    out[y0:y1, x0:x1] = cv2.resize(patch, (x1 - x0, y1 - y0), interpolation=cv2.INTER_LINEAR)
    return Image.fromarray(out)


def outside_box(size: tuple[int, int], box: tuple[int, int, int, int]) -> tuple[int, int, int, int] | None:
    """The largest of the four strips of an image of ``size`` beside ``box`` (left, right, above,
    below), if it holds at least OUTSIDE_MIN_AREA of the image: when the pasted photo is not the
    copy but covers it, this strip is a clean crop of the copy.

    >>> outside_box((100, 80), (60, 10, 90, 70))
    (0, 0, 60, 80)
    """
    w, h = size
    x0, y0, x1, y1 = box
    strips = [(0, 0, x0, h), (x1, 0, w, h), (0, 0, w, y0), (0, y1, w, h)]
    best = max(strips, key=lambda r: (r[2] - r[0]) * (r[3] - r[1]))
    area = (best[2] - best[0]) * (best[3] - best[1])
    return best if area >= OUTSIDE_MIN_AREA * w * h else None


def variants(batch: np.ndarray, mode: str) -> list[np.ndarray]:
    """Dihedral variants of an (n, H, W, C) batch, the batch itself first (see ``variant_names``)."""
    check_mode(mode)
    flip = batch[:, :, ::-1]
    out = [batch]
    if mode != "none":
        out.append(flip)
    if mode in ("flip_rot90", "flip_turns", "d4"):
        out += [np.rot90(batch, 1, axes=(1, 2)), np.rot90(batch, 3, axes=(1, 2))]
    if mode in ("flip_turns", "d4"):
        out += [np.rot90(batch, 2, axes=(1, 2)), np.rot90(flip, 2, axes=(1, 2))]
    if mode == "d4":
        out += [np.rot90(flip, 1, axes=(1, 2)), np.rot90(flip, 3, axes=(1, 2))]
    return [np.ascontiguousarray(v) for v in out]


def check_ref_views(names: Sequence[str]) -> tuple[str, ...]:
    """``names`` as a tuple if every one is a known reference view (``REF_VIEWS``), else ValueError."""
    if isinstance(names, str):
        raise TypeError("ref views are a sequence of names, e.g. ['center70']")
    unknown = [n for n in names if n not in REF_VIEWS]
    if unknown:
        raise ValueError(f"unknown reference view(s) {unknown}; known: {', '.join(REF_VIEWS)}")
    return tuple(dict.fromkeys(names))


def ref_view_images(img: Image.Image, names: Sequence[str]) -> list[Image.Image]:
    """The images stored with ``img`` as reference views ``names`` (crops, or its mirror), in
    that order."""
    out = []
    for name in check_ref_views(names):
        keep, ax, ay, mirrored = REF_VIEWS[name]
        w, h = img.size
        cw, ch = max(1, int(w * keep)), max(1, int(h * keep))
        x, y = int(ax * (w - cw)), int(ay * (h - ch))
        view = img.crop((x, y, x + cw, y + ch)) if keep < 1 else img
        out.append(ImageOps.mirror(view) if mirrored else view)
    return out
