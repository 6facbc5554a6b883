"""Which deephash weights file, and which model it is, without loading it: no torch here, so a
process that only needs a model's id (a dedup worker reading the model's confidence curves, a
shard checking an index) starts in a second instead of paying torch's import.
"""
from __future__ import annotations

import hashlib
from pathlib import Path

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
FORMAT = "neardup-deephash"  # a deephash weights file's ``format`` metadata
DEFAULT_BACKBONE = "mobilenet_v3_small"
DEFAULT_BITS = 128
# The bundled model before per-image input normalisation: indexes built before ``neardup.json``
# named their model were built with it.
LEGACY_MODEL_ID = "deephash:11cb8f3fa6fe0294"


def model_id(weights: str | Path | None = None) -> str:
    """``deephash:<first 16 hex of the weights file's sha256>``: codes are comparable only
    between encoders with the same id (bundled weights when ``weights`` is None)."""
    path = Path(weights) if weights is not None else bundled_weights()
    return "deephash:" + hashlib.sha256(path.read_bytes()).hexdigest()[:16]


def bundled_weights(backbone: str | None = None, bits: int | None = None) -> Path:
    """Path of the bundled weights for (backbone, bits); FileNotFoundError if not shipped."""
    path = WEIGHTS_DIR / f"deephash-{backbone or DEFAULT_BACKBONE}-{bits or DEFAULT_BITS}.safetensors"
    if not path.is_file():
        shipped = sorted(p.name for p in WEIGHTS_DIR.glob("deephash-*.safetensors"))
        hint = ", ".join(shipped) if shipped else "none yet"
        raise FileNotFoundError(
            f"no bundled deephash weights {path.name} (shipped: {hint}); "
            "train with `python -m encoders.train` and pass weights=PATH")
    return path


def deephash_metadata(meta: dict, path: str | Path) -> dict:
    """``meta``, a safetensors file's metadata, if it is a deephash weights file's; else a
    ValueError naming ``path``."""
    if meta.get("format") != FORMAT:
        raise ValueError(f"{path}: not a neardup deephash weights file (missing metadata)")
    return meta


def header_metadata(path: str | Path) -> dict:
    """The deephash metadata in a safetensors file's JSON header (its first 8 bytes give the
    header's length), read without torch; ValueError if the file is not a deephash one."""
    import json
    import struct
    try:
        with open(path, "rb") as fh:
            (n,) = struct.unpack("<Q", fh.read(8))
            header = json.loads(fh.read(n))
    except (OSError, struct.error, ValueError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path}: not a readable safetensors file ({exc})") from None
    return deephash_metadata(header.get("__metadata__") or {}, path)
