"""An image as the index stores it, built once: decoded and resized with its reference views'
crops and keypoints (``decode_batch``), encoded (``BatchEncoder``), packed into records and
added through a router (``add_batch``).

Ray Data's ingest (``rayapp.ingest``) runs these stages as tasks and actors; ``neardup eval``
runs the same stages in process to store its refs, so what eval searches is what ingest stores.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow.fs as pafs

from encoders.decode import full_size, load_image, resize_square
from encoders.keypoints import extract as extract_keypoints
from encoders.tta import MIRRORED_REF_VIEWS, ref_view_images
from shards.vectors import records
from shards.verify import KEYPOINT_BYTES
from shards.views import check_base_id


def _read_bytes(path: str) -> bytes:
    fs, p = pafs.FileSystem.from_uri(path if "://" in path else str(Path(path).resolve()))
    with fs.open_input_stream(p) as f:
        return f.read()


def decode_batch(batch: dict, size: int, max_pixels: int, ref_views: tuple = (),
                 keypoints: bool = False) -> dict:
    """Ray Data CPU task: bytes or path -> uint8 (size, size, 3), plus (n, views, size, size, 3)
    for the reference views' images and, with ``keypoints``, each image's packed keypoints
    (``encoders.keypoints``) and those of its views that carry their own (``view_keypoints``,
    zero for the others); failures become an error string."""
    n = len(batch["id"])
    pixels = np.zeros((n, size, size, 3), dtype=np.uint8)
    kps = np.zeros((n, KEYPOINT_BYTES if keypoints else 0), dtype=np.uint8)
    view_pixels = np.zeros((n, len(ref_views), size, size, 3), dtype=np.uint8)
    own = [j for j, name in enumerate(ref_views) if keypoints and name in MIRRORED_REF_VIEWS]
    view_kps = np.zeros((n, len(ref_views), KEYPOINT_BYTES if own else 0), dtype=np.uint8)
    errors = [""] * n
    sizes = np.zeros((n, 2), dtype=np.int32)  # width, height: dedup keeps the largest copy
    for i in range(n):
        try:
            check_base_id(str(batch["id"][i]))
            data = batch["bytes"][i] if "bytes" in batch else _read_bytes(str(batch["path"][i]))
            img = load_image(bytes(data), max_pixels=max_pixels)
            pixels[i] = resize_square(img, size)
            sizes[i] = full_size(img)
            if keypoints:
                kps[i] = extract_keypoints(img)
            for j, view in enumerate(ref_view_images(img, ref_views)):
                view_pixels[i, j] = resize_square(view, size)
                if j in own:
                    view_kps[i, j] = extract_keypoints(view)
        except Exception as exc:  # noqa: BLE001 - a bad file is recorded, never aborts the job
            errors[i] = f"{type(exc).__name__}: {exc}"
    out = {"id": batch["id"], "path": batch["path"], "pixels": pixels, "size": sizes,
           "error": np.array(errors, dtype=object)}
    if keypoints:  # no empty (n, 0) columns for Ray Data
        out["keypoints"] = kps
    if own:
        out["view_keypoints"] = view_kps
    return {**out, "view_pixels": view_pixels} if ref_views else out


class BatchEncoder:
    """Encodes decoded batches (``decode_batch``) with one encoder: Ray Data's ``EncodeActor``
    holds one, eval calls one in process."""

    def __init__(self, encoder) -> None:
        self.encoder = encoder

    def __call__(self, batch: dict) -> dict:
        """Codes (n, bytes) and, where the encoder has them, side vectors (n, d); for the
        reference views' crops (n, views, S, S, 3) the same with a views axis."""
        ok = np.array([not e for e in batch["error"]], dtype=bool)
        out = {"id": batch["id"], "path": batch["path"], "size": batch["size"], "error": batch["error"]}
        for key in ("keypoints", "view_keypoints"):
            if key in batch:
                out[key] = batch[key]
        out["code"], vectors = self._encode(batch["pixels"], ok)
        with_vectors = self.encoder.vector_bytes > 0  # no empty (n, 0) columns for Ray Data
        if with_vectors:
            out["vector"] = vectors
        if "view_pixels" in batch:
            parts = [self._encode(batch["view_pixels"][:, j], ok)
                     for j in range(batch["view_pixels"].shape[1])]
            out["view_codes"] = np.stack([c for c, _ in parts], axis=1)
            if with_vectors:
                out["view_vectors"] = np.stack([v for _, v in parts], axis=1)
        return out

    def _encode(self, pixels: np.ndarray, ok: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        codes = np.zeros((len(ok), self.encoder.code_bytes), dtype=np.uint8)
        vectors = np.zeros((len(ok), self.encoder.vector_bytes), dtype=np.int8)
        if ok.any():
            c, _, v = self.encoder.encode_vectors(pixels[ok])
            codes[ok] = c
            if v is not None:
                vectors[ok] = v
        return codes, vectors


def add_batch(router, batch: dict, ref_views: list[str]) -> None:
    """Add an encoded batch's rows (``BatchEncoder``; rows with an error skipped) to their
    shards through ``router`` (durable on return): each image's record (code, side vector,
    keypoints) with its meta, and its reference views' records (code, side vector, and the
    keypoints of a view that carries its own)."""
    ok = [i for i, e in enumerate(batch["error"]) if not e]
    if not ok:
        return
    metas = [{"path": str(batch["path"][i]), "width": int(batch["size"][i][0]),
              "height": int(batch["size"][i][1])} for i in ok]

    def vec(key: str, *col: int) -> np.ndarray | None:
        return batch[key][(ok, *col)] if key in batch else None

    views = {name: records(batch["view_codes"][ok, j], vec("view_vectors", j),
                           vec("view_keypoints", j) if name in MIRRORED_REF_VIEWS else None)
             for j, name in enumerate(ref_views)}
    recs = records(batch["code"][ok], vec("vector"), vec("keypoints"))
    router.add([str(batch["id"][i]) for i in ok], recs, metas, views)
