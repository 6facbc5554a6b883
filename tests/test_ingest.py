"""Ray Data ingest on a real local Ray: folders and Parquet, bad files recorded, resumable by id."""
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from encoders.keypoints import extract as extract_keypoints
from encoders.registry import get_encoder
from rayapp.cluster import ensure_shards, kill_shards
from rayapp.config import load_config
from rayapp.ingest import IngestOptions, decode_cpus, load_done_ids, read_manifest, run_ingest
from rayapp.router import ShardRouter
from shards.verify import KEYPOINT_BYTES
from shards.views import view_id

SAMPLES = Path(__file__).resolve().parents[1] / "rayapp" / "samples"


@pytest.fixture
def source(tmp_path) -> Path:
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    files = sorted(SAMPLES.glob("*.jpg"))[:10]
    for f in files[:7]:
        shutil.copy(f, src / f.name)
    for f in files[7:]:
        shutil.copy(f, src / "sub" / f.name)
    (src / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not really a jpeg")
    (src / "notes.txt").write_text("not an image, and not listed")
    return src


def _cfg(tmp_path, name="pdq", shards=2, ref_views=None):
    return load_config(env={}, overrides={"encoder": {"name": name},
                                          "storage": {"index_dir": str(tmp_path / "index"),
                                                      "num_shards": shards, "ref_views": ref_views,
                                                      "namespace": f"t{abs(hash(str(tmp_path)))}"}})


def test_folder_ingest_is_searchable_and_resumable(ray_local, tmp_path, source):
    cfg = _cfg(tmp_path)
    opts = IngestOptions(batch_size=4, progress=False)
    rep = run_ingest(cfg, [str(source)], opts)
    assert (rep.listed, rep.indexed, rep.errors) == (11, 10, 1)
    assert 0 < rep.first_batch_s <= rep.seconds and 0 <= rep.first_batch <= rep.indexed
    assert rep.steady_images_per_s is None or rep.steady_images_per_s > 0

    manifest = read_manifest(rep.manifest_dir)
    assert manifest.schema.field("code").type == pa.binary(32)
    assert set(manifest.column_names) == {"id", "path", "code", "shard", "error"}
    errors = manifest.filter(pa.compute.invert(pa.compute.is_null(manifest["error"])))
    assert errors["id"].to_pylist() == ["broken.jpg"]
    assert "sub/" + sorted(SAMPLES.glob("*.jpg"))[8].name in load_done_ids(rep.manifest_dir)

    router = ShardRouter(ensure_shards(cfg), timeout_s=10)
    assert sum(s["count"] for s in router.stats()) == 10
    enc = get_encoder("pdq")
    from encoders.decode import load_image
    code = enc.encode([load_image(source / sorted(SAMPLES.glob("*.jpg"))[0].name)])
    results, missing = router.search(code, k=3, radius=None)
    assert not missing and results[0][0].distance == 0
    assert results[0][0].id == sorted(SAMPLES.glob("*.jpg"))[0].name
    # Each image is stored with its centre crop, which a crop of it finds.
    assert sum(s["views"] for s in router.stats()) == 10
    from encoders.tta import ref_view_images
    first = load_image(source / sorted(SAMPLES.glob("*.jpg"))[0].name)
    (hit, *_), = router.search(enc.encode(ref_view_images(first, ["center70"])), k=3)[0]
    assert (hit.id, hit.distance, hit.ref_view) == (sorted(SAMPLES.glob("*.jpg"))[0].name, 0, "center70")

    # Re-run: everything done is skipped, the broken file is retried, nothing is duplicated.
    again = run_ingest(cfg, [str(source)], opts)
    assert (again.skipped, again.indexed, again.errors) == (10, 0, 1)
    assert sum(s["count"] for s in router.stats()) == 10
    kill_shards(cfg)


def test_parquet_source_with_image_bytes(ray_local, tmp_path):
    files = sorted(SAMPLES.glob("*.jpg"))[:6]
    table = pa.table({"id": [f.stem for f in files], "image": [f.read_bytes() for f in files]})
    pq.write_table(table, tmp_path / "images.parquet")
    cfg = _cfg(tmp_path, shards=1, ref_views=[])  # one code per image
    rep = run_ingest(cfg, [str(tmp_path / "images.parquet")], IngestOptions(progress=False))
    assert (rep.indexed, rep.errors) == (6, 0)
    router = ShardRouter(ensure_shards(cfg), timeout_s=10)
    got = router.get(files[2].stem)
    assert got is not None and got["meta"]["path"].endswith(f"#{files[2].stem}")
    # Idempotent by id: a full re-run without resume adds nothing new.
    rep2 = run_ingest(cfg, [str(tmp_path / "images.parquet")], IngestOptions(progress=False, resume=False))
    assert rep2.indexed == 6
    assert sum(s["count"] for s in router.stats()) == 6
    assert sum(s["views"] for s in router.stats()) == 0
    kill_shards(cfg)


def test_missing_source_is_a_clear_error(ray_local, tmp_path):
    with pytest.raises(FileNotFoundError, match="source not found"):
        run_ingest(_cfg(tmp_path), [str(tmp_path / "nope")], IngestOptions(progress=False))


def test_index_meta_refuses_another_encoder(ray_local, tmp_path, source):
    run_ingest(_cfg(tmp_path, shards=1), [str(source / "sub")], IngestOptions(progress=False))
    with pytest.raises(ValueError, match="built with encoder='pdq'"):
        run_ingest(_cfg(tmp_path, name="phash", shards=1), [str(source)], IngestOptions(progress=False))
    kill_shards(_cfg(tmp_path, shards=1))


def test_decode_records_bad_ids_and_files_and_crops_the_stored_views():
    from rayapp.ingest import decode_batch
    good = sorted(SAMPLES.glob("*.jpg"))[0].read_bytes()
    out = decode_batch({"id": ["ok", "bad\x1fid", "broken"], "path": ["a", "b", "c"],
                        "bytes": [good, good, b"not an image"]}, 64, 10_000_000, ("center70",))
    assert out["error"][0] == "" and "reserved" in out["error"][1] and out["error"][2]
    assert out["pixels"].shape == (3, 64, 64, 3) and out["view_pixels"].shape == (3, 1, 64, 64, 3)
    assert out["view_pixels"][0].any() and not (out["view_pixels"][0, 0] == out["pixels"][0]).all()
    assert "view_pixels" not in decode_batch({"id": ["ok"], "path": ["a"], "bytes": [good]}, 64, 10_000_000)
    assert "keypoints" not in out  # only when asked for, so no empty columns reach Ray Data
    kps = decode_batch({"id": ["ok", "broken"], "path": ["a", "b"], "bytes": [good, b"x"]},
                       64, 10_000_000, keypoints=True)["keypoints"]
    assert kps.shape == (2, KEYPOINT_BYTES) and kps[0, :2].any() and not kps[1].any()


def test_deephash_ingest_stores_side_vectors(ray_local, tmp_path):
    files = sorted(SAMPLES.glob("*.jpg"))[:4]
    src = tmp_path / "src"
    src.mkdir()
    for f in files:
        shutil.copy(f, src / f.name)
    cfg = _cfg(tmp_path, name="deephash", shards=1, ref_views=["center70", "mirror"])
    rep = run_ingest(cfg, [str(src)], IngestOptions(progress=False))
    assert (rep.indexed, rep.errors) == (4, 0)
    router = ShardRouter(ensure_shards(cfg), timeout_s=30, ref_views=2)
    (stats,) = router.stats()
    assert stats["vector_bytes"] == get_encoder("deephash").vector_bytes and (stats["count"], stats["views"]) == (4, 8)
    from encoders.decode import load_image
    enc = get_encoder("deephash")
    codes, _, vectors = enc.encode_vectors(enc.preprocess(load_image(files[2]))[None])
    (hits,), _ = router.search(codes, k=3, vectors=vectors)
    assert hits[0].id == files[2].name and hits[0].score < 0.05 and hits[0].ref_view is None
    # each image's keypoints were stored with it: a corner crop of it verifies
    assert stats["keypoint_bytes"] == KEYPOINT_BYTES
    img = load_image(files[2])
    crop = img.crop((img.width // 3, img.height // 3, img.width, img.height))
    verified = router.verify(hits, extract_keypoints(crop), 3)
    assert verified[0].id == files[2].name and verified[0].inliers >= 40, verified
    assert all((h.inliers or 0) < 25 for h in verified[1:])
    # a batch job's workers verify pairs themselves from the shard's stored keypoints: same counts
    from rayapp.worker_verify import WorkerVerifyingRouter
    pairs = [(0, h.id) for h in hits] + [(1, h.id) for h in hits] + [(0, "missing")]
    queries = [extract_keypoints(crop), extract_keypoints(img.transpose(Image.Transpose.FLIP_LEFT_RIGHT))]
    blocks = [queries[qi] for qi, _ in pairs]
    in_shard = router.verify_pairs(pairs, blocks)
    here = WorkerVerifyingRouter(ensure_shards(cfg), timeout_s=30, ref_views=2).verify_pairs(pairs, blocks)
    assert here == in_shard and in_shard[0] >= 40 and in_shard[-1] is None
    # the stored mirror keeps keypoints of its own: a mirrored copy verifies through it, in the
    # shard and in a worker alike; a crop's view id borrows its image's
    mirror, crop70 = view_id(files[2].name, "mirror"), view_id(files[2].name, "center70")
    pairs = [(1, files[2].name), (1, mirror), (0, crop70)]
    blocks = [queries[qi] for qi, _ in pairs]
    in_shard = router.verify_pairs(pairs, blocks)
    assert WorkerVerifyingRouter(ensure_shards(cfg), timeout_s=30, ref_views=2).verify_pairs(pairs, blocks) == in_shard
    assert in_shard[1] >= 40 > in_shard[0] and in_shard[2] >= 40, in_shard
    # the index records its views: a later command with the default configuration keeps them
    later = _cfg(tmp_path, name="deephash", shards=1)
    assert later.storage.ref_views == ["center70"]
    ensure_shards(later)
    assert later.storage.ref_views == ["center70", "mirror"]
    kill_shards(cfg)


def test_an_index_without_side_vectors_ranks_by_weighted_hamming(ray_local, tmp_path):
    files = sorted(SAMPLES.glob("*.jpg"))[4:7]
    cfg = load_config(env={}, overrides={
        "encoder": {"name": "deephash"},
        "storage": {"index_dir": str(tmp_path / "index"), "num_shards": 1, "vectors": False,
                    "ref_views": [], "namespace": f"nv{abs(hash(str(tmp_path)))}"}})
    src = tmp_path / "src"
    src.mkdir()
    for f in files:
        shutil.copy(f, src / f.name)
    assert run_ingest(cfg, [str(src)], IngestOptions(progress=False)).indexed == 3
    router = ShardRouter(ensure_shards(cfg), timeout_s=30)
    assert router.stats()[0]["vector_bytes"] == 0  # the writers' vectors were dropped
    from encoders.decode import load_image
    enc = get_encoder("deephash")
    codes, weights, vectors = enc.encode_vectors(enc.preprocess(load_image(files[1]))[None])
    (hits,), _ = router.search(codes, k=2, weights=weights, vectors=vectors)
    assert hits[0].id == files[1].name and hits[0].score is None and hits[0].weighted < 1
    kill_shards(cfg)


def test_decode_tasks_fill_the_cpus_beside_the_encoders():
    """As many decode tasks as CPUs run beside the encoder actors; a GPU encoder holds no CPU,
    so each decode task then takes a whole one, as before."""
    assert decode_cpus(2, 1) == 0.5
    assert decode_cpus(16, 1) == 15 / 16
    assert decode_cpus(16, 0) == 1.0
    assert decode_cpus(1, 1) == 1.0  # a one-CPU node keeps one decode task of one CPU
