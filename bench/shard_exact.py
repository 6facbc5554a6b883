"""Exact Hamming ground truth for the shard benchmark: FAISS brute force, on the GPU when asked.

Every index kind is scored against this, so it is the one search here that must be exact; the GPU
path only makes it affordable at sizes where the CPU scan would dominate the run.
"""
from __future__ import annotations

import numpy as np


def gpu_available() -> tuple[bool, str]:
    """Whether faiss can run GpuIndexBinaryFlat here, and why not."""
    import faiss
    if not hasattr(faiss, "GpuIndexBinaryFlat"):
        return False, f"faiss {faiss.__version__} has no GPU support (install faiss-gpu)"
    if faiss.get_num_gpus() < 1:
        return False, "faiss has GPU support but sees no CUDA device"
    return True, "ok"


def exact_knn(codes: np.ndarray, queries: np.ndarray, k: int, gpu: bool, batch: int = 1000
              ) -> tuple[np.ndarray, np.ndarray, str]:
    """Exact Hamming k-NN rows (D int32, I int64) with FAISS brute force, queries batched."""
    import faiss
    bits = codes.shape[1] * 8
    if gpu:
        res = faiss.StandardGpuResources()
        index = faiss.GpuIndexBinaryFlat(res, bits)
        method = "faiss GpuIndexBinaryFlat"
    else:
        index = faiss.IndexBinaryFlat(bits)
        method = "faiss IndexBinaryFlat (cpu)"
    for s in range(0, len(codes), 1 << 22):
        index.add(codes[s:s + (1 << 22)])
    k = min(k, len(codes))
    Ds, Is = [], []
    for s in range(0, len(queries), batch):
        D, I = index.search(queries[s:s + batch], k)
        Ds.append(D.astype(np.int32))
        Is.append(I.astype(np.int64))
    del index
    return np.concatenate(Ds), np.concatenate(Is), method
