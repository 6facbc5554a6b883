"""HTTP end to end through Ray Serve: real Ray, real shard actors, PDQ, real JPEG/PNG files.

One Serve app for the whole module (Serve starts slowly on 2 cores).
"""
from __future__ import annotations

import base64
import hashlib
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
import ray
from PIL import Image
from ray import serve

from encoders.tta import REF_VIEW_COST
from rayapp.config import Config
from rayapp.http import RateLimiter
from rayapp.router import shard_for
from rayapp.lifecycle import run_server
from tests.helpers_images import edited_copy, jpeg_bytes, make_photo, png_bytes
from tests.helpers_net import free_port

TOKEN = "s3cret-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
MAX_BODY = 2 * 1024 * 1024


@pytest.fixture(scope="module")
def server(ray_local, tmp_path_factory):
    cfg = Config()
    cfg.encoder.name = "pdq"
    cfg.encoder.max_pixels = 4_000_000
    cfg.storage.index_dir = str(tmp_path_factory.mktemp("index"))
    cfg.storage.num_shards = 2
    cfg.storage.index_kind = "flat"
    cfg.storage.namespace = f"neardup-test-{uuid.uuid4().hex[:8]}"
    cfg.serve.port = free_port()
    cfg.serve.token = TOKEN
    cfg.serve.max_body_bytes = MAX_BODY
    cfg.serve.max_batch_items = 8
    cfg.serve.rate_limit_per_s = 25
    cfg.serve.shard_timeout_s = 3.0
    cfg.serve.body_timeout_s = 2.0
    url = run_server(cfg, blocking=False)
    with httpx.Client(base_url=url, timeout=30.0) as client:
        yield client, cfg
    serve.shutdown()
    from rayapp.cluster import kill_shards
    kill_shards(cfg)


@pytest.fixture(scope="module")
def photos():
    return {name: make_photo(seed, (480, 360)) for name, seed in
            (("a", 101), ("b", 102), ("c", 103), ("d", 104))}


class _Pace:
    """Starts requests at least ``interval`` apart: under the test server's rate limit (25/s)
    in request-heavy tests, without waiting on top of a request that took that long itself."""

    def __init__(self, interval: float) -> None:
        self.interval, self.last = interval, 0.0

    def wait(self) -> None:
        time.sleep(max(0.0, self.last + self.interval - time.monotonic()))
        self.last = time.monotonic()


PACE = _Pace(0.05)


def _paced(fn):
    PACE.wait()
    return fn()


def _assert_error(resp: httpx.Response, status: int, client: httpx.Client) -> dict:
    assert resp.status_code == status, resp.text
    assert resp.headers["content-type"].startswith("application/json")
    body = resp.json()
    assert isinstance(body.get("error"), str) and body["error"]
    assert "Traceback" not in resp.text
    assert client.get("/healthz").json() == {"status": "ok"}
    return body


def test_healthz_and_status(server):
    client, cfg = server
    assert client.get("/healthz").json() == {"status": "ok"}
    assert client.get("/readyz").json() == {"status": "ready"}  # run_server waited for it
    status = client.get("/v1/status").json()
    assert status["encoder"]["encoder"] == "pdq" and status["encoder"]["bits"] == 256
    assert status["encoder"]["placement"] == "ingress"  # no GPU: the ingress encodes, no hop
    assert status["partial"] is False and status["missing_shards"] == []
    assert [s["id"] for s in status["shards"]] == [0, 1]
    for shard in status["shards"]:
        assert shard["state"] == "ready" and shard["index_kind"] == "flat"
        assert isinstance(shard["pid"], int) and shard["node"] and shard["count"] == 0
        assert shard["memory_bytes"] >= 0
    assert status["version"]


def test_hash_accepts_multipart_json_and_raw(server, photos):
    client, _ = server
    data = jpeg_bytes(photos["a"])
    multipart = client.post("/v1/hash", files={"file": ("a.jpg", data, "image/jpeg")}).json()
    assert multipart["encoder"] == "pdq" and multipart["bits"] == 256 and len(multipart["code"]) == 64
    as_json = client.post("/v1/hash", json={"image": base64.b64encode(data).decode()}).json()
    raw = client.post("/v1/hash", content=data, headers={"content-type": "image/jpeg"}).json()
    assert multipart == as_json == raw


def test_add_search_delete_round_trip(server, photos):
    client, _ = server
    a, b = jpeg_bytes(photos["a"]), png_bytes(photos["b"])
    resp = client.post("/v1/items", headers=AUTH,
                       files=[("file", ("a.jpg", a, "image/jpeg")), ("file", ("b.png", b, "image/png"))],
                       data={"id": ["photo-a", "photo-b"]})
    assert resp.status_code == 200, resp.text
    assert resp.json() == {"ids": ["photo-a", "photo-b"], "durable": True,
                           "added": 2, "replaced": 0, "unchanged": 0}
    # JSON batch; the id defaults to the sha256 of the image bytes.
    c = jpeg_bytes(photos["c"])
    resp = client.post("/v1/items", headers=AUTH, json={"items": [
        {"image": base64.b64encode(c).decode(), "meta": {"source": "json"}},
        {"id": "photo-a", "image": base64.b64encode(a).decode(), "meta": {"filename": "a.jpg"}}]})
    assert resp.status_code == 200, resp.text
    assert resp.json()["ids"] == [hashlib.sha256(c).hexdigest(), "photo-a"]
    assert resp.json()["added"] == 1 and resp.json()["unchanged"] == 1

    # Exact copy at distance 0; the owning shard is reported.
    hit = client.post("/v1/search", files={"file": ("q.jpg", a, "image/jpeg")}, data={"k": "3"}).json()
    assert hit["partial"] is False and hit["missing_shards"] == [] and hit["took_ms"] >= 0
    assert hit["results"][0]["id"] == "photo-a" and hit["results"][0]["distance"] == 0
    assert hit["results"][0]["shard"] in (0, 1) and len(hit["results"]) == 3
    ranks = [r["rank"] for r in hit["results"]]  # the final rank value, the order's key
    assert ranks == sorted(ranks) and "confidence" not in hit["results"][0]  # PDQ: no curve fitted
    for bad in (2, "x", -0.1):
        _assert_error(client.post("/v1/search", json={"code": "00" * 32, "min_confidence": bad}), 422, client)
    _assert_error(client.post("/v1/search", json={"code": "00" * 32, "min_confidence": 0.9}), 422, client)
    # Edited copies (resize + JPEG, text overlay) are near; an unrelated image is far.
    for kind in ("resize", "text"):
        edited = jpeg_bytes(edited_copy(photos["b"], kind), quality=70)
        found = client.post("/v1/search", json={"image": base64.b64encode(edited).decode(),
                                                "k": 2}).json()
        assert found["results"][0]["id"] == "photo-b" and found["results"][0]["distance"] <= 40
        assert found["results"][1]["distance"] > 70
    # Search by hex code, with a radius and metadata.
    code = client.post("/v1/hash", content=c, headers={"content-type": "image/jpeg"}).json()["code"]
    found = client.post("/v1/search", json={"code": code, "radius": 10, "with_meta": True}).json()
    assert [r["id"] for r in found["results"]] == [hashlib.sha256(c).hexdigest()]
    assert found["results"][0]["meta"] == {"source": "json"}

    item = client.get("/v1/items/photo-a").json()
    assert item["id"] == "photo-a" and item["meta"] == {"filename": "a.jpg"} and len(item["code"]) == 64

    resp = client.delete("/v1/items/photo-a", headers=AUTH)
    assert resp.status_code == 200 and resp.json() == {"id": "photo-a", "deleted": True, "durable": True}
    gone = client.post("/v1/search", files={"file": ("q.jpg", a, "image/jpeg")}).json()
    assert "photo-a" not in [r["id"] for r in gone["results"]]
    _assert_error(client.get("/v1/items/photo-a"), 404, client)
    _assert_error(client.delete("/v1/items/photo-a", headers=AUTH), 404, client)
    assert client.get("/v1/status").json()["total_count"] == 2


def test_a_centre_crop_is_found_through_the_stored_crop(server, photos):
    client, _ = server
    before = sum(s["views"] for s in client.get("/v1/status").json()["shards"])
    resp = client.post("/v1/items", headers=AUTH, json={
        "id": "photo-d", "image": base64.b64encode(jpeg_bytes(photos["d"])).decode()})
    assert resp.status_code == 200 and resp.json()["added"] == 1, resp.text
    status = client.get("/v1/status").json()
    assert sum(s["views"] for s in status["shards"]) == before + 1  # its centre crop
    w, h = photos["d"].size
    crop = photos["d"].crop((w // 6, h // 6, w - w // 6, h - h // 6))  # the middle 2/3
    top = client.post("/v1/search", content=jpeg_bytes(crop), headers={"content-type": "image/jpeg"},
                      params={"k": 3}).json()["results"]
    assert top[0]["id"] == "photo-d" and top[0]["ref_view"] == "center70" and top[0]["cost"] == REF_VIEW_COST
    assert len({r["id"] for r in top}) == len(top)  # one hit per image
    assert client.delete("/v1/items/photo-d", headers=AUTH).status_code == 200
    assert sum(s["views"] for s in client.get("/v1/status").json()["shards"]) == before


def test_bad_requests_get_json_4xx(server, photos, tmp_path):
    client, cfg = server
    good = jpeg_bytes(photos["d"])
    bomb = png_bytes(Image.new("RGB", (2500, 2000), (200, 30, 30)))  # 5 Mpx > cap of 4 Mpx, ~20 kB
    cases = [
        ("corrupt image", lambda: client.post("/v1/search", files={"file": ("x.jpg", b"\xff\xd8\xff\xe0garbage" * 50, "image/jpeg")}), 422),
        ("truncated jpeg", lambda: client.post("/v1/hash", content=good[: len(good) // 3], headers={"content-type": "image/jpeg"}), 422),
        ("not an image", lambda: client.post("/v1/hash", files={"file": ("x.txt", b"hello world", "text/plain")}), 422),
        ("empty body", lambda: client.post("/v1/search", content=b"", headers={"content-type": "image/jpeg"}), 400),
        ("empty file", lambda: client.post("/v1/hash", files={"file": ("x.jpg", b"", "image/jpeg")}), 400),
        ("no file field", lambda: client.post("/v1/search", files={"other": ("x.jpg", good, "image/jpeg")}), 422),
        ("unknown id", lambda: client.get("/v1/items/does-not-exist"), 404),
        ("delete unknown id", lambda: client.delete("/v1/items/does-not-exist", headers=AUTH), 404),
        ("bad hex", lambda: client.post("/v1/search", json={"code": "zz" * 32}), 400),
        ("short hex", lambda: client.post("/v1/search", json={"code": "ab" * 8}), 400),
        ("huge k", lambda: client.post("/v1/search", json={"code": "00" * 32, "k": 10**9}), 422),
        ("k not a number", lambda: client.post("/v1/search", files={"file": ("x.jpg", good, "image/jpeg")}, data={"k": "many"}), 422),
        ("negative radius", lambda: client.post("/v1/search", json={"code": "00" * 32, "radius": -1}), 422),
        ("image and code", lambda: client.post("/v1/search", json={"code": "00" * 32, "image": base64.b64encode(good).decode()}), 422),
        ("bad json", lambda: client.post("/v1/search", content=b"{not json", headers={"content-type": "application/json"}), 400),
        ("bad base64", lambda: client.post("/v1/hash", json={"image": "***not base64***"}), 400),
        ("unknown field", lambda: client.post("/v1/search", json={"code": "00" * 32, "url": "http://x"}), 422),
        ("wrong content type", lambda: client.post("/v1/search", content=b"hello", headers={"content-type": "text/plain"}), 415),
        ("missing token", lambda: client.post("/v1/items", files={"file": ("x.jpg", good, "image/jpeg")}), 401),
        ("wrong token", lambda: client.post("/v1/items", files={"file": ("x.jpg", good, "image/jpeg")}, headers={"Authorization": "Bearer nope"}), 403),
        ("delete without token", lambda: client.delete("/v1/items/photo-b"), 401),
        ("code without id", lambda: client.post("/v1/items", headers=AUTH, json={"code": "00" * 32}), 422),
        ("too many items", lambda: client.post("/v1/items", headers=AUTH, json={"items": [{"id": str(i), "code": "00" * 32} for i in range(9)]}), 413),
        ("oversized body", lambda: client.post("/v1/hash", content=b"\0" * (MAX_BODY + 1000), headers={"content-type": "image/jpeg"}), 413),
        ("oversized multipart", lambda: client.post("/v1/items", headers=AUTH, files={"file": ("big.jpg", b"\0" * (MAX_BODY + 1000), "image/jpeg")}), 413),
        ("decompression bomb", lambda: client.post("/v1/search", files={"file": ("bomb.png", bomb, "image/png")}), 413),
        ("unknown route", lambda: client.get("/v1/nothing-here"), 404),
        ("wrong method", lambda: client.get("/v1/search"), 405),
    ]
    for name, call, status in cases:
        body = _assert_error(_paced(call), status, client)
        assert body["error"], name
    # Nothing was stored by the refused writes.
    assert client.get("/v1/status").json()["total_count"] == 2


def test_dead_shard_partial_then_recovered(server, photos):
    client, cfg = server
    from rayapp.cluster import ensure_shards, get_shards
    b = png_bytes(photos["b"])
    owner = client.post("/v1/search", files={"file": ("b.png", b, "image/png")}).json()["results"][0]["shard"]
    dead = 1 - owner
    handle = get_shards(cfg)[dead]
    ray.kill(handle, no_restart=True)
    with pytest.raises(ray.exceptions.RayActorError):  # kill is asynchronous: wait until dead
        for _ in range(100):
            ray.get(handle.ping.remote(), timeout=10)
            time.sleep(0.05)
    found = client.post("/v1/search", files={"file": ("b.png", b, "image/png")}).json()
    assert found["partial"] is True and found["missing_shards"] == [dead]
    assert found["results"][0]["id"] == "photo-b"
    status = client.get("/v1/status").json()
    assert status["partial"] is True and status["shards"][dead]["state"] == "unavailable"
    # A write owned by the dead shard is refused with 503, never acknowledged.
    victim = next(f"v{i}" for i in range(100) if shard_for(f"v{i}", 2) == dead)
    resp = client.post("/v1/items", headers=AUTH, json={"id": victim, "code": "00" * 32})
    assert _assert_error(resp, 503, client)["missing_shards"] == [dead]
    # Bring the shard back (same name, same disk): answers are complete again.
    ensure_shards(cfg)
    for _ in range(20):
        found = client.post("/v1/search", files={"file": ("b.png", b, "image/png")}).json()
        if not found["partial"]:
            break
        time.sleep(0.25)
    assert found["partial"] is False and found["results"][0]["id"] == "photo-b"
    assert client.get("/v1/status").json()["total_count"] == 2


def test_rate_limit_gives_429(server):
    client, _ = server
    time.sleep(1.5)  # let the bucket refill
    with ThreadPoolExecutor(16) as pool:  # far faster than the 25/s the server allows
        codes = list(pool.map(lambda _: client.post("/v1/search", json={"code": "00" * 32, "k": 1}
                                                    ).status_code, range(120)))
    assert 429 in codes and 200 in codes and set(codes) <= {200, 429}
    resp = client.post("/v1/search", json={"code": "00" * 32})
    if resp.status_code == 429:
        assert int(resp.headers["retry-after"]) >= 1 and "error" in resp.json()
    assert client.get("/healthz").status_code == 200
    time.sleep(1.5)
    assert client.post("/v1/search", json={"code": "00" * 32}).status_code == 200


def test_a_trickled_body_is_cut_off_and_the_server_stays_healthy(server):
    """Slowloris: headers promise a body that arrives a byte every half second; the request is
    answered 408 once serve.body_timeout_s has passed, and other clients are served meanwhile."""
    import socket
    client, cfg = server
    host, port = client.base_url.host, client.base_url.port
    with socket.create_connection((host, port), timeout=30) as sock:
        sock.sendall(b"POST /v1/search HTTP/1.1\r\nHost: x\r\nContent-Type: image/jpeg\r\n"
                     b"Content-Length: 100000\r\n\r\n")
        start = time.monotonic()
        sock.settimeout(0.5)
        reply = b""
        while time.monotonic() - start < 20 and b"\r\n\r\n" not in reply:
            try:
                sock.sendall(b"x")
                reply += sock.recv(4096)
            except socket.timeout:
                pass
            except OSError:
                break
        took = time.monotonic() - start
    assert reply.startswith(b"HTTP/1.1 408"), reply[:200]
    assert took < cfg.serve.body_timeout_s + 8
    assert client.get("/healthz").json() == {"status": "ok"}


def test_rate_limiter_unit():
    limiter = RateLimiter(rate=2, burst=2)
    assert limiter.acquire("x") == 0 and limiter.acquire("x") == 0
    assert limiter.acquire("x") > 0 and limiter.acquire("y") == 0
    assert RateLimiter(rate=0).acquire("x") == 0


def test_bearer_check_takes_either_token_and_never_echoes_it():
    from rayapp.http import ApiError, check_bearer
    check_bearer("", [])  # no token configured: open
    check_bearer("Bearer r3ad", ["r3ad", "wr1te"])
    check_bearer("bearer  wr1te ", ["r3ad", "wr1te"])
    for header, status in (("", 401), ("Bearer nope", 403), ("Basic r3ad", 403), ("r3ad", 403)):
        with pytest.raises(ApiError) as err:
            check_bearer(header, ["r3ad", "wr1te"])
        assert err.value.status == status and "r3ad" not in err.value.message


@pytest.mark.parametrize("path", ["/v1/search", "/v1/items"])
def test_unusual_files_never_give_a_5xx(server, path):
    """Every file of the generated corpus, on both endpoints: 200, or a 4xx with a JSON reason,
    and a healthy server after each."""
    from tests.helpers_odd_files import odd_files
    client, _ = server
    answers = {}
    for name, data, ctype in odd_files():
        resp = client.post(path, headers=AUTH, files={"file": (name, data, ctype)},
                           data={"id": f"odd-{name}"} if path == "/v1/items" else {})
        answers[name] = resp.status_code
        assert resp.status_code < 500, (name, resp.status_code, resp.text[:200])
        if resp.status_code != 200:
            _assert_error(resp, resp.status_code, client)
        assert client.get("/healthz").status_code == 200
    for name in ("1x1.png", "1x10000.png", "10000x1.png", "cmyk.jpg", "16bit.png", "animated.gif",
                 "photo.webp", "photo.heic", "photo.avif", "png-as-jpeg.jpg"):
        assert answers[name] == 200, (name, answers[name])  # images, however odd
    assert answers["bomb.png"] == 413 and answers["empty.jpg"] == 400
    assert answers["truncated.jpg"] in (200, 422) and answers["page.html"] == 422


# ---- fuzzing from the OpenAPI schema (schemathesis): every operation, bounded examples --------
def test_every_operation_fuzzed_from_its_schema_never_fails_the_server(server):
    """Requests generated from the served OpenAPI schema for every operation (paths, ids, JSON
    bodies, multipart, raw bytes; 25 each) get an answer below 500, with a JSON error for every
    4xx. (schemathesis' Python API with hypothesis, not its pytest plugin.)"""
    import schemathesis
    from hypothesis import HealthCheck, given, settings
    client, _ = server
    schema = schemathesis.openapi.from_url(f"{client.base_url}/openapi.json")
    operations = [r.ok() for r in schema.get_all_operations()]
    assert {(o.method, o.path) for o in operations} >= {("post", "/v1/search"), ("post", "/v1/items"),
                                                         ("delete", "/v1/items/{item_id}")}
    for op in operations:
        @settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        @given(case=op.as_strategy())
        def answers_below_500(case):
            PACE.wait()  # under the test server's rate limit
            resp = case.call(base_url=str(client.base_url), headers=AUTH, timeout=30)
            assert resp.status_code < 500, (case.method, case.path, resp.status_code, resp.text[:300])
            if resp.status_code >= 400:
                assert isinstance(resp.json().get("error"), str), resp.text[:300]
        answers_below_500()
    assert client.get("/healthz").json() == {"status": "ok"}
