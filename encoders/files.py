"""Encode image files in-process, in batches, with a progress bar; bad files are collected, not fatal."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from encoders.base import Encoder
from encoders.decode import load_image


@dataclass
class EncodedFiles:
    paths: list[str]                      # files that encoded, in input order
    codes: np.ndarray                     # (len(paths), bits // 8) uint8
    errors: list[tuple[str, str]] = field(default_factory=list)  # (path, reason)


def encode_files(encoder: Encoder, paths: list[str | Path], batch_size: int = 64,
                 max_pixels: int = 50_000_000, progress: bool = True) -> EncodedFiles:
    """Decode, preprocess and encode ``paths``; unreadable files land in ``errors`` with the reason."""
    ok_paths: list[str] = []
    chunks: list[np.ndarray] = []
    errors: list[tuple[str, str]] = []
    batch: list[np.ndarray] = []

    def flush() -> None:
        if batch:
            chunks.append(encoder.encode_batch(np.stack(batch)))
            batch.clear()

    for p in tqdm([str(p) for p in paths], unit="img", desc=f"encoding ({encoder.name})",
                  disable=not progress):
        try:
            batch.append(encoder.preprocess(load_image(p, max_pixels=max_pixels)))
            ok_paths.append(p)
        except (OSError, ValueError) as exc:
            errors.append((p, str(exc) or type(exc).__name__))
        if len(batch) >= batch_size:
            flush()
    flush()
    codes = np.concatenate(chunks) if chunks else np.zeros((0, encoder.code_bytes), np.uint8)
    return EncodedFiles(ok_paths, codes, errors)
