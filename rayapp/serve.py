"""The Ray Serve application: a FastAPI ingress over the shard router and the encoder.

    serve run rayapp.serve:app          # config from $NEARDUP_CONFIG (YAML) and NEARDUP_* env
    neardup serve --index-dir DIR       # the CLI calls rayapp.lifecycle.run_server()

``Ingress`` validates requests, gets codes from the encoder (``rayapp.encoder_deployment``: in
its own process, or a deployment of its own when that holds a GPU) and answers queries through
one :class:`rayapp.searcher.Searcher` over the shard router. Every error is a JSON
``{"error": ...}`` with a 4xx/5xx status, never a traceback (``rayapp.api``).
"""

import asyncio
import copy
import hashlib
import logging
import os
import time
from functools import partial
from pathlib import Path

import numpy as np
import ray
from fastapi import Request
from ray import serve
from ray.serve.exceptions import RayServeException
from ray.serve.handle import DeploymentHandle

from encoders.base import code_to_hex, hex_to_code
from rayapp import metrics
from rayapp.api import api, version
from rayapp.config import Config, load_config
from rayapp.encoder_deployment import (WARM_UP_IMAGE, EncoderDeployment, ImageEncoder, in_ingress,
                                       use_gpu)
from rayapp.http import (HASH_BODY, ITEMS_BODY, SEARCH_BODY, ApiError, Item, RateLimiter, bool_param,
                         check_bearer, check_id, error_response, float_param, int_param,
                         parse_request)
from rayapp.ingress import mode as ingress_mode
from rayapp.router import ShardRouter, ShardUnavailable
from rayapp.searcher import NeedsCalibration, QueryViews, Searcher
from shards.vectors import records

log = logging.getLogger(__name__)

APP_NAME = "neardup"
ENCODER_TIMEOUT_S = 60.0
WARM_UP_TIMEOUT_S = 60.0  # the constructor's warm-up; /readyz tries again after it
#: How often a stopping replica checks whether its in-flight requests are done. Serve's default
#: (2 s) makes every stop (SIGTERM, serve.shutdown, a redeploy) wait that long, however idle the
#: replica; requests still in flight are waited for all the same.
DRAIN_CHECK_S = 0.2


def _lookup_shard(namespace: str, i: int):
    from rayapp.cluster import shard_name
    return ray.get_actor(shard_name(i), namespace=namespace)


def _stack(parts: list, dtype=np.int8) -> np.ndarray | None:
    """Side vectors (or keypoints) of images as one (n, d) array; None if any is missing."""
    return None if any(v is None for v in parts) else np.stack(parts).astype(dtype)


def _answer_code(answer: dict, where: str) -> np.ndarray:
    """The code in an ``encode_image`` answer, or the 4xx ApiError it reports."""
    if "error" in answer:
        raise ApiError(answer["status"], f"{where}{answer['error']}", "bad_image")
    return np.asarray(answer["code"], dtype=np.uint8)


# NOTE: serve.ingress pickles the class when it is decorated, so every module-level name its
# methods use must be defined above this point.
@serve.deployment(name="Ingress", max_ongoing_requests=256, ray_actor_options={"num_cpus": 0.5})
@serve.ingress(api)
class Ingress:
    """HTTP API (DESIGN.md): validates, encodes (here, or by the Encoder deployment's handle
    when given one), routes to shards."""

    async def __init__(self, cfg: Config, encoder: DeploymentHandle | None = None):
        """Connect, then warm up before taking HTTP traffic (Serve awaits an async constructor),
        so the first query is as fast as any; a failed warm-up is retried by ``/readyz``."""
        self._setup(cfg, encoder)
        if problem := await self._warm_up(WARM_UP_TIMEOUT_S):
            log.warning("warm-up deferred to /readyz: %s", problem)

    def _setup(self, cfg: Config, encoder: DeploymentHandle | None) -> None:
        from rayapp.cluster import confidence_curves, ensure_shards, known_bits
        self.cfg, self.encoder = cfg, encoder
        self.router = ShardRouter(ensure_shards(cfg, bits=known_bits(cfg)),
                                  timeout_s=cfg.serve.shard_timeout_s,
                                  resolver=partial(_lookup_shard, cfg.storage.namespace),
                                  ref_views=len(cfg.storage.ref_views),
                                  ref_view_cost=cfg.query.ref_view_cost)
        self.local_encoder = ImageEncoder(cfg) if encoder is None else None  # after the index's views
        self.limiter = RateLimiter(cfg.serve.rate_limit_per_s)
        self._info: dict | None = None
        self._ready = False
        # no curve for a model without a fitted one: hits then carry no confidence
        self.searcher = Searcher(self.router, cfg.query, confidence_curves(cfg))

    # ---- helpers ----------------------------------------------------------------------
    def _admit(self, request: Request, write: bool = False) -> None:
        """Rate limit every API call; writes need the bearer token when one is set, and reads
        the read token (or the write token) when one is set."""
        wait = self.limiter.acquire(request.client.host if request.client else "unknown")
        if wait > 0:
            raise ApiError(429, "rate limit exceeded; retry later", "rate_limited",
                           headers={"Retry-After": str(max(1, int(wait + 0.999)))})
        s = self.cfg.serve
        needed = [s.token] if write else [s.read_token, s.token] if s.read_token else []
        check_bearer(request.headers.get("authorization", ""), [t for t in needed if t])

    async def _encoder_call(self, method: str, *args):
        if self.local_encoder is not None:
            answer = getattr(self.local_encoder, method)(*args)
            return await answer if asyncio.iscoroutine(answer) else answer
        try:
            call = getattr(self.encoder, method).remote(*args)
            return await asyncio.wait_for(asyncio.ensure_future(call), ENCODER_TIMEOUT_S)
        except asyncio.TimeoutError:
            raise ApiError(503, f"encoder did not answer within {ENCODER_TIMEOUT_S:g}s",
                           "encoder_timeout") from None
        except (ray.exceptions.RayActorError, RayServeException) as exc:
            raise ApiError(503, f"encoder unavailable ({type(exc).__name__})",
                           "encoder_unavailable") from None

    async def encoder_info(self) -> dict:
        if self._info is None:
            where = "ingress" if self.local_encoder is not None else "replica"
            self._info = {**await self._encoder_call("info"), "placement": where}
        return self._info

    async def _codes(self, items: list[Item], stored: dict | None = None) -> np.ndarray:
        """Encode images and parse hex codes -> (n, bits/8) uint8, in item order. Given a dict
        ``stored``, the images are encoded to be stored: each one's encoder answer (its side
        vector and its reference views) goes into it by item index."""
        bits = (await self.encoder_info())["bits"]
        for i, item in enumerate(items):
            if (item.data is None) == (item.code is None):
                where = f"item {i}: " if len(items) > 1 else ""
                raise ApiError(422, f"{where}send exactly one of an image or a hex 'code'",
                               "validation")
        answers = await asyncio.gather(*(self._encoder_call("encode_image", item.data, False,
                                                            stored is not None)
                                         for item in items if item.data is not None))
        answers = iter(answers)
        codes = []
        for i, item in enumerate(items):
            where = f"item {i}: " if len(items) > 1 else ""
            if item.code is not None:
                try:
                    codes.append(hex_to_code(item.code, bits))
                except ValueError as exc:
                    raise ApiError(400, f"{where}{exc}") from None
                continue
            answer = next(answers)
            codes.append(_answer_code(answer, where))
            if stored is not None:
                stored[i] = answer
        return np.stack(codes)

    async def _query_views(self, item: Item) -> QueryViews:
        """One query -> its encoded views (``rayapp.searcher.QueryViews``): a hex code is one
        view; an image has the encoder's views, with bit confidences for weighted ranking, side
        vectors for vector ranking and packed keypoints to verify its hits, where configured."""
        if item.code is not None or item.data is None:  # _codes answers 422 for neither or both
            return QueryViews.of_code((await self._codes([item]))[0])
        answer = await self._encoder_call("encode_image", item.data, True)
        _answer_code(answer, "")
        stack = lambda key, dtype: (None if answer.get(key) is None  # noqa: E731
                                    else np.stack(answer[key]).astype(dtype))
        return QueryViews(stack("variants", np.uint8), list(answer["names"]),
                          stack("weights", np.float32), stack("vectors", np.int8),
                          answer.get("keypoints"))

    async def _items(self, request: Request) -> tuple[list[Item], dict]:
        s = self.cfg.serve
        return await parse_request(request, s.max_body_bytes, s.max_batch_items, s.body_timeout_s)

    # ---- endpoints --------------------------------------------------------------------
    @api.get("/healthz")
    async def healthz(self) -> dict:
        """Liveness: the ingress answers (shards are reported by /v1/status)."""
        return {"status": "ok"}

    @api.get("/readyz")
    async def readyz(self):
        """Readiness: ok once a warm-up image query has gone through the encoder (model loaded,
        every view encoded) and been answered by every shard (index kernels compiled); 503 with
        the reason until then, so the first real query is answered in full."""
        problem = None if self._ready else await self._warm_up()
        return error_response(503, f"not ready: {problem}") if problem else {"status": "ready"}

    async def _warm_up(self, timeout_s: float | None = None) -> str | None:
        """One image query through the encoder and every shard -> None once it went through
        (the replica is ready from then on), else what stopped it."""
        async def query():
            return await self.searcher.asearch(await self._query_views(Item(data=WARM_UP_IMAGE)), 10)
        try:
            answer = await asyncio.wait_for(query(), timeout_s)  # one bound over both steps
        except (ApiError, ShardUnavailable, RuntimeError, ValueError, asyncio.TimeoutError) as exc:
            return str(getattr(exc, "message", exc)) or type(exc).__name__
        if answer.missing:
            return f"shards {answer.missing} did not answer the warm-up search"
        self._ready = True
        return None

    @api.get("/v1/status")
    async def status(self, request: Request) -> dict:
        """Shards (id, node, pid, count of images, stored reference views, memory, keypoint blob
        bytes on disk, index kind, state), encoder, version, and how HTTP enters (``ingress``)."""
        from rayapp.cluster import status_row
        self._admit(request)
        # shards publish their own count/memory gauges (cluster.py)
        shards = [status_row(st) for st in await self.router.astats()]
        missing = [row["id"] for row in shards if row["state"] == "unavailable"]
        try:
            encoder = await self.encoder_info()
        except ApiError as exc:
            encoder = {"state": "unavailable", "error": exc.message}
        return {"version": version(), "ingress": ingress_mode(), "encoder": encoder, "shards": shards,
                "total_count": sum(int(r["count"] or 0) for r in shards),
                "partial": bool(missing) or "error" in encoder, "missing_shards": missing}

    @api.post("/v1/hash", openapi_extra=HASH_BODY)
    async def hash_image(self, request: Request) -> dict:
        """One image -> its code as hex."""
        self._admit(request)
        items, _ = await self._items(request)
        if len(items) != 1 or items[0].data is None:
            raise ApiError(422, "send exactly one image (multipart 'file', JSON 'image' or raw bytes)",
                           "validation")
        info = await self.encoder_info()
        code = (await self._codes(items))[0]
        return {"encoder": info["encoder"], "bits": info["bits"], "code": code_to_hex(code)}

    @api.post("/v1/search", openapi_extra=SEARCH_BODY)
    async def search(self, request: Request) -> dict:
        """Image or hex code -> nearest ids across all shards: by Hamming distance, re-ranked by
        weighted Hamming distance (``weighted``) for image queries when ``encoder.rank`` is weighted."""
        start = time.perf_counter()
        self._admit(request)
        items, params = await self._items(request)
        if len(items) != 1:
            raise ApiError(422, "send exactly one query: one image or one hex 'code'", "validation")
        s = self.cfg.serve
        k = int_param(params.get("k", s.default_k), "k", 1, s.max_k)
        radius = params.get("radius")
        radius = None if radius in (None, "") else int_param(radius, "radius", 0, s.max_radius)
        with_meta = bool_param(params.get("with_meta", False), "with_meta")
        min_conf = params.get("min_confidence")
        min_conf = 0.0 if min_conf in (None, "") else float_param(min_conf, "min_confidence", 0.0, 1.0)
        query = await self._query_views(items[0])
        try:
            answer = await self.searcher.asearch(query, k, radius, with_meta, min_conf)
        except NeedsCalibration as exc:
            raise ApiError(422, str(exc), "validation") from None
        for _ in answer.missing:
            metrics.count_error("shard_timeout")
        return {"results": [h.to_json() for h in answer.hits], "partial": answer.partial,
                "missing_shards": answer.missing, "code": code_to_hex(query.code),
                "took_ms": round((time.perf_counter() - start) * 1000, 2)}

    @api.post("/v1/items", openapi_extra=ITEMS_BODY)
    async def add_items(self, request: Request) -> dict:
        """Add images (or codes) under given ids, or the sha256 of the image bytes; durable on return."""
        self._admit(request, write=True)
        items, _ = await self._items(request)
        if not items:
            raise ApiError(422, "no items: send multipart 'file' field(s), JSON 'image'/'code' or "
                                "'items', or raw image bytes", "validation")
        for i, item in enumerate(items):
            if item.id is None:
                if item.data is None:
                    raise ApiError(422, f"item {i}: an 'id' is required when adding by code",
                                   "validation")
                item.id = hashlib.sha256(item.data).hexdigest()
        stored: dict[int, dict] = {}
        codes = await self._codes(items, stored)
        ids, rows, seen = [], [], {}
        for i, item in enumerate(items):
            if item.id in seen:
                if not np.array_equal(codes[seen[item.id]], codes[i]):
                    raise ApiError(422, f"id {item.id!r} appears twice with different images",
                                   "validation")
                continue
            seen[item.id] = i
            ids.append(item.id)
            rows.append(i)
        try:
            counts = await self._store(items, ids, rows, codes, stored)
        except ShardUnavailable as exc:
            raise ApiError(503, f"not stored: {exc}", "shard_unavailable",
                           missing_shards=exc.shards) from None
        except ValueError as exc:
            raise ApiError(422, f"rejected by shard: {exc}", "validation") from None
        return {"ids": [item.id for item in items], "durable": True, **counts}

    async def _store(self, items: list[Item], ids: list[str], rows: list[int], codes: np.ndarray,
                     stored: dict[int, dict]) -> dict:
        """Add the rows given as images (with their side vectors and reference views) and those
        given as codes (without: their stale views go) in parallel -> summed counts."""
        groups = [[j for j, r in enumerate(rows) if (r in stored) == image] for image in (True, False)]
        calls = []
        for image, group in zip((True, False), groups):
            if not group:
                continue
            sel = [rows[j] for j in group]
            recs, view_recs = codes[sel], None
            if image:
                recs = records(codes[sel], _stack([stored[r]["vector"] for r in sel]),
                               _stack([stored[r]["keypoints"] for r in sel], np.uint8))
                view_recs = {name: records(np.stack([stored[r]["views"][name][0] for r in sel]),
                                           _stack([stored[r]["views"][name][1] for r in sel]),
                                           _stack([stored[r]["views"][name][2] for r in sel], np.uint8))
                             for name in stored[sel[0]]["views"]}
            calls.append(self.router.aadd([ids[j] for j in group], recs,
                                          [items[r].meta or {} for r in sel], view_recs))
        counts = await asyncio.gather(*calls)
        return {key: sum(c[key] for c in counts) for key in ("added", "replaced", "unchanged")}

    @api.get("/v1/items/{item_id:path}")
    async def get_item(self, item_id: str, request: Request) -> dict:
        """The item's code and metadata, or 404."""
        self._admit(request)
        try:
            item = await self.router.aget(check_id(item_id))
        except ShardUnavailable as exc:
            raise ApiError(503, str(exc), "shard_unavailable", missing_shards=exc.shards) from None
        if item is None:
            raise ApiError(404, f"unknown id {item_id!r}", "not_found")
        return item

    @api.delete("/v1/items/{item_id:path}")
    async def delete_item(self, item_id: str, request: Request) -> dict:
        """Remove an item (a tombstone, durable on return); it never matches again."""
        self._admit(request, write=True)
        try:
            removed = await self.router.aremove([check_id(item_id)])
        except ShardUnavailable as exc:
            raise ApiError(503, f"not deleted: {exc}", "shard_unavailable",
                           missing_shards=exc.shards) from None
        if not removed:
            raise ApiError(404, f"unknown id {item_id!r}", "not_found")
        return {"id": item_id, "deleted": True, "durable": True}


# ---------------------------------------------------------------------------------------
# application
# ---------------------------------------------------------------------------------------
def build_app(cfg: Config) -> serve.Application:
    """Bind the Ingress (and the Encoder deployment, if apart) for ``cfg``, validated here so a
    bad value fails before any replica starts. Starts nothing: Serve builds it on ``serve.run``."""
    from rayapp.cluster import adopt_index_views
    cfg = copy.deepcopy(cfg).validate()
    cfg.storage.index_dir = str(Path(cfg.storage.index_dir).expanduser().resolve())
    adopt_index_views(cfg)  # the encoder, wherever it runs, stores what the index keeps
    if cfg.encoder.weights:
        cfg.encoder.weights = str(Path(cfg.encoder.weights).expanduser().resolve())
    if in_ingress(cfg):  # the ingress encodes: it takes the encoder's core and its replica count
        return Ingress.options(num_replicas=int(cfg.encoder.num_replicas),
                               ray_actor_options={"num_cpus": 1},
                               graceful_shutdown_wait_loop_s=DRAIN_CHECK_S).bind(cfg)
    gpu = use_gpu(cfg)
    encoder = EncoderDeployment.options(
        num_replicas=int(cfg.encoder.num_replicas),
        ray_actor_options={"num_cpus": 1, "num_gpus": 1 if gpu else 0},
        graceful_shutdown_wait_loop_s=DRAIN_CHECK_S,
    ).bind(cfg)
    return Ingress.options(graceful_shutdown_wait_loop_s=DRAIN_CHECK_S).bind(cfg, encoder)


def app_builder(args: dict | None = None) -> serve.Application:
    """Builder for Serve config files: ``import_path: rayapp.serve:app_builder`` with
    ``args: {config: /path/neardup.yaml, overrides: {serve: {token: ...}}}``."""
    args = dict(args or {})
    return build_app(load_config(_config_path(args.get("config") or os.environ.get("NEARDUP_CONFIG")),
                                 overrides=args.get("overrides")))


def _config_path(path: str | None) -> str | None:
    """A relative config path is tried as given, then beside the project (``serve deploy``
    builds the app in another working directory)."""
    if not path or os.path.isabs(path) or os.path.exists(path):
        return path
    beside = Path(__file__).resolve().parents[1] / path
    return str(beside) if beside.exists() else path


def __getattr__(name: str):
    """``rayapp.serve:app`` for ``serve run``: built on first access from $NEARDUP_CONFIG.

    Lazy so that importing this module (as every replica does) never reads config or starts
    anything; building only binds deployments.
    """
    if name == "app":
        global app
        app = build_app(load_config(os.environ.get("NEARDUP_CONFIG")))
        return app
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
