"""deephash on CPU without torch: the ONNX program a process on this machine exported before
(``encoders.onnx_cpu.cache_path``), run by ONNX Runtime.

Importing torch and torchvision costs an encoder process seconds and hundreds of MB, and on
CPU the network runs through ONNX Runtime anyway. So the registry's ``deephash`` factory lives
here: where the weights file's program is cached and the encoder would run ONNX on CPU, it is
built from the cache alone; otherwise (first use, a GPU, ``runtime=torch``) it is built by
``encoders.deephash.build_deephash``, which exports the program and caches it.

>>> from encoders import get_encoder
>>> enc = get_encoder("deephash", device="cpu")  # the cached program once any process exported it
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from encoders.deephash_outputs import DeepHashOutputs, build_options
from encoders.registry import register
from encoders.tta import check_mode
from encoders.weights_files import bundled_weights, header_metadata, model_id


class OnnxDeepHashEncoder(DeepHashOutputs):
    """A deephash encoder from its cached ONNX program: the same codes, bit confidences and side
    vectors as ``encoders.deephash.DeepHashEncoder`` with ``runtime="onnx"``."""

    runtime, device = "onnx", "cpu"

    def __init__(self, program: bytes, meta: dict, weights_path: str, tta: str = "none",
                 side_hash: bool = True, batch_size: int = 64):
        from encoders.onnx_cpu import OnnxLogits
        check_mode(tta)
        self.bits, self.input_size = int(meta["bits"]), int(meta["input_size"])
        self.backbone_name, self.weights_path = meta["backbone"], weights_path
        self.tta, self.side_hash, self.batch_size = tta, bool(side_hash), batch_size
        self._onnx = OnnxLogits(program=program)

    def _logits(self, batch: np.ndarray) -> np.ndarray:
        return self._onnx(batch) if len(batch) else np.zeros((0, self.bits), np.float32)

    def info(self) -> dict:
        return {**super().info(), "backbone": self.backbone_name, "tta": self.tta,
                "device": self.device, "runtime": self.runtime, "weights": self.weights_path}


def _cached(path: Path, backbone: str | None, bits: int | None, device: str, runtime: str,
            tta: str, kwargs: dict) -> OnnxDeepHashEncoder | None:
    """The encoder from the cached program, or None where it does not apply or is not cached."""
    from encoders import onnx_cpu
    if runtime not in ("auto", "onnx") or device not in ("auto", "cpu") or not onnx_cpu.available():
        return None
    if device == "auto" and Path("/dev/nvidiactl").exists():  # a GPU machine: torch decides
        return None
    meta = header_metadata(path)
    if (backbone and backbone != meta.get("backbone")) or (bits is not None and int(bits) != int(meta.get("bits", -1))):
        return None  # the full build explains what is wrong
    program = onnx_cpu.cache_path(model_id(path), int(meta["input_size"]))
    if not program.is_file():
        return None
    enc = OnnxDeepHashEncoder(program.read_bytes(), meta, str(path), tta=tta, **build_options(kwargs))
    try:
        enc._onnx._session()  # a program this ONNX Runtime cannot load is rebuilt, not served
    except Exception:  # noqa: BLE001 - ONNX Runtime raises its own error types
        return None
    return enc


@register("deephash")
def build(weights: str | Path | None = None, backbone: str | None = None, bits: int | None = None,
          device: str = "auto", tta: str = "none", runtime: str = "auto", **kwargs) -> DeepHashOutputs:
    """The ``deephash`` encoder: from the cached ONNX program where it applies, else
    ``encoders.deephash.build_deephash`` (same arguments), which also explains bad ones."""
    try:
        path = Path(weights) if weights is not None else bundled_weights(backbone, bits)
        enc = _cached(path, backbone, bits, device, runtime, tta, kwargs)
    except (OSError, ValueError):
        enc = None  # the full build raises the clear error
    if enc is not None:
        return enc
    from encoders.deephash import build_deephash
    return build_deephash(weights, backbone, bits, device=device, tta=tta, runtime=runtime, **kwargs)
