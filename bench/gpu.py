"""GPU paths against the CPU in the same run: deephash encode throughput and faiss-gpu search.

    python -m bench.gpu                 # on a CUDA machine: bench/results/gpu_<date>.json
    python -m bench.gpu --quick         # small sizes (a smoke test; runs anywhere)

Encoders: the bundled CPU model (MobileNetV3-small, 128 px) and the production backbone
(ResNet-50, 224 px, untrained weights: throughput does not depend on them), timed on
preprocessed uint8 batches so that decode speed does not hide the device. On CUDA the encoder
runs channels_last with fp16 autocast, and the CUDA codes are checked against the CPU's.
FAISS: exact binary top-k (``IndexBinaryFlat``) against ``GpuIndexBinaryFlat`` over the same
random codes; the distances must agree. Scan: the same exact top-k as one torch program (XOR and
a SWAR popcount on 64-bit words), on the CPU and on CUDA, for machines where faiss-gpu cannot be
installed. Without a GPU the CPU side is measured and every GPU figure is null, with the reason.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from bench import common

SIZES = {"full": {"batch": 256, "batches": 20, "cpu_batches": 3, "codes": 10_000_000, "queries": 1000},
         "quick": {"batch": 16, "batches": 2, "cpu_batches": 1, "codes": 20_000, "queries": 50}}
BACKBONES = (("mobilenet_v3_small", 128), ("resnet50", 224))


def _cuda() -> str | None:
    """None when CUDA can be used, else why not."""
    import torch
    return None if torch.cuda.is_available() else "no CUDA GPU on this machine"


def _encoder(backbone: str, size: int, device: str):
    import torch
    from encoders.deephash import DeepHashEncoder, DeepHashNet, build_deephash
    if backbone == "mobilenet_v3_small":
        return build_deephash(device=device)  # the bundled weights
    torch.manual_seed(0)
    return DeepHashEncoder(DeepHashNet(backbone, bits=128), input_size=size, device=device)


def _images_per_s(enc, batch: np.ndarray, batches: int) -> tuple[float, np.ndarray]:
    """Encode ``batch`` once to warm up, then ``batches`` times -> (images/s, the codes)."""
    import torch
    codes = enc.encode_batch(batch)
    sync = torch.cuda.synchronize if enc.device.type == "cuda" else (lambda: None)
    sync()
    t0 = time.perf_counter()
    for _ in range(batches):
        enc.encode_batch(batch)
    sync()
    return batches * len(batch) / (time.perf_counter() - t0), codes


def bench_encoders(size: dict) -> list[dict]:
    """Per backbone: CPU and CUDA images/s, their ratio, and the codes' agreement."""
    rows, why = [], _cuda()
    for backbone, px in BACKBONES:
        batch = np.random.default_rng(0).integers(0, 256, (size["batch"], px, px, 3), dtype=np.uint8)
        cpu_rate, cpu_codes = _images_per_s(_encoder(backbone, px, "cpu"), batch, size["cpu_batches"])
        row = {"backbone": backbone, "input_size": px, "batch": size["batch"],
               "cpu_img_per_s": round(cpu_rate, 1), "cuda_img_per_s": None, "cuda_over_cpu": None,
               "max_bits_differing": None, "cuda_skipped": why}
        if why is None:
            rate, codes = _images_per_s(_encoder(backbone, px, "cuda"), batch, size["batches"])
            diff = np.unpackbits(np.bitwise_xor(codes, cpu_codes), axis=1).sum(axis=1)
            row.update(cuda_img_per_s=round(rate, 1), cuda_over_cpu=round(rate / cpu_rate, 1),
                       max_bits_differing=int(diff.max()))
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


def _random_codes(size: dict) -> tuple[np.ndarray, np.ndarray]:
    """Random 128-bit codes and queries one bit away from some of them (seeded)."""
    rng = np.random.default_rng(0)
    codes = rng.integers(0, 256, (size["codes"], 16), dtype=np.uint8)
    return codes, codes[rng.choice(len(codes), size["queries"], replace=False)] ^ 1


def _popcount64(x):
    """Bits set per int64 element (SWAR; torch has no popcount). Arithmetic shifts are safe: every
    mask clears the bits a sign extension could set."""
    x = x - ((x >> 1) & 0x5555555555555555)
    x = (x & 0x3333333333333333) + ((x >> 2) & 0x3333333333333333)
    x = (x + (x >> 4)) & 0x0F0F0F0F0F0F0F0F
    return (x * 0x0101010101010101) >> 56


def torch_topk(codes, queries, k: int, chunk: int = 16):
    """Exact Hamming top-k of each query over ``codes`` (both int64 words, (n, 2)) -> (D, I)."""
    import torch
    ds, ids = [], []
    for q in queries.split(chunk):
        d = _popcount64(codes[None] ^ q[:, None]).sum(-1)
        top = torch.topk(d, k, dim=1, largest=False, sorted=True)
        ds.append(top.values)
        ids.append(top.indices)
    return torch.cat(ds), torch.cat(ids)


def _scan_qps(codes: np.ndarray, queries: np.ndarray, device: str) -> tuple[float, np.ndarray]:
    """Queries/s of ``torch_topk`` on ``device`` (one warm-up chunk first) -> (qps, distances)."""
    import torch
    c = torch.from_numpy(codes.view(np.int64)).to(device)
    q = torch.from_numpy(np.ascontiguousarray(queries).view(np.int64)).to(device)
    torch_topk(c, q[:16], 10)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    sync()
    t0 = time.perf_counter()
    d, _ = torch_topk(c, q, 10)
    sync()
    return len(q) / (time.perf_counter() - t0), d.cpu().numpy()


def bench_scan(size: dict) -> dict:
    """Exact binary top-10 as one torch program: CPU (a slice of the queries) and CUDA queries/s,
    and whether the CUDA distances equal the CPU's on that slice."""
    codes, queries = _random_codes(size)
    n_cpu = max(16, len(queries) // 20)
    cpu_qps, d_cpu = _scan_qps(codes, queries[:n_cpu], "cpu")
    out = {"codes": len(codes), "queries": len(queries), "cpu_queries": n_cpu, "k": 10,
           "cpu_qps": round(cpu_qps, 1), "cuda_qps": None, "cuda_over_cpu": None,
           "distances_equal": None, "cuda_skipped": _cuda()}
    if out["cuda_skipped"] is None:
        qps, d = _scan_qps(codes, queries, "cuda")
        out.update(cuda_qps=round(qps, 1), cuda_over_cpu=round(qps / cpu_qps, 1),
                   distances_equal=bool(np.array_equal(d[:n_cpu], d_cpu)))
    print(json.dumps(out), flush=True)
    return out


def bench_faiss(size: dict) -> dict:
    """Exact binary top-10 over random 128-bit codes: CPU and GPU queries/s and agreement."""
    try:
        import faiss
    except ImportError:
        return {"skipped": "faiss is not installed here"}
    codes, queries = _random_codes(size)
    cpu = faiss.IndexBinaryFlat(128)
    cpu.add(codes)
    t0 = time.perf_counter()
    d_cpu, _ = cpu.search(queries, 10)
    cpu_qps = len(queries) / (time.perf_counter() - t0)
    out = {"codes": len(codes), "queries": len(queries), "k": 10, "cpu_qps": round(cpu_qps, 1),
           "cpu_threads": int(faiss.omp_get_max_threads()), "gpu_qps": None, "gpu_over_cpu": None,
           "distances_equal": None, "gpu_skipped": None}
    if not hasattr(faiss, "GpuIndexBinaryFlat") or faiss.get_num_gpus() == 0:
        out["gpu_skipped"] = "faiss has no GPU support here (install the 'gpu' extra on a GPU machine)"
    else:
        gpu = faiss.GpuIndexBinaryFlat(faiss.StandardGpuResources(), 128)
        gpu.add(codes)
        gpu.search(queries[:10], 10)  # warm-up
        t0 = time.perf_counter()
        d_gpu, _ = gpu.search(queries, 10)
        gpu_qps = len(queries) / (time.perf_counter() - t0)
        out.update(gpu_qps=round(gpu_qps, 1), gpu_over_cpu=round(gpu_qps / cpu_qps, 1),
                   distances_equal=bool(np.array_equal(d_cpu, d_gpu)))
    print(json.dumps(out), flush=True)
    return out


def main(argv: list[str] | None = None) -> int:
    """CLI entry (``neardup bench gpu``): measure, write the JSON, exit 0."""
    run(argv)
    return 0


def run(argv: list[str] | None = None) -> Path:
    """Measure and write ``bench/results/gpu_<date>[_tag].json`` -> its path."""
    ap = argparse.ArgumentParser(prog="python -m bench.gpu", description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small sizes (smoke test)")
    ap.add_argument("--out-dir", default=str(common.RESULTS_DIR))
    ap.add_argument("--tag", default="")
    args = ap.parse_args(argv)
    import torch
    size = SIZES["quick" if args.quick else "full"]
    result = {"machine": common.machine_info(), "sizes": size,
              "cuda_device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
              "encoders": bench_encoders(size), "faiss": bench_faiss(size), "scan": bench_scan(size)}
    name = f"gpu_{common.today()}" + (f"_{args.tag}" if args.tag else "") + ".json"
    out = Path(args.out_dir) / name
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(f"wrote {out}")
    return out


if __name__ == "__main__":
    raise SystemExit(main())
