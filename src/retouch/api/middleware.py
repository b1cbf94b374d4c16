"""Pure ASGI middleware: request ids and OpenAI's standard headers on every response, a
last-resort 500 in OpenAI's envelope for anything unhandled (so even that carries the id), and
the per-request metrics and access log line."""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable
from typing import Any

import orjson
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from retouch.logs import request_id_var
from retouch.metrics import Metrics

log = logging.getLogger(__name__)
access = logging.getLogger("retouch.access")

_INTERNAL = orjson.dumps(
    {
        "error": {
            "message": "The server had an error while processing your request.",
            "type": "server_error",
            "param": None,
            "code": "internal_error",
        }
    }
)


def new_request_id() -> str:
    return f"req_{uuid.uuid4().hex}"


STANDARD_HEADERS = [
    (b"openai-version", b"2020-10-01"),
    (b"access-control-expose-headers", b"X-Request-ID"),
    (b"x-content-type-options", b"nosniff"),
]
"""OpenAI's standard headers, on every response (with ``x-request-id`` and the time taken)."""


class RequestContext:
    def __init__(
        self,
        app: ASGIApp,
        metrics: Metrics | None = None,
        route_of: Callable[[Any], str] | None = None,
    ) -> None:
        self.app = app
        self.metrics = metrics
        # Endpoint -> route template: metrics are labelled by route, never by raw path, so
        # random URLs from hostile clients cannot grow the label set.
        self.route_of = route_of

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = new_request_id()
        scope.setdefault("state", {})["request_id"] = request_id
        token = request_id_var.set(request_id)
        started = time.perf_counter()
        response_started = False
        status = 500

        async def send_with_headers(message: Message) -> None:
            nonlocal response_started, status
            if message["type"] == "http.response.start":
                response_started = True
                status = message["status"]
                elapsed = int((time.perf_counter() - started) * 1000)
                headers = list(message.get("headers", []))
                # The key's x-ratelimit-* headers (set by authentication and admission) go on
                # every response of the request, whichever route or error produced it.
                extra = scope["state"].get("extra_headers")
                if extra:
                    present = {name.lower() for name, _ in headers}
                    headers += [
                        (name.encode(), value.encode())
                        for name, value in extra.items()
                        if name.encode() not in present
                    ]
                headers += [
                    (b"x-request-id", request_id.encode()),
                    (b"openai-processing-ms", str(elapsed).encode()),
                    *STANDARD_HEADERS,
                ]
                message = {**message, "headers": headers}
            await send(message)

        try:
            await self.app(scope, receive, send_with_headers)
        except BaseException as exc:
            if not isinstance(exc, Exception):  # cancelled: the client went away
                status = 499 if not response_started else status
                raise
            log.exception("unhandled error in %s %s (%s)", scope["method"], scope["path"], request_id)
            if response_started:
                raise
            await send_with_headers(
                {
                    "type": "http.response.start",
                    "status": 500,
                    "headers": [(b"content-type", b"application/json")],
                }
            )
            await send({"type": "http.response.body", "body": _INTERNAL})
        finally:
            self._finished(scope, status, time.perf_counter() - started)
            request_id_var.reset(token)

    def _finished(self, scope: Scope, status: int, seconds: float) -> None:
        try:
            self._observe(scope, status, seconds)
        except Exception:  # observation never fails a request
            log.exception("could not record request metrics")

    def _observe(self, scope: Scope, status: int, seconds: float) -> None:
        route = "other"
        if self.route_of is not None:
            route = self.route_of(scope.get("endpoint"))
        model = str(scope["state"].get("model") or "")
        if self.metrics is not None:
            self.metrics.request(route, model, status, seconds)
        if access.isEnabledFor(logging.INFO):
            access.info(
                "%s %s %d %.1f ms", scope["method"], scope["path"], status, seconds * 1000,
                extra={"method": scope["method"], "path": scope["path"], "route": route,
                       "status": status, "duration_ms": round(seconds * 1000, 1),
                       "model": model or None},
            )  # fmt: skip
