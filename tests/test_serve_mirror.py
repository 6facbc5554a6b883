"""An index that keeps each image's mirror (``storage.ref_views: [center70, mirror]``), filled
over HTTP through Ray Serve: real Ray, deephash, real JPEG files.

Dedup over stored records reads no image again, so it can find a mirrored copy only through a
stored mirror; ORB is not mirror-invariant, so the mirror is stored with keypoints of its own.
"""
from __future__ import annotations

import uuid
from pathlib import Path

import httpx
import pyarrow.parquet as pq
import pytest
from PIL import Image
from ray import serve

from encoders.keypoints import extract as extract_keypoints
from rayapp.config import Config
from rayapp.lifecycle import run_server
from shards.views import view_id
from tests.helpers_images import jpeg_bytes
from tests.helpers_net import free_port

SAMPLES = sorted((Path(__file__).resolve().parents[1] / "rayapp" / "samples").glob("*.jpg"))


@pytest.fixture(scope="module")
def served(ray_local, tmp_path_factory):
    cfg = Config()
    cfg.storage.ref_views = ["center70", "mirror"]
    cfg.storage.index_dir = str(tmp_path_factory.mktemp("index"))
    cfg.storage.namespace = f"neardup-mirror-{uuid.uuid4().hex[:8]}"
    cfg.serve.port = free_port()
    url = run_server(cfg, blocking=False)
    with httpx.Client(base_url=url, timeout=60.0) as c:
        yield cfg, c
    serve.shutdown()
    from rayapp.cluster import kill_shards
    kill_shards(cfg)


def test_items_added_over_http_keep_their_mirror_and_dedup_finds_the_flip(served, tmp_path):
    from rayapp.cluster import ensure_shards
    from rayapp.dedup import DedupOptions, run_dedup
    from rayapp.router import ShardRouter
    cfg, client = served
    photos = {f"p{i}": Image.open(path).convert("RGB") for i, path in enumerate(SAMPLES[:6])}
    photos["p0-flipped"] = photos["p0"].transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    for pid, img in photos.items():
        resp = client.post("/v1/items", files={"file": (f"{pid}.jpg", jpeg_bytes(img), "image/jpeg")},
                           data={"id": pid})
        assert resp.status_code == 200, resp.text
    status = client.get("/v1/status").json()
    assert sum(r["count"] for r in status["shards"]) == 7 and sum(r["views"] for r in status["shards"]) == 14
    # the mirror's own keypoints verify a mirrored copy, where the image's as given do not
    router = ShardRouter(ensure_shards(cfg), timeout_s=30, ref_views=2)
    flipped = extract_keypoints(photos["p0-flipped"])
    as_given, mirror = router.verify_pairs([(0, "p0"), (0, view_id("p0", "mirror"))], [flipped, flipped])
    assert mirror >= 100 and as_given < mirror / 3, (as_given, mirror)
    # dedup over the stored records alone groups the flip with its photo, and nothing else
    run_dedup(cfg, DedupOptions(out_dir=str(tmp_path / "job"), views="stored", report=False, progress=False))
    edges = pq.read_table(tmp_path / "job" / "edges.parquet").to_pylist()
    assert [(e["a"], e["b"]) for e in edges] == [("p0", "p0-flipped")], edges
    assert edges[0]["confidence"] >= 0.99 and "mirror" in edges[0]["variant"]
