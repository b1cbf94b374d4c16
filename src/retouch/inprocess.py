"""The real app inside this process, reached through the official SDK without a socket.

``retouch edit`` without ``--server`` uses this: the same ``build_app`` as ``retouch serve``, the
same routes, validation and service, driven by the same ``openai`` client code as a remote
server. httpx's own ASGI transport collects the whole body before returning, which would hold
every partial image back until the end; this transport hands the body on chunk by chunk.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import httpx2
import openai
from starlette.types import Message

from retouch.bootstrap import build_app
from retouch.config import Settings
from retouch.engine.types import Engine

BASE_URL = "http://retouch.in-process"


class _Body(httpx2.AsyncByteStream):
    def __init__(self, chunks: asyncio.Queue[bytes | None], task: asyncio.Task[None],
                 gone: asyncio.Event) -> None:  # fmt: skip
        self._chunks, self._task, self._gone = chunks, task, gone

    async def __aiter__(self) -> AsyncIterator[bytes]:
        while (chunk := await self._chunks.get()) is not None:
            yield chunk
        await self._task  # the app's own exception, if it raised after the first byte

    async def aclose(self) -> None:
        """The client stopped reading: tell the app (it cancels the job) and wait for it."""
        self._gone.set()
        if not self._task.done():
            try:
                await asyncio.wait_for(asyncio.shield(self._task), timeout=10)
            except TimeoutError:
                self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await self._task


class StreamingASGITransport(httpx2.AsyncBaseTransport):
    """An httpx transport that calls an ASGI app and streams its response body."""

    def __init__(self, app: object) -> None:
        self.app = app

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        body = await request.aread()
        scope = {
            "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1",
            "method": request.method, "scheme": request.url.scheme,
            "path": request.url.path, "raw_path": request.url.raw_path.split(b"?")[0],
            "query_string": request.url.query, "root_path": "",
            "headers": [(k.lower(), v) for k, v in request.headers.raw],
            "server": (request.url.host, request.url.port or 80), "client": ("127.0.0.1", 0),
        }  # fmt: skip
        chunks: asyncio.Queue[bytes | None] = asyncio.Queue()
        start: asyncio.Future[Message] = asyncio.get_running_loop().create_future()
        gone = asyncio.Event()
        sent = False

        async def receive() -> Message:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            await gone.wait()
            return {"type": "http.disconnect"}

        async def send(message: Message) -> None:
            if message["type"] == "http.response.start":
                start.set_result(message)
            elif message["type"] == "http.response.body":
                if message.get("body"):
                    await chunks.put(message["body"])
                if not message.get("more_body", False):
                    await chunks.put(None)

        async def run() -> None:
            try:
                await self.app(scope, receive, send)  # type: ignore[operator]
            except BaseException as exc:
                if not start.done():
                    start.set_exception(exc)
                    return
                raise
            finally:
                chunks.put_nowait(None)

        task = asyncio.create_task(run())
        message = await start
        return httpx2.Response(
            message["status"], headers=message.get("headers", []),
            stream=_Body(chunks, task, gone), request=request,
        )  # fmt: skip


@contextlib.asynccontextmanager
async def inprocess_client(
    settings: Settings, engines: dict[str, Engine]
) -> AsyncIterator[openai.AsyncOpenAI]:
    """The official async SDK bound to a freshly started app (lifespan included) serving
    ``engines``; everything is shut down on exit."""
    app = build_app(settings, engines=engines)
    async with app.router.lifespan_context(app):
        http = httpx2.AsyncClient(transport=StreamingASGITransport(app), base_url=BASE_URL,
                                  timeout=None)  # fmt: skip
        client = openai.AsyncOpenAI(
            base_url=f"{BASE_URL}/v1", api_key="in-process", http_client=http, max_retries=0
        )
        async with client:
            yield client
