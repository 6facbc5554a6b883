"""ONNX Runtime for a deephash model on CPU: the same network and codes, faster than eager
PyTorch at every batch size measured (``bench/encoder_runtime.py``, figures in
``bench/results/encoder_runtime_*.json``).

The model (its input normalisation and hash head included) is exported in memory when first
used, so any weights file works and nothing is written to disk. ONNX Runtime is optional: where
it (or ``onnx``, which the exporter needs) is not installed, :func:`available` says so and the
encoder stays on PyTorch.

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
import warnings

import numpy as np
import torch

OPSET = 17


def available() -> bool:
    """Whether ONNX Runtime and the exporter's ``onnx`` are installed."""
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True


class _Logits(torch.nn.Module):
    """uint8 pixels (n, S, S, 3) -> hash pre-activations: what the encoder computes on CPU."""

    def __init__(self, net: torch.nn.Module):
        super().__init__()
        self.net = net

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.net.logits(self.net.prepare(pixels))


def export(net: torch.nn.Module, input_size: int) -> bytes:
    """The ONNX program of ``net`` (prepare, backbone, head) with a free batch dimension."""
    buf = io.BytesIO()
    example = torch.zeros((1, input_size, input_size, 3), dtype=torch.uint8)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice
        torch.onnx.export(_Logits(net).eval().cpu(), (example,), buf, dynamo=False,
                          input_names=["pixels"], output_names=["logits"], opset_version=OPSET,
                          dynamic_axes={"pixels": {0: "n"}, "logits": {0: "n"}})
    return buf.getvalue()


class OnnxLogits:
    """Callable: uint8 (n, S, S, 3) -> float32 logits (n, bits), on as many threads as PyTorch
    would use here (``torch.get_num_threads``: one inside a Ray actor)."""

    def __init__(self, net: torch.nn.Module, input_size: int):
        self.program = export(net, input_size)
        self.threads = 0
        self.session = None

    def _session(self):
        import onnxruntime as ort
        threads = torch.get_num_threads()
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
