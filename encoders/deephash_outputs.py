"""What a deephash encoder returns, from the hash head's outputs (logits) however they were
computed: eager PyTorch (``encoders.deephash``) or a cached ONNX program without torch
(``encoders.deephash_onnx``). No torch here."""
from __future__ import annotations

import numpy as np

from encoders.base import Encoder, pack_bits
from encoders.dct_hash import dct_hash
from formats.vectors import SIDE_HASH_BYTES, quantize, with_side_hash


def build_options(kwargs: dict) -> dict:
    """The factory's free-form options as the encoders take them: ``side_hash`` (0, false, off
    or no leave the DCT hash out of the side vectors) and ``batch_size``."""
    return {"side_hash": str(kwargs.get("side_hash", True)).lower() not in ("0", "false", "off", "no"),
            "batch_size": int(kwargs.get("batch_size", 64))}


class DeepHashOutputs(Encoder):
    """Codes, bit confidences and side vectors from ``_logits`` (uint8 (n, S, S, 3) -> float32
    (n, bits)); subclasses set ``bits``, ``input_size`` and ``side_hash``."""

    name = "deephash"
    # Held-out eval (bench/results/eval_*.json): median distance of a true copy 10, of the
    # nearest unrelated image 17 (of 128 bits); 14 keeps most copies and few false matches.
    match_radius = 14
    bits: int
    input_size: int
    side_hash: bool

    def _logits(self, batch: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def _check(self, batch: np.ndarray) -> np.ndarray:
        batch = np.asarray(batch)
        s = self.input_size
        if batch.ndim != 4 or batch.shape[1:] != (s, s, 3):
            raise ValueError(f"expected uint8 batch (n, {s}, {s}, 3), got shape {batch.shape}")
        return batch.astype(np.uint8, copy=False)

    def encode_batch(self, batch: np.ndarray) -> np.ndarray:
        """uint8 (n,S,S,3) -> packed codes (n, bits // 8) of the image as given (no TTA)."""
        return pack_bits(self._logits(self._check(batch)) > 0)

    def encode_weighted(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Codes plus bit confidences min(|h|, 1): the head's batch norm puts |h| on a unit scale,
        and capping it keeps one very sure bit from outweighing several (measured: as good as |h|)."""
        h = self._logits(self._check(batch))
        return pack_bits(h > 0), np.minimum(np.abs(h), 1.0).astype(np.float32)

    def encode_vectors(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Codes, bit confidences, and side vectors (``formats.vectors``): the head's outputs h
        as int8, one value per bit (their cosine ranks candidates better than any Hamming
        distance), then with ``side_hash`` each input's 256-bit DCT hash (``encoders.dct_hash``)."""
        batch = self._check(batch)
        h = self._logits(batch)
        vectors = with_side_hash(quantize(h), dct_hash(batch)) if self.side_hash else quantize(h)
        return pack_bits(h > 0), np.minimum(np.abs(h), 1.0).astype(np.float32), vectors

    @property
    def vector_bytes(self) -> int:
        return self.bits + (SIDE_HASH_BYTES if self.side_hash else 0)
