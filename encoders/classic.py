"""Classical perceptual hashes as encoders: Meta's PDQ (256 bits) and DCT pHash (64 bits).

Both are per-image CPU hashes, so ``encode_batch`` simply loops. They are the baselines the
deep model is measured against (deephash is the default encoder).
"""
from __future__ import annotations

import imagehash
import numpy as np
import pdqhash
from PIL import Image

from encoders.base import Encoder, pack_bits
from encoders.registry import register


def _check_batch(batch: np.ndarray, size: int) -> np.ndarray:
    batch = np.asarray(batch)
    if batch.dtype != np.uint8 or batch.ndim != 4 or batch.shape[1:] != (size, size, 3):
        raise ValueError(f"expected a uint8 batch of shape (n, {size}, {size}, 3), "
                         f"got {batch.dtype} {batch.shape}")
    return batch


class PDQEncoder(Encoder):
    """PDQ: luma -> 64x64 Jarosz-filtered -> 16x16 DCT -> 256 bits above the median.

    Input is a 256x256 squash of the whole image: PDQ itself squashes any image to 64x64
    (ignoring aspect ratio), so 256 keeps its box filter 4x oversampled while making the array
    fixed-size for batching. Codes are packed MSB first, so ``code_to_hex`` gives PDQ's canonical
    64-char hex (ThreatExchange ``Hash256::format``) of the 256x256 input.
    """

    name = "pdq"
    bits = 256
    input_size = 256

    def encode_batch(self, batch: np.ndarray) -> np.ndarray:
        return self.encode_batch_with_quality(batch)[0]

    def encode_batch_with_quality(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Like encode_batch, plus PDQ's quality score per image (0-100; Meta suggests
        ignoring matches on hashes with quality < 50, e.g. flat or blank images)."""
        batch = _check_batch(batch, self.input_size)
        codes = np.zeros((len(batch), self.bits // 8), dtype=np.uint8)
        quality = np.zeros(len(batch), dtype=np.int32)
        for i, arr in enumerate(batch):
            vector, quality[i] = pdqhash.compute(np.ascontiguousarray(arr))
            codes[i] = pack_bits(vector)
        return codes, quality

    def encode_with_quality(self, images: list[Image.Image]) -> tuple[np.ndarray, np.ndarray]:
        """Preprocess and hash PIL images -> (codes (n, 32) uint8, quality (n,) int32)."""
        arrays = [self.preprocess(im) for im in images]
        if not arrays:
            return np.zeros((0, self.code_bytes), np.uint8), np.zeros(0, np.int32)
        return self.encode_batch_with_quality(np.stack(arrays))


class PHashEncoder(Encoder):
    """pHash (imagehash.phash, hash_size=8): gray 32x32 -> DCT -> 8x8 low frequencies vs median.

    Input is a 64x64 squash (imagehash shrinks to 32x32 anyway). Packed MSB first, row-major,
    so ``code_to_hex`` equals ``str(imagehash.phash(...))`` of the 64x64 input.
    """

    name = "phash"
    bits = 64
    input_size = 64

    def encode_batch(self, batch: np.ndarray) -> np.ndarray:
        batch = _check_batch(batch, self.input_size)
        codes = np.zeros((len(batch), self.bits // 8), dtype=np.uint8)
        for i, arr in enumerate(batch):
            codes[i] = pack_bits(imagehash.phash(Image.fromarray(arr), hash_size=8).hash.reshape(-1))
        return codes


@register("pdq")
def build_pdq(**_ignored) -> PDQEncoder:
    """Factory; deep-model options (weights, device, batch_size, ...) do not apply and are ignored."""
    return PDQEncoder()


@register("phash")
def build_phash(**_ignored) -> PHashEncoder:
    """Factory; deep-model options (weights, device, batch_size, ...) do not apply and are ignored."""
    return PHashEncoder()
