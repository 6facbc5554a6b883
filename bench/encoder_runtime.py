"""deephash on CPU through ONNX Runtime against eager PyTorch, in the same run.

Both runtimes load the same weights and encode the same preprocessed photos (the bundled
samples and edited copies of them) at batch sizes 1 (a plain query), 8 (a query's views) and 64
(ingest), on one thread as inside a Ray actor, sides alternating. Reported: median ms per batch,
images/s, the ratio of ONNX Runtime to eager, and how far codes and side vectors differ.

    python -m bench.encoder_runtime            # or: neardup bench encoder_runtime
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from bench.common import REPO_ROOT, RESULTS_DIR, machine_info, today, utc_now, write_json

BATCHES = (1, 8, 64)


def _photos(n: int) -> np.ndarray:
    """n preprocessed images: the bundled samples, then mirrored and faded copies of them."""
    from PIL import Image, ImageOps
    from encoders.decode import load_image
    from encoders.registry import get_encoder
    enc = get_encoder("deephash", device="cpu", runtime="torch")
    base = [load_image(p) for p in sorted((REPO_ROOT / "rayapp" / "samples").glob("*.jpg"))]
    edits = [lambda im: im, ImageOps.mirror,
             lambda im: Image.blend(im, Image.new("RGB", im.size, "white"), 0.5)]
    images = [edit(im) for edit in edits for im in base][:n]
    return np.stack([enc.preprocess(im) for im in images])


def _median_ms(fn, batch: np.ndarray, repeats: int) -> float:
    fn(batch)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn(batch)
        times.append(time.perf_counter() - t0)
    return float(np.median(times) * 1000)


def run(repeats: int, rounds: int) -> dict:
    from encoders.base import hamming
    from encoders.registry import get_encoder
    torch.set_num_threads(1)
    sides = {rt: get_encoder("deephash", device="cpu", runtime=rt) for rt in ("torch", "onnx")}
    photos = _photos(max(BATCHES))
    out = {rt: {} for rt in sides}
    for b in BATCHES:
        ms = {rt: [] for rt in sides}
        for _ in range(rounds):  # sides alternate, so drifting load hits both alike
            for rt, enc in sides.items():
                ms[rt].append(_median_ms(enc.encode_vectors, photos[:b], max(3, repeats // b)))
        for rt in sides:
            best = float(np.median(ms[rt]))
            out[rt][str(b)] = {"ms_per_batch": round(best, 3), "images_per_s": round(b / best * 1000, 1)}
    (c1, _, v1), (c0, _, v0) = sides["onnx"].encode_vectors(photos), sides["torch"].encode_vectors(photos)
    flips = np.diag(hamming(c1, c0))
    return {"runtimes": out,
            "ratio_onnx_to_torch_ms": {str(b): round(out["onnx"][str(b)]["ms_per_batch"]
                                                     / out["torch"][str(b)]["ms_per_batch"], 3)
                                       for b in BATCHES},
            "agreement": {"images": len(photos), "codes_equal": int((flips == 0).sum()),
                          "max_bit_flips": int(flips.max()),
                          "max_vector_step": int(np.abs(v1.astype(int) - v0.astype(int)).max())}}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=200, help="images encoded per timing, per batch size")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    result = {"benchmark": "encoder_runtime", "date": utc_now(), "machine": machine_info(),
              "threads": 1, "encoder": "deephash (bundled weights)", **run(args.repeats, args.rounds)}
    path = write_json(args.out or RESULTS_DIR / f"encoder_runtime_{today()}.json", result)
    for b in BATCHES:
        print(f"batch {b:>3}: torch {result['runtimes']['torch'][str(b)]['ms_per_batch']:.2f} ms, "
              f"onnx {result['runtimes']['onnx'][str(b)]['ms_per_batch']:.2f} ms "
              f"(ratio {result['ratio_onnx_to_torch_ms'][str(b)]})")
    print(f"agreement: {result['agreement']}; wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
