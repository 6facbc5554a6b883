"""ONNX Runtime for a deephash model on CPU: the same network and codes, faster than eager
PyTorch at every batch size measured (``bench/encoder_runtime.py``, figures in
``bench/results/encoder_runtime_*.json``).

The model (its input normalisation and hash head included) is exported in memory when first
used, so any weights file works. The program of a weights file is then cached on disk
(:func:`save_program`, under ``NEARDUP_CACHE_DIR`` or ``~/.cache/neardup``), keyed by the model
id: a later process on this machine runs it without importing torch at all
(``encoders.deephash_onnx``), which saves seconds and hundreds of MB per encoder process. ONNX
Runtime is optional: where it (or ``onnx``, which the exporter needs) is not installed,
:func:`available` says so and the encoder stays on PyTorch.

>>> from encoders.deephash import DeepHashNet
>>> import numpy as np, torch
>>> net = DeepHashNet("mobilenet_v3_small", bits=64).eval()
>>> run = OnnxLogits(net, input_size=64)
>>> batch = np.zeros((2, 64, 64, 3), np.uint8)
>>> run(batch).shape
(2, 64)
"""
from __future__ import annotations

import io
import os
import sys
import uuid
import warnings
from pathlib import Path

import numpy as np

OPSET = 17


def available() -> bool:
    """Whether ONNX Runtime and the exporter's ``onnx`` are installed."""
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True


def export(net, input_size: int) -> bytes:
    """The ONNX program of ``net`` (a ``DeepHashNet``: prepare, backbone, head) with a free batch
    dimension."""
    import torch

    class _Logits(torch.nn.Module):
        """uint8 pixels (n, S, S, 3) -> hash pre-activations: what the encoder computes on CPU."""

        def __init__(self, net: torch.nn.Module):
            super().__init__()
            self.net = net

        def forward(self, pixels: torch.Tensor) -> torch.Tensor:
            return self.net.logits(self.net.prepare(pixels))

    buf = io.BytesIO()
    example = torch.zeros((1, input_size, input_size, 3), dtype=torch.uint8)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice
        torch.onnx.export(_Logits(net).eval().cpu(), (example,), buf, dynamo=False,
                          input_names=["pixels"], output_names=["logits"], opset_version=OPSET,
                          dynamic_axes={"pixels": {0: "n"}, "logits": {0: "n"}})
    return buf.getvalue()


def cache_path(model: str, input_size: int) -> Path:
    """Where the ONNX program of model id ``model`` at ``input_size`` is cached."""
    root = Path(os.environ.get("NEARDUP_CACHE_DIR") or Path.home() / ".cache" / "neardup")
    return root / "onnx" / f"{model.replace(':', '-')}-{int(input_size)}-opset{OPSET}.onnx"


def save_program(program: bytes, model: str, input_size: int) -> None:
    """Cache an exported program (atomically; a cache that cannot be written is skipped)."""
    path = cache_path(model, input_size)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
        tmp.write_bytes(program)
        tmp.rename(path)
    except OSError:
        pass


def _threads() -> int:
    """As many threads as PyTorch would use here (one inside a Ray actor, which sets
    ``OMP_NUM_THREADS``), without importing torch."""
    if "torch" in sys.modules:
        return sys.modules["torch"].get_num_threads()
    return int(os.environ.get("OMP_NUM_THREADS") or 0) or os.cpu_count() or 1


class OnnxLogits:
    """Callable: uint8 (n, S, S, 3) -> float32 logits (n, bits), on as many threads as PyTorch
    would use here. Built from a network (exported here) or from an exported ``program``."""

    def __init__(self, net=None, input_size: int = 0, program: bytes | None = None):
        self.program = program if program is not None else export(net, input_size)
        self.threads = 0
        self.session = None

    def _session(self):
        import onnxruntime as ort
        threads = _threads()
        if self.session is None or threads != self.threads:
            opts = ort.SessionOptions()
            opts.intra_op_num_threads, opts.inter_op_num_threads = threads, 1
            # idle pool threads must not spin: other work (keypoints, decoding) shares the cores
            opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
            opts.log_severity_level = 3
            self.session = ort.InferenceSession(self.program, opts, providers=["CPUExecutionProvider"])
            self.threads = threads
        return self.session

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        return self._session().run(None, {"pixels": np.ascontiguousarray(batch, dtype=np.uint8)})[0]
