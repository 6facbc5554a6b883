"""A 256-bit DCT hash of each network input: the second, independent signal in a side vector.

The learned code misses some copies a perceptual hash keeps: a third of the photo covered by
another, stripes across it. A DCT hash sees only the coarse layout of light and dark, so it
survives those and knows nothing of what deephash learned. Each input array (the squashed view
the network sees) goes to grey, 64x64 by area averaging, the 16x16 lowest frequencies of its 2D
DCT, and one bit per coefficient above the image's median: PDQ's recipe, vectorised over the
batch, so hashing every query view and stored crop costs microseconds rather than the
milliseconds per image of ``pdqhash``. ``shards.vectors`` turns a small Hamming distance
between two hashes into a credit on the pair's score.
"""
from __future__ import annotations

import cv2
import numpy as np

GRID = 64   # side the grey image is averaged down to
FREQS = 16  # lowest DCT frequencies kept per axis: FREQS * FREQS = 256 bits
_LUMA = np.array([0.299, 0.587, 0.114], np.float32)


def _dct_rows() -> np.ndarray:
    """(FREQS, GRID) DCT-II basis: row u is cos(pi * (2x + 1) * u / (2 * GRID))."""
    x, u = np.arange(GRID), np.arange(FREQS)[:, None]
    return np.cos(np.pi * (2 * x + 1) * u / (2 * GRID)).astype(np.float32)


_BASIS = _dct_rows()


def dct_hash(batch: np.ndarray) -> np.ndarray:
    """uint8 (n, H, W, 3) images -> packed 256-bit hashes (n, 32) uint8.

    >>> rng = np.random.default_rng(0)
    >>> img = rng.integers(0, 255, (1, 128, 128, 3), dtype=np.uint8)
    >>> a, b = dct_hash(img), dct_hash(np.clip(img * 0.6 + 90, 0, 255).astype(np.uint8))
    >>> int(np.unpackbits(a ^ b).sum()) < 40  # a fade moves few bits
    True
    """
    grey = np.asarray(batch, np.float32) @ _LUMA
    if grey.shape[1:] != (GRID, GRID):
        grey = np.stack([cv2.resize(g, (GRID, GRID), interpolation=cv2.INTER_AREA) for g in grey])
    coeffs = (_BASIS @ grey @ _BASIS.T).reshape(len(grey), -1)
    return np.packbits(coeffs > np.median(coeffs, axis=1, keepdims=True), axis=1)
