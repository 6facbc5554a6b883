"""Composite edits of the independent suite (``encoders.independent_edits``): captions, stickers,
stripes, meme bands, social-media posts and phone stories, and photos pasted around or over the
copy, drawn with OpenCV.

They are the edits that add content rather than transform pixels, so they need words, fonts and
other photos: ``others`` are photos that are not in the index (a smooth random gradient stands in
when none is given). Every edit is ``fn(rgb, rng, others) -> rgb`` on uint8 (H, W, 3) arrays.
"""
from __future__ import annotations

from typing import Sequence

import cv2
import numpy as np

from encoders.independent_transforms import random_colour, uniform

_WORDS = ("wait for it", "NO WAY", "repost", "me when", "classic", "#tbt", "so true", "look",
          "first time?", "BIG NEWS", "link in bio", "credit: unknown", "lmao", "mood", "2025")
_FONTS = (cv2.FONT_HERSHEY_SIMPLEX, cv2.FONT_HERSHEY_DUPLEX, cv2.FONT_HERSHEY_TRIPLEX,
          cv2.FONT_HERSHEY_COMPLEX, cv2.FONT_HERSHEY_PLAIN)


def _caption(rng: np.random.Generator) -> str:
    return " ".join(str(w) for w in rng.choice(_WORDS, size=int(rng.integers(1, 3))))


def _handle(rng: np.random.Generator) -> str:
    """A made-up account name ("@so_true") for the post and story headers."""
    return "@" + str(rng.choice(_WORDS)).replace(" ", "_").lower()[:12]


def _put_text(img: np.ndarray, text: str, org: tuple[int, int], height: int, colour, rng,
              outline: bool = True) -> None:
    font = _FONTS[int(rng.integers(0, len(_FONTS)))]
    scale = max(0.3, height / 22.0)
    thick = max(1, int(height / 12))
    if outline:
        cv2.putText(img, text, org, font, scale, (0, 0, 0), thick + 2, cv2.LINE_AA)
    cv2.putText(img, text, org, font, scale, colour, thick, cv2.LINE_AA)


def _fit(other: np.ndarray, w: int, h: int) -> np.ndarray:
    return cv2.resize(other, (max(1, w), max(1, h)), interpolation=cv2.INTER_AREA)


def _other(rng: np.random.Generator, others: Sequence[np.ndarray]) -> np.ndarray:
    if not others:  # no pool given: a smooth random gradient stands in for a photo
        g = np.linspace(0, 1, 256, dtype=np.float32)
        a, b = np.array(random_colour(rng), np.float32), np.array(random_colour(rng), np.float32)
        row = (a[None] * (1 - g[:, None]) + b[None] * g[:, None]).astype(np.uint8)
        return np.repeat(row[None], 256, axis=0)
    return others[int(rng.integers(0, len(others)))]


def text(img, rng, others=()):
    """1-3 captions of 6-14% of the height, anywhere."""
    out = img.copy()
    h, w = out.shape[:2]
    for _ in range(int(rng.integers(1, 4))):
        size = max(8, int(h * uniform(rng, 0.06, 0.14)))
        org = (int(rng.integers(0, max(1, w // 2))), int(rng.integers(size, max(size + 1, h))))
        _put_text(out, _caption(rng), org, size, random_colour(rng), rng)
    return out


def emoji(img, rng, others=()):
    """1-4 stickers (faces, blobs, badges) of 8-25% of the short side."""
    out = img.copy()
    h, w = out.shape[:2]
    for _ in range(int(rng.integers(1, 5))):
        r = max(4, int(min(h, w) * uniform(rng, 0.04, 0.125)))
        cx, cy = int(rng.integers(0, w)), int(rng.integers(0, h))
        colour = random_colour(rng)
        if rng.random() < 0.5:
            cv2.circle(out, (cx, cy), r, colour, -1, cv2.LINE_AA)
            cv2.circle(out, (cx - r // 3, cy - r // 4), max(1, r // 7), (0, 0, 0), -1)
            cv2.circle(out, (cx + r // 3, cy - r // 4), max(1, r // 7), (0, 0, 0), -1)
            cv2.ellipse(out, (cx, cy + r // 6), (r // 2, r // 3), 0, 0, 180, (0, 0, 0), max(1, r // 10))
        else:
            pts = rng.normal(0, r * 0.6, size=(7, 2)).astype(np.int32) + np.array([cx, cy], np.int32)
            cv2.fillPoly(out, [cv2.convexHull(pts)], colour, cv2.LINE_AA)
    return out


def stripes(img, rng, others=()):
    """Semi-transparent parallel stripes across the whole photo."""
    h, w = img.shape[:2]
    layer = img.copy()
    gap = max(4, int(min(h, w) * uniform(rng, 0.05, 0.12)))
    thick = max(1, int(gap * uniform(rng, 0.2, 0.5)))
    colour = random_colour(rng)
    horizontal = rng.random() < 0.5
    for p in range(0, h if horizontal else w, gap):
        a, b = ((0, p), (w, p)) if horizontal else ((p, 0), (p, h))
        cv2.line(layer, a, b, colour, thick)
    alpha = uniform(rng, 0.4, 0.8)
    return cv2.addWeighted(layer, alpha, img, 1 - alpha, 0)


def meme(img, rng, others=()):
    """Caption bands of 12-25% of the height above and/or below, impact-style text."""
    h, w = img.shape[:2]
    band = max(12, int(h * uniform(rng, 0.12, 0.25)))
    white = rng.random() < 0.5
    top, bottom = (band, band) if rng.random() < 0.4 else ((band, 0) if rng.random() < 0.5 else (0, band))
    out = cv2.copyMakeBorder(img, top, bottom, 0, 0, cv2.BORDER_CONSTANT,
                             value=(255, 255, 255) if white else (0, 0, 0))
    ink = (0, 0, 0) if white else (255, 255, 255)
    for y0, on in ((0, top), (top + h, bottom)):
        if on:
            _put_text(out, _caption(rng).upper(), (int(w * 0.05), y0 + int(band * 0.7)), int(band * 0.5), ink,
                      rng, outline=False)
    return out


def _story(img, rng):
    """A phone story: the photo across a 9:16 canvas filled by its own blurred, darkened zoom,
    with an avatar and name on top, action icons down the right and a caption at the bottom."""
    h, w = img.shape[:2]
    cw = w
    ch = int(cw * 16 / 9)
    bg = cv2.GaussianBlur(_fit(img, cw, ch), (0, 0), sigmaX=max(2.0, cw / 25))
    out = (bg.astype(np.float32) * uniform(rng, 0.4, 0.8)).astype(np.uint8)
    f = min(cw * uniform(rng, 0.8, 1.0) / w, ch * 0.9 / h)
    pw, ph = max(8, int(w * f)), max(8, int(h * f))
    y0 = (ch - ph) // 2 + int(rng.integers(-ch // 12, ch // 12 + 1))
    y0 = int(np.clip(y0, 0, ch - ph))
    out[y0:y0 + ph, (cw - pw) // 2:(cw - pw) // 2 + pw] = _fit(img, pw, ph)
    unit = max(6, cw // 16)
    cv2.circle(out, (unit * 2, unit * 2), unit, random_colour(rng), -1, cv2.LINE_AA)
    _put_text(out, _handle(rng), (unit * 4, unit * 2 + unit // 3), int(unit * 0.9), (255, 255, 255), rng)
    for i in range(4):
        cv2.circle(out, (cw - unit * 2, ch // 2 + i * 3 * unit), unit, (255, 255, 255), max(1, unit // 6), cv2.LINE_AA)
    _put_text(out, _caption(rng), (unit, ch - 2 * unit), int(unit * 0.9), (255, 255, 255), rng)
    return out


def social_screenshot(img, rng, others=()):
    """A social-media post around the photo: status bar, avatar and name, the photo, a row of
    action icons and caption lines, light or dark theme, on a phone-width canvas; or (40%) a
    phone story, the photo over its own blurred zoom with the UI drawn on top."""
    if rng.random() < 0.4:
        return _story(img, rng)
    h, w = img.shape[:2]
    cw = int(w / uniform(rng, 0.45, 1.0))  # the photo spans 45-100% of the post's width
    head, foot = int(cw * uniform(rng, 0.14, 0.22)), int(cw * uniform(rng, 0.25, 0.45))
    dark = rng.random() < 0.4
    bg, ink = ((16, 16, 20), (230, 230, 230)) if dark else ((255, 255, 255), (30, 30, 30))
    out = np.full((head + h + foot, cw, 3), bg, np.uint8)
    unit = max(6, head // 4)
    cv2.rectangle(out, (0, 0), (cw, unit), tuple(int(c * 0.9) for c in bg), -1)  # status bar
    _put_text(out, "9:41", (unit // 2, int(unit * 0.8)), int(unit * 0.7), ink, rng, outline=False)
    cy = unit + (head - unit) // 2
    cv2.circle(out, (unit + unit // 2, cy), unit // 1, random_colour(rng), -1, cv2.LINE_AA)  # avatar
    _put_text(out, _handle(rng), (3 * unit, cy + unit // 3), int(unit * 0.8), ink, rng, outline=False)
    x0 = int(rng.integers(0, cw - w + 1))
    out[head:head + h, x0:x0 + w] = img
    y = head + h + unit
    for i in range(4):  # like / comment / share / save
        cv2.circle(out, (unit + i * 3 * unit, y), unit // 2 + 1, ink, max(1, unit // 8), cv2.LINE_AA)
    y += 2 * unit
    while y < head + h + foot - unit // 2:
        _put_text(out, _caption(rng), (unit // 2, y), int(unit * 0.7), ink, rng, outline=False)
        y += int(unit * 1.3)
    return out


def paste_into(img, rng, others=()):
    """The photo shrunk to 40-70% of another photo's side and pasted onto it."""
    return paste_into_box(img, rng, others)[0]


def paste_into_box(img, rng, others=()):
    """``paste_into`` and the (left, top, right, bottom) box the photo landed in, for measuring
    a finder against the truth (``bench.paste_finder``)."""
    bg = _other(rng, others)
    bh, bw = bg.shape[:2]
    side = max(bh, bw, 256)
    bg = _fit(bg, int(side * bw / max(bh, bw)), int(side * bh / max(bh, bw)))
    bh, bw = bg.shape[:2]
    h, w = img.shape[:2]
    f = uniform(rng, 0.4, 0.7) * min(bw / w, bh / h)
    pw, ph = max(8, int(w * f)), max(8, int(h * f))
    x, y = int(rng.integers(0, bw - pw + 1)), int(rng.integers(0, bh - ph + 1))
    out = bg.copy()
    out[y:y + ph, x:x + pw] = _fit(img, pw, ph)
    return out, (x, y, x + pw, y + ph)


def overlay(img, rng, others=()):
    """Another photo pasted over 30-50% of this one's area."""
    h, w = img.shape[:2]
    area = uniform(rng, 0.3, 0.5)
    aspect = uniform(rng, 0.6, 1.6)
    pw = int(min(w, np.sqrt(area * w * h * aspect)))
    ph = int(min(h, area * w * h / max(1, pw)))
    out = img.copy()
    x, y = int(rng.integers(0, w - pw + 1)), int(rng.integers(0, h - ph + 1))
    out[y:y + ph, x:x + pw] = _fit(_other(rng, others), pw, ph)
    return out
