"""The one place where errors become OpenAI's envelope ``{"error": {message, type, param, code}}``."""

from __future__ import annotations

import logging

import orjson
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response

from retouch.errors import RetouchError

log = logging.getLogger(__name__)

_HTTP_CODES = {404: "not_found", 405: "method_not_allowed"}


def error_response(exc: RetouchError, extra_headers: dict[str, str] | None = None) -> Response:
    headers = {**(extra_headers or {}), **exc.headers}
    return Response(
        orjson.dumps(exc.body()), status_code=exc.status, headers=headers,
        media_type="application/json",
    )  # fmt: skip


async def on_client_left(request: Request, exc: Exception) -> Response:
    """Nobody is listening any more: an info line, and a status for the access log only."""
    log.info("client left before its response: %s %s (%s)", request.method, request.url.path,
             getattr(request.state, "request_id", "-"))  # fmt: skip
    return Response(status_code=499)


async def on_retouch_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RetouchError)
    return error_response(exc, getattr(request.state, "extra_headers", None))


async def on_http_exception(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    body = {
        "error": {
            "message": str(exc.detail) if exc.status_code != 404 else f"Invalid URL ({request.method} {request.url.path})",
            "type": "invalid_request_error",
            "param": None,
            "code": _HTTP_CODES.get(exc.status_code),
        }
    }
    return Response(orjson.dumps(body), status_code=exc.status_code, media_type="application/json")


async def on_unexpected(request: Request, exc: Exception) -> Response:
    log.exception("unhandled error on %s %s", request.method, request.url.path)
    body = {
        "error": {
            "message": "The server had an error while processing your request.",
            "type": "server_error",
            "param": None,
            "code": "internal_error",
        }
    }
    return Response(orjson.dumps(body), status_code=500, media_type="application/json")
