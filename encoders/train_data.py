"""Training data: image files read once into RAM, optional class labels, and the endless stream
of (reference view, hard copy) pairs the contrastive loss learns from.

The reference view is the original or a light edit; the copy is a hard near-duplicate edit from
``encoders.augment`` at widened ranges, sometimes with another photo pasted over it or around it,
colour-jittered, turned or greyed, so the network cannot shortcut on colour or layout.
"""
from __future__ import annotations

import csv
import math
import time
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
from PIL import Image
from torch.utils.data import IterableDataset

from encoders.augment import hue_shift, random_crop, random_edit
from encoders.decode import resize_square
from encoders.deephash import DeepHashNet
from encoders.train_config import TrainConfig

IMAGE_EXTS = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"}


def list_images(dirs: list[str], max_images: int = 0) -> list[Path]:
    """Sorted image files under the given folders (recursive)."""
    files: list[Path] = []
    for d in dirs:
        p = Path(d)
        if not p.exists():
            raise FileNotFoundError(f"training data folder not found: {d}")
        files += sorted(f for f in (p.rglob("*") if p.is_dir() else [p]) if f.suffix.lower() in IMAGE_EXTS)
    if not files:
        raise ValueError(f"no images found in {dirs}")
    return files[:max_images] if max_images else files


def preload(files: list[Path], max_side: int) -> list[np.ndarray]:
    """Decode every image once, shrink to ``max_side`` (aspect kept), keep uint8 arrays in RAM."""
    out = []
    for f in files:
        try:
            with Image.open(f) as im:
                im.draft("RGB", (max_side, max_side))
                im = im.convert("RGB")
                im.thumbnail((max_side, max_side), Image.BILINEAR)
                out.append(np.asarray(im))
        except Exception as exc:  # unreadable files are skipped, not fatal
            print(f"skip {f}: {exc}")
    return out


def load_labels(path: str | None, files: list[Path]) -> np.ndarray:
    """Integer class per file from a CSV (file,label); -1 where unlabelled."""
    labels = np.full(len(files), -1, dtype=np.int64)
    if not path:
        return labels
    with open(path, newline="") as fh:
        table = {row[0]: row[1] for row in csv.reader(fh) if len(row) >= 2}
    classes = {c: i for i, c in enumerate(sorted(set(table.values())))}
    for i, f in enumerate(files):
        key = next((k for k in (str(f), f.name) if k in table), None)
        if key is not None:
            labels[i] = classes[table[key]]
    return labels


def _paste_other(img: Image.Image, other: np.ndarray, rng: np.random.Generator) -> Image.Image:
    """Cut-mix style distractor: paste a patch of another image over 9-45% of this one."""
    w, h = img.size
    o = Image.fromarray(other)
    frac = rng.uniform(0.3, 0.67)
    pw, ph = max(8, int(w * frac)), max(8, int(h * frac))
    patch = o.resize((pw, ph), Image.BILINEAR)
    img = img.copy()
    img.paste(patch, (int(rng.integers(0, max(1, w - pw))), int(rng.integers(0, max(1, h - ph)))))
    return img


def _embed_in_other(img: Image.Image, other: np.ndarray, rng: np.random.Generator) -> Image.Image:
    """The copy as part of a bigger picture: shrunk to 40-85% of another photo's side, pasted at
    a random place on it (the other photo is the background, not the copy)."""
    bg = Image.fromarray(other)
    bw, bh = bg.size
    bg = bg.resize((max(16, int(bw * 1.5)), max(16, int(bh * 1.5))), Image.BILINEAR)
    bw, bh = bg.size
    s = rng.uniform(0.4, 0.85)
    w, h = img.size
    f = s * min(bw / w, bh / h)
    pw, ph = max(8, int(w * f)), max(8, int(h * f))
    bg.paste(img.resize((pw, ph), Image.BILINEAR),
             (int(rng.integers(0, max(1, bw - pw + 1))), int(rng.integers(0, max(1, bh - ph + 1)))))
    return bg


_DIHEDRAL = (Image.FLIP_LEFT_RIGHT, Image.FLIP_TOP_BOTTOM, Image.ROTATE_90, Image.ROTATE_180,
             Image.ROTATE_270, Image.TRANSPOSE, Image.TRANSVERSE)


def _photometric(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    """SimCLR-style colour jitter: without it the network shortcuts on colour statistics."""
    from PIL import ImageEnhance
    ops = [lambda im: ImageEnhance.Brightness(im).enhance(rng.uniform(0.4, 1.8)),
           lambda im: ImageEnhance.Contrast(im).enhance(rng.uniform(0.3, 1.8)),
           lambda im: ImageEnhance.Color(im).enhance(rng.uniform(0.0, 2.5)),
           lambda im: _gamma(im, math.exp(rng.uniform(math.log(0.4), math.log(2.5))))]
    for i in rng.permutation(len(ops)):
        if i < 3 or rng.random() < 0.5:
            img = ops[i](img)
    if rng.random() < 0.3:
        img = hue_shift(img, rng, strength=0.0)  # strength < 1 keeps the evaluation range
    return img


def _gamma(img: Image.Image, g: float) -> Image.Image:
    """Gamma curve ``g`` applied to all three channels through a lookup table."""
    lut = [min(255, int(round(255 * (i / 255) ** g))) for i in range(256)]
    return img.point(lut * 3)


def _resized_crop(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    """Random crop of 20-100% of the area (aspect 3:4..4:3), the contrastive-learning staple."""
    return random_crop(img, rng, strength=1.0) if rng.random() < 0.5 else \
        random_crop(img, rng, strength=2.0)


class PairStream(IterableDataset):
    """Endless stream of (ref_view, edited_view, label) uint8 pairs, reshuffled each epoch."""

    def __init__(self, images: list[np.ndarray], labels: np.ndarray, cfg: TrainConfig, seed: int):
        self.images, self.labels, self.cfg, self.seed = images, labels, cfg, seed

    def _other(self, rng: np.random.Generator) -> np.ndarray:
        """A random photo of the pool, pasted over or around a copy."""
        return self.images[int(rng.integers(0, len(self.images)))]

    def _reference(self, img: Image.Image, rng: np.random.Generator) -> Image.Image:
        """The reference-like view: the original or one light edit, sometimes colour-jittered."""
        ref = img
        if rng.random() > self.cfg.p_identity_ref:
            ref, _ = random_edit(img, rng, strength=1.0, n_min=1, n_max=1)
        if rng.random() < self.cfg.p_color_ref:
            ref = _photometric(ref, rng)
        return ref

    def _hard_copy(self, img: Image.Image, rng: np.random.Generator) -> Image.Image:
        """The hard near-duplicate: crop, turn, paste, a chain of edit families, embed, colour, grey."""
        cfg, edit = self.cfg, img
        if rng.random() < cfg.p_crop:
            edit = _resized_crop(edit, rng)
        if rng.random() < cfg.p_dihedral:
            edit = edit.transpose(_DIHEDRAL[int(rng.integers(0, len(_DIHEDRAL)))])
        if rng.random() < cfg.p_paste:
            edit = _paste_other(edit, self._other(rng), rng)
        edit, _ = random_edit(edit, rng, strength=rng.uniform(cfg.strength_min, cfg.strength_max),
                              n_max=cfg.max_chain)
        if rng.random() < cfg.p_embed:
            edit = _embed_in_other(edit, self._other(rng), rng)
        if rng.random() < cfg.p_color:
            edit = _photometric(edit, rng)
        if rng.random() < cfg.p_gray:
            edit = edit.convert("L").convert("RGB")
        return edit

    def _views(self, i: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """(reference view, hard copy) of image ``i``, both square at the input size."""
        img = Image.fromarray(self.images[i])
        ref = self._reference(img, rng)
        edit = self._hard_copy(img, rng)
        return resize_square(ref, self.cfg.input_size), resize_square(edit, self.cfg.input_size)

    def __iter__(self) -> Iterator[tuple[np.ndarray, np.ndarray, int]]:
        info = torch.utils.data.get_worker_info()
        wid = info.id if info else 0
        rng = np.random.default_rng([self.seed, wid, int(time.time() * 1000) % 1_000_000])
        while True:
            for i in rng.permutation(len(self.images)):
                a, b = self._views(int(i), rng)
                yield a, b, int(self.labels[i])


def to_input(x: torch.Tensor, device: torch.device, model: DeepHashNet) -> torch.Tensor:
    """uint8 pixel batch -> the network's normalised input, on ``device``."""
    x = model.prepare(x.to(device, non_blocking=True))
    return x.contiguous(memory_format=torch.channels_last) if device.type == "cuda" else x.contiguous()


def input_batches(loader_iter: Iterator, device: torch.device, n: int,
                  model: DeepHashNet) -> Iterator[torch.Tensor]:
    """``n`` network inputs (both views of a pair batch) for re-estimating BatchNorm statistics."""
    for _ in range(n):
        a, b, _y = next(loader_iter)
        yield to_input(torch.cat([a, b]), device, model)

