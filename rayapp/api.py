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
from starlette.types import ASGIApp, Message, Receive, Scope, Send

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


class _Guard:
    """ASGI middleware: latency/count metrics for every request; an unexpected bug is a JSON
    500, no traceback. Written against ASGI directly: Starlette's ``BaseHTTPMiddleware`` (what
    ``@app.middleware("http")`` makes) wraps each response in a stream and a task group, a
    measurable share of a search by code's CPU (docs/performance.md)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        start, status = time.perf_counter(), [0]

        async def send_noting_status(message: Message) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)
        try:
            await self.app(scope, receive, send_noting_status)
        except Exception:  # noqa: BLE001
            log.exception("unhandled error on %s %s", scope.get("method"), scope.get("path"))
            metrics.count_error("internal")
            if status[0]:  # the response had begun: nothing better to send than a cut one
                raise
            status[0] = 500
            await error_response(500, "internal server error")(scope, receive, send)
        route = scope.get("route")
        metrics.observe_query(getattr(route, "path", "unmatched"), time.perf_counter() - start, status[0])


api.add_middleware(_Guard)
