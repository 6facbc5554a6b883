"""The FastAPI app the ingress serves: its JSON error handlers and the metrics middleware.

Every error is a JSON ``{"error": ...}`` with a 4xx/5xx status (``rayapp.http.error_response``)
and is counted by kind; every request's latency is observed by route (``rayapp.metrics``).
"""
from __future__ import annotations

import logging
import time

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from rayapp import metrics
from rayapp.http import ApiError, error_response

log = logging.getLogger(__name__)


def version() -> str:
    """The installed package's version, or 0.0.0+local in a source tree."""
    try:
        from importlib.metadata import version
        return version("neardup")
    except Exception:  # noqa: BLE001 - running from a source tree without install
        return "0.0.0+local"


api = FastAPI(title="neardup", version=version(),
              description="Near-duplicate image search: hash, search, add and delete images.")


@api.exception_handler(ApiError)
async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
    metrics.count_error(exc.kind)
    return error_response(exc.status, exc.message, exc.headers, **exc.extra)


@api.exception_handler(StarletteHTTPException)
async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    metrics.count_error("not_found" if exc.status_code == 404 else "bad_request")
    return error_response(exc.status_code, str(exc.detail), getattr(exc, "headers", None))


@api.exception_handler(RequestValidationError)
async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    metrics.count_error("validation")
    first = exc.errors()[0] if exc.errors() else {}
    where = ".".join(str(p) for p in first.get("loc", ()))
    return error_response(422, f"invalid request: {where}: {first.get('msg', 'invalid')}".replace(": :", ":"))


@api.middleware("http")
async def _guard(request: Request, call_next):
    """Latency/count metrics for every request; an unexpected bug is a JSON 500, no traceback."""
    start = time.perf_counter()
    try:
        response = await call_next(request)
    except Exception:  # noqa: BLE001
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        metrics.count_error("internal")
        response = error_response(500, "internal server error")
    route = request.scope.get("route")
    metrics.observe_query(getattr(route, "path", "unmatched"), time.perf_counter() - start,
                          response.status_code)
    return response
