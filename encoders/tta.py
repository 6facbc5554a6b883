"""Query-time augmentation (TTA): dihedral variants of a query, searched together.

A flipped or rotated copy is found by searching the query's flipped and rotated variants too and
keeping, per stored id, its best distance. Modes: ``none``, ``flip`` (+ mirror), ``flip_rot90``
(+ mirror, 90 and 270 degrees), ``d4`` (all 8 symmetries).

Each variant's distance first pays a prior cost (``costs``): most copies are neither mirrored nor
turned, so a variant must match clearly better than the query as given. Without it every extra
variant is one more chance for an unrelated image to come close; ``flip_rot90`` then lifted
rotated copies to 1.0 recall@1 but lost as much elsewhere. The default costs were picked on a
validation benchmark built from training sources (runs/tta2 in the model card), not on held-out.
"""
from __future__ import annotations

import numpy as np

TTA_MODES = ("none", "flip", "flip_rot90", "d4")
# Variant names in the order ``variants`` returns them (a mode takes a prefix of this list).
VARIANT_NAMES = ("original", "flip", "rot90", "rot270", "rot180", "flip+rot90", "flip+rot180", "flip+rot270")
_COUNT = {"none": 1, "flip": 2, "flip_rot90": 4, "d4": 8}
# Prior costs in weighted-Hamming units (one fully confident bit = 1; plain Hamming: bits).
FLIP_COST = 0.5
ROT_COST = 1.5


def check_mode(mode: str) -> str:
    """``mode`` if it is a known TTA mode, else ValueError."""
    if mode not in TTA_MODES:
        raise ValueError(f"tta must be one of {', '.join(TTA_MODES)}; got {mode!r}")
    return mode


def variant_names(mode: str) -> tuple[str, ...]:
    """Names of the variants ``variants(batch, mode)`` returns, in that order."""
    return VARIANT_NAMES[:_COUNT[check_mode(mode)]]


def costs(mode: str, flip_cost: float = FLIP_COST, rot_cost: float = ROT_COST) -> np.ndarray:
    """Prior cost added to each variant's distance: 0 for the original, ``flip_cost`` for the
    mirror, ``rot_cost`` for any turned variant (mirrored or not)."""
    if flip_cost < 0 or rot_cost < 0:
        raise ValueError(f"TTA costs must be >= 0; got flip {flip_cost}, rot {rot_cost}")
    return np.array([0.0 if n == "original" else flip_cost if n == "flip" else rot_cost
                     for n in variant_names(mode)], dtype=np.float32)


def variants(batch: np.ndarray, mode: str) -> list[np.ndarray]:
    """Dihedral variants of an (n, H, W, C) batch, the batch itself first (see ``variant_names``)."""
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
