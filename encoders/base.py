"""The Encoder interface: pixels in, packed binary codes out.

Every encoder splits its work in two so Ray Data can scale each half apart:
``preprocess`` (CPU, per image: PIL image -> fixed-shape uint8 array) and
``encode_batch`` (CPU or GPU, per batch: uint8 arrays -> packed codes).
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Iterable

import numpy as np
from PIL import Image


class Encoder(ABC):
    """Maps images to packed binary codes of shape (n, bits // 8), dtype uint8."""

    name: str = "base"
    bits: int = 0
    input_size: int = 0  # side of the square uint8 array ``preprocess`` returns
    match_radius: int = 0  # default Hamming radius that counts as a near-duplicate (0 = bits // 8)
    vector_bytes: int = 0  # int8 side-vector width (encode_vectors); 0 = none

    @property
    def default_radius(self) -> int:
        return self.match_radius or self.bits // 8

    @property
    def code_bytes(self) -> int:
        return self.bits // 8

    def preprocess(self, image: Image.Image) -> np.ndarray:
        """One decoded RGB image -> uint8 array (input_size, input_size, 3).

        The whole image is squashed to a square, never cropped: a crop would throw away
        content that a copy detector needs. Ingest's decode stage does exactly this too.
        """
        from encoders.decode import resize_square
        return resize_square(image, self.input_size)

    @abstractmethod
    def encode_batch(self, batch: np.ndarray) -> np.ndarray:
        """uint8 (n, input_size, input_size, 3) -> packed codes uint8 (n, bits // 8)."""

    def encode_weighted(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """Codes plus each bit's confidence in [0, 1] (float32 (n, bits)), for ranking stored
        codes by weighted Hamming distance (``shards.weighted``); None when the encoder has no
        confidences (PDQ, pHash)."""
        return self.encode_batch(batch), None

    def encode_vectors(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray | None,
                                                         np.ndarray | None]:
        """Codes, bit confidences and int8 side vectors (n, ``vector_bytes``; ``shards.vectors``)
        for re-ranking by cosine; None where the encoder has none (PDQ, pHash)."""
        return (*self.encode_weighted(batch), None)

    def encode(self, images: Iterable[Image.Image]) -> np.ndarray:
        """Convenience: preprocess and encode a list of PIL images."""
        arrays = [self.preprocess(im) for im in images]
        if not arrays:
            return np.zeros((0, self.code_bytes), dtype=np.uint8)
        return self.encode_batch(np.stack(arrays))

    def info(self) -> dict:
        return {"encoder": self.name, "bits": self.bits, "input_size": self.input_size,
                "vector_bytes": self.vector_bytes}


def pack_bits(bits: np.ndarray) -> np.ndarray:
    """bool/0-1 array (n, nbits) -> packed uint8 (n, nbits // 8), MSB first."""
    return np.packbits(np.asarray(bits, dtype=bool), axis=-1, bitorder="big")


def unpack_bits(codes: np.ndarray) -> np.ndarray:
    """packed uint8 (n, nbytes) -> uint8 0/1 array (n, nbytes * 8)."""
    return np.unpackbits(np.asarray(codes, dtype=np.uint8), axis=-1, bitorder="big")


def hamming(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pairwise Hamming distances between packed code sets a (n, B) and b (m, B) -> (n, m) int32."""
    a = np.ascontiguousarray(a, dtype=np.uint8)
    b = np.ascontiguousarray(b, dtype=np.uint8)
    x = np.bitwise_xor(a[:, None, :], b[None, :, :])
    return np.unpackbits(x, axis=-1).sum(axis=-1, dtype=np.int32)


RANK_MODES = ("vector", "weighted", "hamming")
#: How a learned encoder's network runs: ``torch`` (eager), ``onnx`` (ONNX Runtime, CPU only,
#: ``encoders.onnx_cpu``), or ``auto``: ONNX Runtime on CPU where it is installed.
RUNTIMES = ("auto", "torch", "onnx")


def check_rank(mode: str) -> str:
    """``mode`` if it is a known ranking (vector | weighted | hamming), else ValueError."""
    if mode not in RANK_MODES:
        raise ValueError(f"rank must be one of {', '.join(RANK_MODES)}; got {mode!r}")
    return mode


def code_to_hex(code: np.ndarray) -> str:
    return bytes(np.asarray(code, dtype=np.uint8)).hex()


def hex_to_code(text: str, bits: int | None = None) -> np.ndarray:
    """Parse a hex code; raises ValueError with a clear message on bad input."""
    try:
        raw = bytes.fromhex(text.strip())
    except (ValueError, AttributeError) as exc:
        raise ValueError(f"code is not valid hex: {exc}") from None
    if bits is not None and len(raw) * 8 != bits:
        raise ValueError(f"code has {len(raw) * 8} bits, expected {bits}")
    return np.frombuffer(raw, dtype=np.uint8).copy()
