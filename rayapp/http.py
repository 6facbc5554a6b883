"""HTTP request handling for the API: body limits, JSON/multipart/raw parsing, validation,
JSON errors and per-client rate limiting. Pure functions of the request: no Ray here."""
from __future__ import annotations

import asyncio
import base64
import binascii
import hmac
import json
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse
from starlette.datastructures import UploadFile

from encoders.decode import ImageDecodeError

MAX_ID_BYTES = 1024  # as shards.actor accepts
MAX_META_BYTES = 16 * 1024


# ---------------------------------------------------------------------------------------
# errors
# ---------------------------------------------------------------------------------------
class ApiError(Exception):
    """A request we refuse: HTTP status, one-line message, metric kind, extra headers/fields."""

    def __init__(self, status: int, message: str, kind: str = "bad_request",
                 headers: dict | None = None, **extra: Any):
        super().__init__(message)
        self.status, self.message, self.kind = status, message, kind
        self.headers, self.extra = headers, extra


def error_response(status: int, message: str, headers: dict | None = None, **extra: Any) -> JSONResponse:
    return JSONResponse({"error": message, **extra}, status_code=status, headers=headers)


def decode_status(exc: ImageDecodeError) -> int:
    """413 for images over the pixel cap, 400 for empty data, 422 for anything undecodable."""
    text = str(exc)
    if "too large" in text:
        return 413
    if "empty" in text:
        return 400
    return 422


# ---------------------------------------------------------------------------------------
# rate limiting
# ---------------------------------------------------------------------------------------
class RateLimiter:
    """Per-client token bucket: ``rate`` requests/s sustained, bursts up to ``burst``."""

    def __init__(self, rate: float, burst: float | None = None, max_clients: int = 10_000):
        self.rate = float(rate)
        self.burst = float(burst if burst is not None else max(1.0, self.rate))
        self.max_clients = max_clients
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()
        self._lock = threading.Lock()

    def acquire(self, client: str) -> float:
        """Take a token -> 0.0 if allowed, else the seconds to wait before retrying."""
        if self.rate <= 0:
            return 0.0
        now = time.monotonic()
        with self._lock:
            tokens, last = self._buckets.pop(client, (self.burst, now))
            tokens = min(self.burst, tokens + (now - last) * self.rate)
            wait = 0.0 if tokens >= 1.0 else (1.0 - tokens) / self.rate
            self._buckets[client] = (tokens - 1.0 if wait == 0.0 else tokens, now)
            while len(self._buckets) > self.max_clients:
                self._buckets.popitem(last=False)
        return wait


# ---------------------------------------------------------------------------------------
# request parsing
# ---------------------------------------------------------------------------------------
@dataclass
class Item:
    """One image or code in a request, with its optional id and metadata."""
    data: bytes | None = None
    code: str | None = None
    id: str | None = None
    meta: dict | None = None


BODY_TIMEOUT_S = 10.0  # a body must arrive within this; a trickling client cannot hold a worker


async def read_body(request: Request, max_bytes: int, timeout_s: float = BODY_TIMEOUT_S) -> bytes:
    """The whole body, refusing more than ``max_bytes`` (by header and by bytes actually read)
    and any body still arriving after ``timeout_s`` (408)."""
    try:
        async with asyncio.timeout(timeout_s):
            return await _read_body(request, max_bytes)
    except TimeoutError:
        raise ApiError(408, f"request body not received within {timeout_s:g}s", "timeout") from None


async def _read_body(request: Request, max_bytes: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            size = int(declared)
        except ValueError:
            raise ApiError(400, "invalid Content-Length header") from None
        if size > max_bytes:
            raise ApiError(413, f"request body of {size:,} bytes exceeds the limit of "
                                f"{max_bytes:,} bytes", "too_large")
    chunks, total = [], 0
    async for chunk in request.stream():
        total += len(chunk)
        if total > max_bytes:
            raise ApiError(413, f"request body exceeds the limit of {max_bytes:,} bytes",
                           "too_large")
        chunks.append(chunk)
    body = b"".join(chunks)
    if not body:
        raise ApiError(400, "empty request body: send multipart 'file', JSON, or image bytes")
    return body


def decode_base64(text: Any, field: str = "image") -> bytes:
    """Base64 (standard or URL-safe, optional data: URL prefix) -> bytes; 400 on bad input."""
    if not isinstance(text, str):
        raise ApiError(400, f"{field!r} must be a base64 string")
    if text.startswith("data:") and "," in text:
        text = text.split(",", 1)[1]
    text = "".join(text.split())
    try:
        if "-" in text or "_" in text:
            return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ApiError(400, f"{field!r} is not valid base64 ({exc})") from None


def check_id(value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ApiError(422, "id must be a non-empty string", "validation")
    if len(value.encode("utf-8")) > MAX_ID_BYTES:
        raise ApiError(422, f"id is longer than {MAX_ID_BYTES} bytes (UTF-8)", "validation")
    if any(ord(c) < 32 or ord(c) == 127 for c in value):
        raise ApiError(422, "id must not contain control characters", "validation")
    return value


def check_meta(value: Any) -> dict | None:
    if value is None:
        return None
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            raise ApiError(400, "meta is not valid JSON") from None
    if not isinstance(value, dict):
        raise ApiError(422, "meta must be a JSON object", "validation")
    if len(json.dumps(value)) > MAX_META_BYTES:
        raise ApiError(413, f"meta is larger than {MAX_META_BYTES:,} bytes", "too_large")
    return value


def int_param(value: Any, name: str, lo: int, hi: int) -> int:
    """An integer in [lo, hi] from JSON, a form field or the query string; else 422."""
    if isinstance(value, bool):
        raise ApiError(422, f"{name} must be an integer", "validation")
    if isinstance(value, str):
        try:
            value = int(value.strip())
        except ValueError:
            raise ApiError(422, f"{name} must be an integer, got {value!r}", "validation") from None
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if not isinstance(value, int):
        raise ApiError(422, f"{name} must be an integer", "validation")
    if not lo <= value <= hi:
        raise ApiError(422, f"{name} must be between {lo} and {hi}, got {value}", "validation")
    return value


SEARCH_PARAMS = ("k", "radius", "min_confidence", "with_meta")


_ITEM = {"type": "object", "additionalProperties": False, "properties": {
    "image": {"type": "string", "description": "the image file, base64"},
    "code": {"type": "string", "description": "a stored code, hex"},
    "id": {"type": "string"}, "meta": {"type": "object"}}}
_SEARCH = {**_ITEM, "properties": {**_ITEM["properties"],
                                   "k": {"type": "integer"}, "radius": {"type": "integer"},
                                   "min_confidence": {"type": "number"}, "with_meta": {"type": "boolean"}}}
_MULTIPART = {"type": "object", "properties": {"file": {"type": "string", "format": "binary"},
                                               "k": {"type": "integer"}, "id": {"type": "string"}}}


def request_body(schema: dict) -> dict:
    """OpenAPI ``requestBody`` for a route that parses its own body (``parse_request``): JSON,
    multipart with a ``file``, or raw image bytes. Documents the API and drives the fuzz tests."""
    return {"requestBody": {"required": True, "content": {
        "application/json": {"schema": schema},
        "multipart/form-data": {"schema": _MULTIPART},
        "image/jpeg": {"schema": {"type": "string", "format": "binary"}}}}}


SEARCH_BODY = request_body(_SEARCH)
ITEMS_BODY = request_body({"oneOf": [_ITEM, {"type": "object", "additionalProperties": False, "properties": {
    "items": {"type": "array", "items": _ITEM}}}]})
HASH_BODY = request_body({"type": "object", "additionalProperties": False,
                          "properties": {"image": _ITEM["properties"]["image"]}})


def check_bearer(header: str, tokens: list[str]) -> None:
    """Pass when ``tokens`` is empty or the Authorization header carries one of them (compared
    in constant time); else 401 (no header) or 403. Tokens never appear in a message."""
    if not tokens:
        return
    if not header:
        raise ApiError(401, "missing bearer token (Authorization: Bearer <token>)", "unauthorized",
                       headers={"WWW-Authenticate": "Bearer"})
    scheme, _, given = header.partition(" ")
    given_b = given.strip().encode("utf-8")
    ok = [hmac.compare_digest(given_b, t.encode("utf-8")) for t in tokens]  # every one, no early exit
    if scheme.lower() != "bearer" or not any(ok):
        raise ApiError(403, "invalid bearer token", "forbidden")


def float_param(value: Any, name: str, lo: float, hi: float) -> float:
    """A number in [lo, hi] from JSON, a form field or the query string; else 422."""
    if isinstance(value, bool):
        raise ApiError(422, f"{name} must be a number", "validation")
    try:
        number = float(value.strip() if isinstance(value, str) else value)
    except (TypeError, ValueError):
        raise ApiError(422, f"{name} must be a number, got {value!r}", "validation") from None
    if not lo <= number <= hi:  # NaN fails this too
        raise ApiError(422, f"{name} must be between {lo:g} and {hi:g}, got {value}", "validation")
    return number


def bool_param(value: Any, name: str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("1", "true", "yes", "0", "false", "no", ""):
        return value.lower() in ("1", "true", "yes")
    raise ApiError(422, f"{name} must be a boolean", "validation")


def json_item(obj: Any, where: str) -> Item:
    if not isinstance(obj, dict):
        raise ApiError(400, f"{where} must be a JSON object")
    unknown = set(obj) - {"id", "image", "code", "meta", "k", "radius", "min_confidence", "with_meta", "items"}
    if unknown:
        raise ApiError(422, f"{where} has unknown field(s): {', '.join(sorted(unknown))}",
                       "validation")
    item = Item(id=None if obj.get("id") is None else check_id(obj["id"]),
                meta=check_meta(obj.get("meta")))
    if obj.get("image") is not None:
        item.data = decode_base64(obj["image"], "image")
    if obj.get("code") is not None:
        if not isinstance(obj["code"], str):
            raise ApiError(400, "'code' must be a hex string")
        item.code = obj["code"]
    return item


async def parse_request(request: Request, max_bytes: int, max_items: int,
                        body_timeout_s: float = BODY_TIMEOUT_S) -> tuple[list[Item], dict]:
    """Body -> (items, params). Accepts multipart form, JSON, or raw image bytes."""
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    params: dict = {key: request.query_params.get(key)
                    for key in ("k", "radius", "min_confidence", "with_meta", "id") if key in request.query_params}
    if ctype == "multipart/form-data":
        return await parse_multipart(request, max_bytes, max_items, params, body_timeout_s)
    if ctype == "application/json" or ctype.endswith("+json"):
        body = await read_body(request, max_bytes, body_timeout_s)
        try:
            obj = json.loads(body)
        except (ValueError, UnicodeDecodeError) as exc:
            raise ApiError(400, f"body is not valid JSON ({exc})") from None
        if not isinstance(obj, dict):
            raise ApiError(400, "JSON body must be an object")
        params.update({key: obj[key] for key in SEARCH_PARAMS if key in obj})
        if "items" in obj:
            if not isinstance(obj["items"], list):
                raise ApiError(400, "'items' must be a list")
            if len(obj["items"]) > max_items:
                raise ApiError(413, f"too many items: {len(obj['items'])} > {max_items}", "too_large")
            return [json_item(x, f"items[{i}]") for i, x in enumerate(obj["items"])], params
        return [json_item(obj, "body")], params
    if ctype.startswith("image/") or ctype == "application/octet-stream":
        body = await read_body(request, max_bytes, body_timeout_s)
        item_id = params.pop("id", None)
        return [Item(data=body, id=None if item_id is None else check_id(item_id))], params
    raise ApiError(415, f"unsupported content type {ctype or '(none)'!r}: send multipart/form-data "
                        "with a 'file' field, application/json, or raw image bytes", "bad_request")


async def parse_multipart(request: Request, max_bytes: int, max_items: int,
                          params: dict, body_timeout_s: float = BODY_TIMEOUT_S) -> tuple[list[Item], dict]:
    body = await read_body(request, max_bytes, body_timeout_s)
    sent = False

    async def replay() -> dict:  # feed the size-checked body to Starlette's form parser
        nonlocal sent
        if sent:
            return {"type": "http.disconnect"}
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    form = await Request(request.scope, replay).form(max_files=max_items + 1,
                                                     max_fields=4 * max_items + 8)
    try:
        files = form.getlist("file")
        if any(not isinstance(f, UploadFile) for f in files):
            raise ApiError(422, "'file' must be a file upload, not a text field", "validation")
        codes = [c for c in form.getlist("code") if isinstance(c, str)]
        ids = [check_id(v) for v in form.getlist("id")]
        metas = [check_meta(v) for v in form.getlist("meta")]
        params.update({key: form[key] for key in SEARCH_PARAMS if key in form})
        items = [Item(data=await f.read(), meta={"filename": f.filename} if f.filename else None)
                 for f in files] + [Item(code=c) for c in codes]
    finally:
        await form.close()
    if len(items) > max_items:
        raise ApiError(413, f"too many items: {len(items)} > {max_items}", "too_large")
    if ids:
        if len(ids) != len(items):
            raise ApiError(422, f"got {len(ids)} 'id' field(s) for {len(items)} item(s); send one "
                                "per file, in the same order, or none", "validation")
        for item, item_id in zip(items, ids):
            item.id = item_id
    if metas:
        if len(metas) != len(items):
            raise ApiError(422, f"got {len(metas)} 'meta' field(s) for {len(items)} item(s)",
                           "validation")
        for item, meta in zip(items, metas):
            item.meta = {**(item.meta or {}), **(meta or {})}
    return items, params
