"""Small HTTP servers on 127.0.0.1 for the gateway tests: an image host (with redirects, slow
and oversized answers) and a fake OpenAI-compatible upstream that answers what a test tells it."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route


class ThreadedServer:
    """Any ASGI app under uvicorn on 127.0.0.1, in a background thread."""

    def __init__(self, app: Any) -> None:
        config = uvicorn.Config(
            app, host="127.0.0.1", port=0, log_level="warning", lifespan="off",
            timeout_graceful_shutdown=1,
        )  # fmt: skip
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, name="test-host", daemon=True)
        self.port = 0

    def __enter__(self) -> ThreadedServer:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the test server did not start")
            time.sleep(0.01)
        self.port = self.server.servers[0].sockets[0].getsockname()[1]
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


class ImageHost:
    """Routes: /img (the configured bytes), /redirect?to=URL (302), /loop (redirects to
    itself), /slow-headers, /drip (a body that never ends in time), /big (a body larger than
    it claims), /status/N. Records the Host header of every request."""

    def __init__(self, image: bytes) -> None:
        self.image = image
        self.hosts: list[str] = []
        self.app = Starlette(routes=[
            Route("/img", self.img), Route("/redirect", self.redirect), Route("/loop", self.loop),
            Route("/slow-headers", self.slow_headers), Route("/drip", self.drip),
            Route("/big", self.big), Route("/status/{code:int}", self.status),
        ])  # fmt: skip

    def _seen(self, request: Request) -> None:
        self.hosts.append(request.headers.get("host", ""))

    async def img(self, request: Request) -> Response:
        self._seen(request)
        return Response(self.image, media_type="image/png")

    async def redirect(self, request: Request) -> Response:
        self._seen(request)
        return Response(status_code=302, headers={"location": request.query_params["to"]})

    async def loop(self, request: Request) -> Response:
        return Response(status_code=301, headers={"location": "/loop"})

    async def slow_headers(self, request: Request) -> Response:
        await asyncio.sleep(30)
        return Response(self.image, media_type="image/png")

    async def drip(self, request: Request) -> Response:
        async def body() -> AsyncIterator[bytes]:
            for _ in range(600):
                yield b"x"
                await asyncio.sleep(0.05)

        return StreamingResponse(body(), media_type="image/png")

    async def big(self, request: Request) -> Response:
        async def body() -> AsyncIterator[bytes]:
            for _ in range(64):
                yield b"\0" * 65536

        return StreamingResponse(body(), media_type="image/png")

    async def status(self, request: Request) -> Response:
        return Response(b"nope", status_code=request.path_params["code"])


class FakeUpstream:
    """An OpenAI-compatible ``POST /v1/images/edits`` that answers from ``plan`` (one entry per
    request; the last one repeats) and keeps what it received. An entry is
    ``(status, headers, body)``, or ``"hang"`` (never answers), or ``"drop"`` (closes the
    connection without an answer)."""

    def __init__(self) -> None:
        self.plan: list[Any] = []
        self.received: list[dict[str, Any]] = []
        self.app = Starlette(routes=[
            Route("/v1/images/edits", self.edit, methods=["POST"]),
            Route("/files/redirect", self.redirect),
        ])  # fmt: skip

    async def redirect(self, request: Request) -> Response:
        return Response(status_code=302, headers={"location": request.query_params["to"]})

    def answer(self, *entries: Any) -> None:
        self.plan = list(entries)
        self.received.clear()

    async def edit(self, request: Request) -> Response:
        form = await request.form()
        fields: dict[str, Any] = {}
        files: list[tuple[str, bytes, str | None]] = []
        for name, value in form.multi_items():
            if isinstance(value, str):
                fields[name] = value
            else:
                files.append((name, await value.read(), value.content_type))
        self.received.append(
            {"fields": fields, "files": files, "headers": dict(request.headers)}
        )
        entry = self.plan.pop(0) if len(self.plan) > 1 else self.plan[0]
        if entry == "hang":
            await asyncio.sleep(60)
        if entry == "drop":
            raise ConnectionResetError("dropped")  # uvicorn answers 500 on its own
        status, headers, body = entry[:3]
        media = entry[3] if len(entry) > 3 else "application/json"
        return Response(body, status_code=status, headers=headers, media_type=media)


def error_body(message: str, type_: str, param: str | None, code: str | None) -> bytes:
    import json

    return json.dumps({"error": {"message": message, "type": type_, "param": param, "code": code}}).encode()
