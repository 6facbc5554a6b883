"""deephash without torch (encoders/deephash_onnx.py): once a process exported a weights file's
ONNX program, a later process builds the encoder from the cached program alone, imports no
torch, and returns the same codes, bit confidences and side vectors, on real photos."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from encoders import onnx_cpu
from encoders.deephash import build_deephash
from encoders.weights_files import bundled_weights, model_id

ROOT = Path(__file__).resolve().parents[1]
PHOTOS = sorted((ROOT / "rayapp" / "samples").glob("*.jpg"))[:12]
pytestmark = pytest.mark.skipif(not onnx_cpu.available(), reason="needs onnxruntime and onnx")

_CHILD = """
import json, sys, numpy as np
from encoders.registry import get_encoder
from encoders.decode import load_image
enc = get_encoder("deephash", device="cpu", **json.loads(sys.argv[2]))
batch = np.stack([enc.preprocess(load_image(p)) for p in sys.argv[3:]])
codes, weights, vectors = enc.encode_vectors(batch)
np.savez(sys.argv[1], codes=codes, weights=weights, vectors=vectors)
print(json.dumps({"cls": type(enc).__name__, "torch": "torch" in sys.modules, "info": enc.info()}))
"""


def _child(tmp_path: Path, name: str, env: dict, **kwargs) -> tuple[dict, dict]:
    out = tmp_path / f"{name}.npz"
    r = subprocess.run([sys.executable, "-c", _CHILD, str(out), json.dumps(kwargs), *map(str, PHOTOS)],
                       capture_output=True, text=True, cwd=ROOT, env=env, timeout=300)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout.strip().splitlines()[-1]), dict(np.load(out))


def test_a_cached_program_builds_the_encoder_without_torch_and_the_same_outputs(tmp_path):
    env = {**os.environ, "NEARDUP_CACHE_DIR": str(tmp_path / "cache")}
    first, made = _child(tmp_path, "first", env)  # nothing cached: torch builds, exports, caches
    assert first["cls"] == "DeepHashEncoder" and first["torch"] and first["info"]["runtime"] == "onnx"
    cached = Path(env["NEARDUP_CACHE_DIR"]) / "onnx"
    assert [p.name for p in cached.iterdir()] == [onnx_cpu.cache_path(model_id(), 128).name]
    again, same = _child(tmp_path, "again", env)
    assert again["cls"] == "OnnxDeepHashEncoder" and not again["torch"]
    assert again["info"] == first["info"]
    for key in made:
        assert np.array_equal(made[key], same[key]), key
    no_side, plain = _child(tmp_path, "plain", env, side_hash="0")
    assert no_side["cls"] == "OnnxDeepHashEncoder" and plain["vectors"].shape[1] == 128
    eager, _ = _child(tmp_path, "eager", env, runtime="torch")  # asked for torch: torch it is
    assert eager["cls"] == "DeepHashEncoder" and eager["info"]["runtime"] == "torch"


def test_wrong_arguments_still_get_the_full_builds_errors(tmp_path, monkeypatch):
    from encoders.registry import get_encoder
    monkeypatch.setenv("NEARDUP_CACHE_DIR", str(tmp_path))
    onnx_cpu.save_program(b"not used", model_id(), 128)
    with pytest.raises(ValueError, match="128-bit"):
        get_encoder("deephash", device="cpu", bits=64, weights=str(bundled_weights()))
    with pytest.raises(ValueError, match="runtime must be one of"):
        get_encoder("deephash", device="cpu", runtime="tensorrt")
    assert build_deephash(device="cpu").runtime == "onnx"


def test_a_cached_program_that_does_not_load_is_rebuilt(tmp_path, monkeypatch):
    from encoders.registry import get_encoder
    monkeypatch.setenv("NEARDUP_CACHE_DIR", str(tmp_path))
    onnx_cpu.save_program(b"a truncated program", model_id(), 128)
    enc = get_encoder("deephash", device="cpu")
    assert type(enc).__name__ == "DeepHashEncoder"
    enc.encode_batch(np.zeros((1, 128, 128, 3), np.uint8))  # exports, and caches a good one
    assert type(get_encoder("deephash", device="cpu")).__name__ == "OnnxDeepHashEncoder"
