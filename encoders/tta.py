"""Query-time augmentation (TTA): dihedral variants of a query, searched together.

A flipped or rotated copy is found by searching the query's flipped and rotated variants too and
keeping, per stored id, the smallest distance. Modes: ``none``, ``flip`` (+ mirror),
``flip_rot90`` (+ mirror, 90 and 270 degrees), ``d4`` (all 8 symmetries). Measured on the
held-out benchmark (encoders/weights/MODEL_CARD.md): ``flip_rot90`` lifts mirrored and rotated
copies to ~1.0 recall@1 but lets more unrelated images come close, so it is off by default.
"""
from __future__ import annotations

import numpy as np

TTA_MODES = ("none", "flip", "flip_rot90", "d4")


def check_mode(mode: str) -> str:
    """``mode`` if it is a known TTA mode, else ValueError."""
    if mode not in TTA_MODES:
        raise ValueError(f"tta must be one of {', '.join(TTA_MODES)}; got {mode!r}")
    return mode


def variants(batch: np.ndarray, mode: str) -> list[np.ndarray]:
    """Dihedral variants of an (n, H, W, C) batch, the batch itself first."""
    check_mode(mode)
    flip = batch[:, :, ::-1]
    out = [batch]
    if mode in ("flip", "flip_rot90", "d4"):
        out.append(flip)
    if mode in ("flip_rot90", "d4"):
        out += [np.rot90(batch, 1, axes=(1, 2)), np.rot90(batch, 3, axes=(1, 2))]
    if mode == "d4":
        out += [np.rot90(batch, 2, axes=(1, 2)), np.rot90(flip, 1, axes=(1, 2)),
                np.rot90(flip, 2, axes=(1, 2)), np.rot90(flip, 3, axes=(1, 2))]
    return [np.ascontiguousarray(v) for v in out]
