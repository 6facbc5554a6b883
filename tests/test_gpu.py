"""GPU paths: deephash on CUDA and faiss-gpu's exact binary search. Skipped cleanly without a GPU."""
import numpy as np
import pytest
import torch

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU on this machine")]


def test_deephash_cuda_codes_match_cpu(tmp_path):
    from encoders.deephash import DeepHashEncoder, DeepHashNet
    torch.manual_seed(0)
    model = DeepHashNet("mobilenet_v3_small", bits=128).eval()
    batch = np.random.default_rng(0).integers(0, 256, (16, 160, 160, 3), dtype=np.uint8)
    cpu = DeepHashEncoder(model, input_size=160, device="cpu").encode_batch(batch)
    gpu = DeepHashEncoder(model, input_size=160, device="cuda").encode_batch(batch)
    assert cpu.shape == gpu.shape == (16, 16)
    # Mixed precision may flip a bit that sits at ~0; the codes must agree almost everywhere.
    diff = np.unpackbits(np.bitwise_xor(cpu, gpu), axis=1).sum(axis=1)
    assert diff.max() <= 4


def test_faiss_gpu_binary_flat_is_exact():
    import faiss
    if not hasattr(faiss, "GpuIndexBinaryFlat") or faiss.get_num_gpus() == 0:
        pytest.skip("faiss built without GPU support (install the 'gpu' extra)")
    rng = np.random.default_rng(0)
    codes = rng.integers(0, 256, (20000, 16), dtype=np.uint8)
    cpu = faiss.IndexBinaryFlat(128)
    cpu.add(codes)
    gpu = faiss.GpuIndexBinaryFlat(faiss.StandardGpuResources(), 128)
    gpu.add(codes)
    q = codes[:100]
    d_cpu, _ = cpu.search(q, 10)
    d_gpu, _ = gpu.search(q, 10)
    np.testing.assert_array_equal(d_cpu, d_gpu)
