"""``GET /healthz`` is answered by the HTTP protocol as its bytes are read, ahead of the app's
queued work (``retouch.api.server``): on real sockets, with the production configuration."""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import uvicorn

from retouch.api.server import server_config
from retouch.config import load_settings
from tests.conftest import echo_models
from tests.live import LiveServer
from tests.test_hostile_http import ResponseReader, connect, parse, read_until_closed
from tests.waiting import wait_until


class _StuckApp:
    """An ASGI app that never answers a request (lifespan: starts and stops at once)."""

    def __init__(self) -> None:
        self.calls = 0

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        self.calls += 1
        await asyncio.Event().wait()


@pytest.fixture
def stuck(tmp_path: Any) -> Iterator[tuple[str, _StuckApp]]:
    app = _StuckApp()
    settings = load_settings(None, data_dir=tmp_path / "data", models=echo_models())
    config = server_config(app, settings, host="127.0.0.1", port=0, log_level="warning",
                           timeout_graceful_shutdown=1)  # fmt: skip
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    wait_until(lambda: server.started, timeout=30)
    port = server.servers[0].sockets[0].getsockname()[1]
    yield f"http://127.0.0.1:{port}", app
    server.should_exit = True
    thread.join(10)


def test_liveness_is_answered_without_the_app(stuck: tuple[str, _StuckApp]) -> None:
    """The app answers nothing, and /healthz still answers 200, over and over on one
    keep-alive connection, with the app's body and OpenAI's standard headers; /readyz (the
    app's) does not answer."""
    url, app = stuck
    with httpx.Client(base_url=url, timeout=5) as http:
        for _ in range(3):
            reply = http.get("/healthz")
            assert reply.status_code == 200
            assert reply.json() == {"status": "ok"}
            assert reply.headers["content-type"] == "application/json"
            assert reply.headers["x-request-id"].startswith("req_")
            assert reply.headers["openai-version"] == "2020-10-01"
            assert reply.headers["x-content-type-options"] == "nosniff"
            assert reply.headers.get("connection") != "close"
        with pytest.raises(httpx.ReadTimeout):
            http.get("/readyz", timeout=0.5)
    assert app.calls == 1  # only /readyz reached the app


def test_a_probe_asking_to_close_is_closed(stuck: tuple[str, _StuckApp]) -> None:
    host, port = stuck[0].removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        status, headers, body = parse(read_until_closed(sock))
    assert (status, body, headers["connection"]) == (200, {"status": "ok"}, "close")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(b"GET /healthz HTTP/1.0\r\n\r\n")  # HTTP/1.0: closes by default
        status, _, body = parse(read_until_closed(sock))
    assert (status, body) == (200, {"status": "ok"})


@pytest.mark.parametrize(
    "head",
    [
        b"GET /healthz?verbose=1 HTTP/1.1\r\nHost: x\r\n\r\n",  # a query
        b"GET /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nhi",  # a body
        b"POST /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n",  # another method
    ],
    ids=["query", "body", "post"],
)
def test_anything_else_goes_to_the_app(stuck: tuple[str, _StuckApp], head: bytes) -> None:
    url, app = stuck
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(head)
        wait_until(lambda: app.calls == 1, timeout=10)


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    settings = load_settings(None, data_dir=tmp_path_factory.mktemp("liveness") / "data",
                             models=echo_models())  # fmt: skip
    with LiveServer(settings) as server:
        yield server


def test_requests_pipelined_around_a_probe_are_answered_in_order(live: LiveServer) -> None:
    """A probe between two app requests in one write (then it goes through the app, like one
    trickled in two reads): three answers, in order, on one connection."""
    sock = connect(live)
    sock.sendall(
        b"GET /readyz HTTP/1.1\r\nHost: x\r\n\r\n"
        b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
        b"GET /v1/models/nope HTTP/1.1\r\nHost: x\r\n\r\n"
    )
    reader = ResponseReader(sock)
    answers = []
    for _ in range(3):
        status, _, body = parse(reader.next())
        answers.append((status, body))
    assert answers[0][0] == 200
    assert answers[0][1]["status"] == "ready"
    assert answers[1] == (200, {"status": "ok"})
    assert answers[2][0] == 404
    assert answers[2][1]["error"]["code"] == "model_not_found"
    sock.sendall(b"GET /healthz HTTP/1.1\r\nHo")
    sock.sendall(b"st: x\r\n\r\n")
    status, _, body = parse(reader.next())
    assert (status, body) == (200, {"status": "ok"})
    sock.sendall(b"GET /healthz HTTP/1.1\r\n\r\n")  # no Host: h11 refuses it, in the envelope
    status, _, body = parse(read_until_closed(sock))
    assert status == 400
    assert body["error"]["code"] == "invalid_http_request"
    sock.close()
