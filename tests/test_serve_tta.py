"""Query-time TTA and weighted ranking through Ray Serve: real Ray, deephash, real JPEG files
over HTTP.

Photos: the bundled CC0 samples. With ``encoder.tta = flip_rot90`` the API also searches the
query's mirrored and 90/270-degree rotated variants and keeps each id's best rank (a turned or
mirrored match pays a small prior cost), so rotated and mirrored copies come back near and say
which variant matched (here through an Encoder deployment of its own); an image query is ranked by weighted Hamming distance (its bit
confidences); a hex-code query (no pixels) is searched as is, by Hamming distance.
"""
from __future__ import annotations

import uuid
from pathlib import Path

import httpx
import pytest
from PIL import Image
from ray import serve

from encoders.registry import get_encoder
from encoders.tta import REF_VIEW_COST, costs, view_names
from shards.vectors import HASH_CREDIT
from shards.verify import BONUS_FROM, KEYPOINT_BYTES, verify_bonus
from rayapp.config import Config
from rayapp.lifecycle import run_server
from tests.helpers_images import jpeg_bytes
from tests.helpers_net import free_port

SAMPLES = sorted((Path(__file__).resolve().parents[1] / "rayapp" / "samples").glob("*.jpg"))


@pytest.fixture(scope="module")
def client(ray_local, tmp_path_factory):
    cfg = Config()
    cfg.query.tta = "flip_rot90"
    cfg.encoder.placement = "replica"  # the Encoder deployment of its own (test_serve_http: in the ingress)
    cfg.storage.index_dir = str(tmp_path_factory.mktemp("index"))
    cfg.storage.namespace = f"neardup-tta-{uuid.uuid4().hex[:8]}"
    cfg.serve.port = free_port()
    url = run_server(cfg, blocking=False)
    with httpx.Client(base_url=url, timeout=60.0) as c:
        yield c
    serve.shutdown()
    from rayapp.cluster import kill_shards
    kill_shards(cfg)


def _search(client: httpx.Client, data: bytes) -> dict:
    resp = client.post("/v1/search", files={"file": ("q.jpg", data, "image/jpeg")}, data={"k": "5"})
    assert resp.status_code == 200, resp.text
    return resp.json()


def test_rotated_and_mirrored_copies_are_found_with_tta(client):
    encoder = client.get("/v1/status").json()["encoder"]
    assert encoder["tta"] == "flip_rot90" and encoder["rank"] == "vector"
    assert encoder["placement"] == "replica"
    assert encoder["vector_bytes"] == get_encoder("deephash").vector_bytes  # the index keeps a side vector per code
    photos = {f"p{i}": Image.open(path).convert("RGB") for i, path in enumerate(SAMPLES[:12])}
    for pid, img in photos.items():
        resp = client.post("/v1/items", files={"file": (f"{pid}.jpg", jpeg_bytes(img), "image/jpeg")},
                           data={"id": pid})
        assert resp.status_code == 200, resp.text
    target = photos["p1"]
    # the variant that undoes each edit is the one that matched (np.rot90 turns counter-clockwise)
    undo = {Image.Transpose.ROTATE_90: "rot270", Image.Transpose.ROTATE_270: "rot90",
            Image.Transpose.FLIP_LEFT_RIGHT: "flip"}
    for edit, variant in undo.items():
        query = jpeg_bytes(target.transpose(edit))
        found = _search(client, query)
        assert found["results"][0]["id"] == "p1", (edit, found["results"])
        assert found["results"][0]["variant"] == variant, (edit, found["results"][0])
        names = view_names("flip_rot90")
        prior = dict(zip(names, costs(names)))
        # each hit pays its query view's prior cost, plus the stored crop's when it matched one
        assert all(r.get("cost", 0) == pytest.approx(prior[r["variant"]] + REF_VIEW_COST * ("ref_view" in r))
                   for r in found["results"])
        # ranked by the side vectors' score (cosine distance less the side-hash credit) plus
        # that cost, less the credit of hits whose keypoints verified them
        ranked = [r["score"] + r.get("cost", 0) - verify_bonus(r.get("inliers", 0))
                  for r in found["results"]]
        assert ranked == sorted(ranked)
        assert all(-HASH_CREDIT <= r["score"] <= 64 for r in found["results"])
        assert found["results"][0]["score"] < found["results"][1]["score"]
        with_tta = found["results"][0]["distance"]
        assert with_tta <= 10, (edit, with_tta)
        # the same query as a hex code is searched without variants: the copy is farther
        plain = client.post("/v1/search", json={"code": found["code"], "k": 5}).json()
        plain_p1 = {r["id"]: r["distance"] for r in plain["results"]}.get("p1", 129)
        assert all("weighted" not in r for r in plain["results"])
        assert with_tta < plain_p1, (edit, with_tta, plain_p1)
    # an unrelated photo is not pulled in by the variants; a stored photo matches as given
    other = _search(client, jpeg_bytes(Image.open(SAMPLES[-1]).convert("RGB")))
    assert all(r["distance"] > 10 for r in other["results"])
    same = _search(client, jpeg_bytes(photos["p2"]))["results"][0]
    assert same["id"] == "p2" and same["variant"] == "original"


def test_an_off_centre_crop_is_found_by_its_keypoints(client):
    """40% of a stored photo, cut from its corner and re-encoded: too little of it for the
    global code, but its keypoints verify it (``inliers``) and lift it to the top."""
    photos = {f"c{i}": Image.open(path).convert("RGB") for i, path in enumerate(SAMPLES[20:32])}
    photos["s44"] = Image.open(SAMPLES[44]).convert("RGB")  # not a (symmetric) garment
    for pid, img in photos.items():
        resp = client.post("/v1/items", files={"file": (f"{pid}.jpg", jpeg_bytes(img), "image/jpeg")},
                           data={"id": pid})
        assert resp.status_code == 200, resp.text
    status = client.get("/v1/status").json()
    assert status["encoder"]["verify"] == 20
    # each stored image's keypoints sit in its shard's blob log (its centre crop has none)
    assert sum(r["keypoint_file_bytes"] for r in status["shards"]) >= 25 * KEYPOINT_BYTES
    for pid in ("c3", "c7"):
        img = photos[pid]
        w, h = img.size
        crop = img.crop((int(w * 0.37), int(h * 0.37), w, h))
        top = _search(client, jpeg_bytes(crop, 40))["results"][0]
        assert top["id"] == pid and top["inliers"] > BONUS_FROM, top
    # a mirrored crop matches through the mirrored view and is verified by mirrored keypoints
    w, h = photos["s44"].size
    flipped = photos["s44"].transpose(Image.Transpose.FLIP_LEFT_RIGHT).crop((0, 0, int(w * 0.75), int(h * 0.75)))
    top = _search(client, jpeg_bytes(flipped, 60))["results"][0]
    assert top["id"] == "s44" and "flip" in top["variant"] and top["inliers"] > BONUS_FROM, top
    # a hex-code query has no pixels, so nothing is verified
    plain = client.post("/v1/search", json={"code": "00" * 16, "k": 5}).json()["results"]
    assert all("inliers" not in r for r in plain)
