"""deephash: shapes, bit packing, determinism, weights round trip, bundled weights, real-file matching."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from encoders.augment import apply_family
from encoders.base import hamming, unpack_bits
from shards.weighted import weighted_hamming
from encoders.deephash import (WEIGHTS_DIR, Backbone, DeepHashEncoder, DeepHashNet, build_deephash,
                               bundled_weights, load_model, read_metadata, save_weights)
from encoders.decode import load_image
from encoders.tta import costs, variant_names, variants

torch.set_num_threads(1)
SIZE = 64  # small inputs keep the random-model tests fast


def _model(bits: int = 128, seed: int = 0) -> DeepHashNet:
    torch.manual_seed(seed)
    model = DeepHashNet("mobilenet_v3_small", bits).eval()
    with torch.no_grad():  # spread BN running stats so codes are not all-equal at init
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm1d):
                m.running_var.fill_(1e-4)
    return model


def _batch(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, SIZE, SIZE, 3), dtype=np.uint8)


@pytest.mark.parametrize("bits", [64, 128, 256])
def test_shapes_and_packing(bits):
    model = _model(bits)
    x = torch.randn(3, 3, SIZE, SIZE)
    with torch.no_grad():
        t = model(x)
    assert t.shape == (3, bits) and t.abs().max() <= 1
    enc = DeepHashEncoder(model, input_size=SIZE, device="cpu")
    codes = enc.encode_batch(_batch(3))
    assert codes.shape == (3, bits // 8) and codes.dtype == np.uint8
    with torch.no_grad():
        signs = model.logits(enc._to_tensor(_batch(3))) > 0
    assert np.array_equal(unpack_bits(codes).astype(bool), signs.numpy())  # MSB-first packing of sign(h)


def test_bits_must_be_a_multiple_of_8():
    with pytest.raises(ValueError, match="multiple of 8"):
        DeepHashNet("mobilenet_v3_small", 100)


def test_unknown_backbone_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown backbone"):
        Backbone.parse("vgg99")


@pytest.mark.parametrize("name", ["mobilenet_v3_small", "resnet18"])
def test_backbones_build_feature_maps(name):
    module, channels = Backbone(name).build()
    with torch.no_grad():
        fmap = module.eval()(torch.randn(1, 3, SIZE, SIZE))
    assert fmap.ndim == 4 and fmap.shape[1] == channels


def test_codes_match_across_batch_sizes_and_runs():
    model = _model()
    batch = _batch(8, seed=1)
    enc = DeepHashEncoder(model, input_size=SIZE, device="cpu")
    whole = enc.encode_batch(batch)
    one_by_one = np.concatenate([enc.encode_batch(batch[i:i + 1]) for i in range(8)])
    again = DeepHashEncoder(_model(), input_size=SIZE, device="cpu").encode_batch(batch)
    assert np.array_equal(whole, one_by_one)
    assert np.array_equal(whole, again)


def test_wrong_batch_shape_is_a_clear_error():
    enc = DeepHashEncoder(_model(), input_size=SIZE, device="cpu")
    with pytest.raises(ValueError, match="expected uint8 batch"):
        enc.encode_batch(np.zeros((2, SIZE + 1, SIZE, 3), np.uint8))


def test_tta_variants_shape_and_identity_first():
    enc = DeepHashEncoder(_model(), input_size=SIZE, device="cpu", tta="flip_rot90")
    batch = _batch(2)
    v = np.stack([enc.encode_batch(x) for x in variants(batch, enc.tta)], axis=1)
    assert v.shape == (2, 4, 16)
    assert np.array_equal(v[:, 0], enc.encode_batch(batch))
    with pytest.raises(ValueError, match="tta"):
        DeepHashEncoder(_model(), input_size=SIZE, device="cpu", tta="spin")


def test_tta_variant_names_and_prior_costs():
    assert variant_names("none") == ("original",)
    assert variant_names("flip_rot90") == ("original", "flip", "rot90", "rot270")
    assert len(variant_names("d4")) == len(set(variant_names("d4"))) == 8
    assert costs(variant_names("flip_rot90"), flip_cost=0.5, rot_cost=1.5).tolist() == [0.0, 0.5, 1.5, 1.5]
    assert costs(variant_names("d4"), 0.5, 1.5, half_turn_cost=2.0).tolist() == [0.0, 0.5, 1.5, 1.5, 2.0, 2.0, 1.5, 1.5]
    assert variant_names("flip_turns") == ("original", "flip", "rot90", "rot270", "rot180", "flip+rot180")
    b = _batch(1)
    vs = dict(zip(variant_names("d4"), variants(b, "d4")))
    assert np.array_equal(vs["flip+rot180"], b[:, ::-1]) and np.array_equal(vs["rot180"], b[:, ::-1, ::-1])
    assert [v.tobytes() for v in variants(b, "flip_turns")] == [v.tobytes() for v in variants(b, "d4")[:6]]
    assert len(costs(variant_names("d4"))) == len(variants(_batch(1), "d4"))
    with pytest.raises(ValueError, match=">= 0"):
        costs(["flip"], flip_cost=-1)
    with pytest.raises(TypeError, match="sequence of view names"):
        costs("flip")


def test_reference_view_crops():
    from PIL import Image
    from encoders.tta import ref_view_images
    img = Image.new("RGB", (200, 100))
    centre, corner = ref_view_images(img, ["center70", "bottom_right70"])
    assert centre.size == corner.size == (140, 70)
    assert ref_view_images(img, []) == []
    with pytest.raises(ValueError, match="unknown reference view"):
        ref_view_images(img, ["zoom"])


def test_weights_round_trip(tmp_path):
    model = _model(64, seed=3)
    path = save_weights(model, tmp_path / "w.safetensors", input_size=SIZE, extra={"note": "test"})
    meta = read_metadata(path)
    assert meta["backbone"] == "mobilenet_v3_small" and meta["bits"] == "64" and meta["input_size"] == str(SIZE)
    enc = build_deephash(weights=path, device="cpu")
    assert enc.bits == 64 and enc.input_size == SIZE and enc.name == "deephash"
    ref = DeepHashEncoder(model, input_size=SIZE, device="cpu")
    assert np.array_equal(enc.encode_batch(_batch(4)), ref.encode_batch(_batch(4)))
    with pytest.raises(ValueError, match="64-bit"):
        build_deephash(weights=path, bits=128)


def test_bad_weights_files_are_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_model(tmp_path / "missing.safetensors")
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"not a safetensors file")
    with pytest.raises(ValueError, match="safetensors"):
        load_model(junk)


def _bundled():
    try:
        return bundled_weights()
    except FileNotFoundError as exc:
        pytest.skip(f"bundled weights not trained yet: {exc}")


def test_bundled_weights_load_and_are_small():
    path = _bundled()
    assert path.parent == WEIGHTS_DIR and path.stat().st_size < 20 * 2**20
    enc = build_deephash(device="cpu")
    assert enc.bits == 128
    from encoders.registry import get_encoder
    assert get_encoder("deephash", device="cpu").bits == 128


def test_edited_copy_is_closer_than_unrelated_image(tmp_path, photo_dir):
    """On JPEG/PNG files on disk: an edited copy is closer to its source than to unrelated images."""
    _bundled()
    enc = build_deephash(device="cpu")
    originals = sorted(photo_dir.iterdir())
    rng = np.random.default_rng(0)
    queries, truth = [], []
    for i, src in enumerate(originals[:6]):
        for fam in ("jpeg", "downscale", "text_overlay", "center_crop", "pad", "brightness_contrast"):
            path = tmp_path / f"{src.stem}_{fam}.jpg"
            apply_family(fam, load_image(src), rng).save(path, quality=90)
            queries.append(load_image(path))
            truth.append(i)
    refs = enc.encode([load_image(p) for p in originals])
    d = hamming(enc.encode(queries), refs)
    truth = np.array(truth)
    d_true = d[np.arange(len(truth)), truth]
    unrelated = np.ones_like(d, dtype=bool)
    unrelated[np.arange(len(truth)), truth] = False
    closer_than_unrelated = (d_true[:, None] < d)[unrelated]  # every (edited copy, unrelated original) pair
    assert closer_than_unrelated.mean() >= 0.95, f"{closer_than_unrelated.mean():.3f}"
    nearest_is_source = d_true < np.where(unrelated, d, 10_000).min(axis=1)
    assert nearest_is_source.mean() >= 0.75, f"{nearest_is_source.mean():.2f}"
    assert np.median(d_true) < np.median(d[unrelated])
    # ranked by the queries' bit confidences (the service's default) the same bars hold
    q_codes, q_weights = enc.encode_weighted(np.stack([enc.preprocess(q) for q in queries]))
    w = np.stack([weighted_hamming(c, wt, refs) for c, wt in zip(q_codes, q_weights)])
    w_true = w[np.arange(len(truth)), truth]
    assert (w_true[:, None] < w)[unrelated].mean() >= 0.95
    assert (w_true < np.where(unrelated, w, np.inf).min(axis=1)).mean() >= 0.75


def test_encode_weighted_matches_codes_and_weighs_bits():
    enc = DeepHashEncoder(_model(), input_size=SIZE, device="cpu")
    batch = _batch(5)
    codes, weights = enc.encode_weighted(batch)
    assert np.array_equal(codes, enc.encode_batch(batch))
    assert weights.shape == (5, 128) and weights.dtype == np.float32
    assert weights.min() >= 0 and weights.max() <= 1
    other = _batch(4, seed=1)
    refs = enc.encode_batch(other)
    # unit weights give Hamming distance; a bit's weight is what flipping it costs
    assert np.allclose(weighted_hamming(codes[0], np.ones(128), refs), hamming(codes[:1], refs)[0])
    flipped = codes[0].copy()
    flipped[2] ^= 0b1000_0000  # bit 16
    assert weighted_hamming(codes[0], weights[0], flipped[None])[0] == pytest.approx(weights[0, 16])


# ---------------------------------------------------------------- training losses and evaluation metrics
def test_losses_behave():
    from encoders.train_config import TrainConfig
    from encoders.train_loop import lr_at
    from encoders.train_losses import hash_terms, info_nce, koleo
    torch.manual_seed(0)
    z = torch.nn.functional.normalize(torch.randn(16, 32), dim=1)
    aligned = info_nce(z, z.clone(), None, 0.1)
    shuffled = info_nce(z, z[torch.randperm(16)], None, 0.1)
    assert aligned < shuffled
    queue = torch.nn.functional.normalize(torch.randn(64, 32), dim=1)
    assert info_nce(z, z.clone(), queue, 0.1) >= aligned  # more negatives never make it easier
    assert koleo(z) < koleo(torch.nn.functional.normalize(z + 0.01 * torch.randn(16, 32) + z[:1], dim=1))
    quant, balance, decor = hash_terms(torch.sign(torch.randn(64, 16)))
    assert quant == 0 and balance < 0.1 and decor < 0.2
    cfg = TrainConfig(lr=1.0)
    assert lr_at(cfg, 0.0) < lr_at(cfg, cfg.warmup_frac) == pytest.approx(1.0) and lr_at(cfg, 1.0) < 0.05


def test_recalibrate_bn_uses_final_weights():
    from encoders.train_weights import recalibrate_bn
    model = _model(64)
    x = torch.randn(8, 3, SIZE, SIZE) * 3 + 1
    recalibrate_bn(model, iter([x]))
    bns = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    assert all(int(m.num_batches_tracked) == 1 for m in bns)  # stats re-estimated from scratch
    assert all(m.momentum is not None for m in bns) and not model.training
    assert model.head[-1].running_var.mean() > 1e-3  # not the test fixture's squeezed variance


def test_metrics_rank_ties_pessimistically():
    from rayapp.evaluate import micro_ap, rank_pessimistic, score_codes
    dist = np.array([[3, 3, 5], [1, 2, 2], [4, 4, 4]])
    assert rank_pessimistic(dist, np.array([0, 0, 2])).tolist() == [2, 1, 3]
    assert micro_ap(np.array([0.9, 0.9]), np.array([True, False]), 1) == pytest.approx(0.5)
    assert micro_ap(np.array([0.9, 0.8]), np.array([True, False]), 1) == pytest.approx(1.0)
    res = score_codes(np.array([[0, 5], [5, 0], [3, 3]]), 8, np.array([0, 1, -1]), ["a", "b", "neg"], k_micro=1)
    assert res["mAP@100"] == 1.0 and res["recall@1"] == 1.0 and set(res["per_family_recall@1"]) == {"a", "b"}
    assert 0.0 < res["muAP"] <= 1.0


def _service_distances(enc, queries, refs) -> np.ndarray:
    """(queries x refs) side-vector distance plus view cost, over the service's default views."""
    from rayapp.config import QueryConfig
    from encoders.tta import query_variants
    from shards.vectors import vector_distances
    cfg = QueryConfig()
    _, _, r_vec = enc.encode_vectors(np.stack([enc.preprocess(im) for im in refs]))
    rows = []
    for q in queries:
        views, names = query_variants(q, enc.preprocess, cfg.tta, cfg.content)
        _, _, q_vec = enc.encode_vectors(np.concatenate(views))
        d = vector_distances(q_vec, r_vec, enc.bits) + cfg.view_costs(names)[:, None]
        rows.append(d.min(axis=0))
    return np.stack(rows)


@pytest.mark.parametrize("edit", ["fade_white", "fade_black", "vflip", "rot180", "negative"])
def test_faded_and_upside_down_copies_are_closer_than_unrelated_photos(tmp_path, edit):
    """Real photo files: a copy faded 60% toward white or black, mirrored top-bottom, turned
    upside down or in colour negative, saved as JPEG, is nearer its source than any unrelated
    photo."""
    from pathlib import Path
    from PIL import Image, ImageOps
    _bundled()
    enc = build_deephash(device="cpu")
    sources = sorted((Path(__file__).resolve().parents[1] / "rayapp" / "samples").glob("*.jpg"))[::4][:10]
    originals = [load_image(p) for p in sources]
    queries = []
    for i, img in enumerate(originals):
        if edit.startswith("fade"):
            colour = (255, 255, 255) if edit == "fade_white" else (0, 0, 0)
            out = Image.blend(img, Image.new("RGB", img.size, colour), 0.6)
        elif edit == "negative":
            out = ImageOps.invert(img)
        else:
            out = img.transpose(Image.FLIP_TOP_BOTTOM if edit == "vflip" else Image.ROTATE_180)
        out.save(tmp_path / f"{i}.jpg", quality=85)
        queries.append(load_image(tmp_path / f"{i}.jpg"))
    d = _service_distances(enc, queries, originals)
    own = np.diag(d)
    others = np.where(np.eye(len(d), dtype=bool), np.inf, d).min(axis=1)
    assert (own < others).mean() >= 0.9, (edit, own.round(2), others.round(2))


@pytest.mark.skipif(not __import__("encoders.onnx_cpu", fromlist=["x"]).available(),
                    reason="onnxruntime and onnx are not installed")
def test_onnx_runtime_gives_the_eager_codes_and_vectors(photo_dir):
    """The bundled weights through ONNX Runtime (the CPU default) and through eager PyTorch
    encode real photos and their edits alike: codes within a bit, side vectors within a step."""
    fast, eager = build_deephash(device="cpu"), build_deephash(device="cpu", runtime="torch")
    assert fast.runtime == "onnx" and eager.runtime == "torch" and fast.info()["runtime"] == "onnx"
    photos = [load_image(p) for p in sorted(photo_dir.glob("*.jpg"))[:8]]
    edited = [apply_family(["rotate", "fade", "screenshot", "combo_crop_text_jpeg"][i % 4], im, np.random.default_rng(i)) for i, im in enumerate(photos)]
    batch = np.stack([fast.preprocess(im) for im in photos + edited])
    (c1, w1, v1), (c2, w2, v2) = fast.encode_vectors(batch), eager.encode_vectors(batch)
    assert np.diag(hamming(c1, c2)).max() <= 1
    assert np.abs(v1.astype(int) - v2.astype(int)).max() <= 1
    np.testing.assert_allclose(w1, w2, atol=1e-3)
    with pytest.raises(ValueError, match="runtime"):
        build_deephash(device="cpu", runtime="tensorrt")
