"""A client that leaves, in every phase of a request, over a real socket (uvicorn).

Each case asserts the same three things: the queue place is given back, the ledger has one
499 row (where the request was admitted), and the server logged no traceback and no error.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest

from retouch.config import Settings
from retouch.engine.echo import EchoEngine
from retouch.service import jobs
from tests.conftest import echo_models, encode_image, gradient
from tests.live import LiveServer

pytestmark = pytest.mark.live

SRC = encode_image(gradient((64, 64)))
BOUNDARY = "retouchboundary"


class LogTrap(logging.Handler):
    """Every record of the server process (uvicorn's loggers do not reach the root)."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def attach(self) -> None:
        """Call after building the server: uvicorn's config resets its loggers' handlers."""
        for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
            logging.getLogger(name).addHandler(self)

    def problems(self) -> list[str]:
        return [
            f"{r.name}: {r.getMessage()}"
            for r in self.records
            if r.exc_info is not None or r.levelno >= logging.ERROR
        ]


@pytest.fixture
def server_log() -> Iterator[LogTrap]:
    trap = LogTrap()
    loggers = [logging.getLogger(name) for name in ("", "uvicorn", "uvicorn.error", "uvicorn.access")]
    logging.getLogger().addHandler(trap)
    old = logging.getLogger("retouch").level
    logging.getLogger("retouch").setLevel(logging.INFO)
    yield trap
    logging.getLogger("retouch").setLevel(old)
    for logger in loggers:
        logger.removeHandler(trap)


def wait_for(predicate: Callable[[], bool], timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def multipart(fields: list[tuple[str, str]], image: bytes, *, model_last: bool = False) -> bytes:
    def text(name: str, value: str) -> bytes:
        return (f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n'
                f"{value}\r\n").encode()  # fmt: skip

    file = (f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="image"; filename="a.png"\r\n'
            "Content-Type: image/png\r\n\r\n").encode() + image + b"\r\n"  # fmt: skip
    texts = b"".join(text(n, v) for n, v in fields)
    body = file + texts if model_last else texts + file
    return body + f"--{BOUNDARY}--\r\n".encode()


def send_partial(server: LiveServer, body: bytes, cut: int) -> socket.socket:
    """Send the head and ``cut`` bytes of ``body`` (the full length is announced)."""
    url = urlsplit(server.url)
    sock = socket.create_connection((url.hostname, url.port))
    head = (
        f"POST /v1/images/edits HTTP/1.1\r\nHost: {url.netloc}\r\n"
        f"Content-Type: multipart/form-data; boundary={BOUNDARY}\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode()
    sock.sendall(head + body[:cut])
    return sock


def hang_up(sock: socket.socket) -> None:
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    sock.close()


def settled(server: LiveServer, rows: int) -> bool:
    worker = server.services.workers["echo"]
    records = server.services.gate.records
    return len(records) >= rows and (worker.admitted, worker.running) == (0, 0)


def live(make_settings: Callable[..., Settings], engine: EchoEngine, trap: LogTrap) -> LiveServer:
    server = LiveServer(make_settings(models=echo_models()), engines={"echo": engine})
    trap.attach()
    return server


def test_hang_up_while_the_body_arrives(
    make_settings: Callable[..., Settings], server_log: LogTrap
) -> None:
    engine = EchoEngine("echo")
    with live(make_settings, engine, server_log) as server:
        worker = server.services.workers["echo"]
        body = multipart([("model", "echo"), ("prompt", "x")], SRC + bytes(200_000))
        sock = send_partial(server, body, len(body) // 2)
        assert wait_for(lambda: worker.admitted == 1)  # the model field took the ticket
        hang_up(sock)
        assert wait_for(lambda: settled(server, 1))
        assert [r.status for r in server.services.gate.records] == [499]
        # The model field came last: nothing was admitted when the client left, no row.
        late = multipart([("prompt", "x"), ("model", "echo")], SRC + bytes(200_000), model_last=True)
        sock = send_partial(server, late, len(late) // 2)
        time.sleep(0.2)
        assert worker.admitted == 0
        hang_up(sock)
        with httpx.Client(base_url=server.url) as http:  # the server is fine
            assert http.get("/readyz").json()["status"] == "ready"
        assert [r.status for r in server.services.gate.records] == [499]
        assert engine.runs == 0
        assert server.services.edits.budget.used == 0
    assert server_log.problems() == []
    assert any("client left" in r.getMessage() for r in server_log.records)


def test_hang_up_during_decode(
    make_settings: Callable[..., Settings],
    server_log: LogTrap,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    decoding, resume = threading.Event(), threading.Event()
    real = jobs.decode_job

    def slow_decode(*args: Any) -> Any:
        decoding.set()
        resume.wait(10)
        return real(*args)

    monkeypatch.setattr(jobs, "decode_job", slow_decode)
    engine = EchoEngine("echo")
    with live(make_settings, engine, server_log) as server:
        body = multipart([("model", "echo"), ("prompt", "x")], SRC)
        sock = send_partial(server, body, len(body))
        assert decoding.wait(10)
        hang_up(sock)
        assert wait_for(lambda: len(server.services.gate.records) == 1)
        resume.set()
        assert wait_for(lambda: settled(server, 1))
        assert [r.status for r in server.services.gate.records] == [499]
        time.sleep(0.1)
        assert engine.runs == 0  # cancelled before it reached the engine
    assert server_log.problems() == []


def test_hang_up_while_waiting_in_the_queue(
    make_settings: Callable[..., Settings], server_log: LogTrap
) -> None:
    engine = EchoEngine("echo", {"delay_s": 1.0, "steps": 20})
    with live(make_settings, engine, server_log) as server:
        worker = server.services.workers["echo"]
        files = {"image": ("a.png", SRC, "image/png")}
        data = {"model": "echo", "prompt": "x"}
        first = threading.Thread(
            target=lambda: httpx.post(f"{server.url}/v1/images/edits", files=files, data=data, timeout=30)
        )
        first.start()
        assert wait_for(lambda: worker.running == 1)
        body = multipart([("model", "echo"), ("prompt", "x")], SRC)
        sock = send_partial(server, body, len(body))
        assert wait_for(lambda: worker.admitted == 2)  # decoded, waiting for the slot
        hang_up(sock)
        first.join()
        assert wait_for(lambda: settled(server, 2))
        assert sorted(r.status for r in server.services.gate.records) == [200, 499]
        assert engine.runs == 1  # the one that left never ran
    assert server_log.problems() == []


def test_hang_up_while_the_engine_runs(
    make_settings: Callable[..., Settings], server_log: LogTrap
) -> None:
    engine = EchoEngine("echo", {"delay_s": 3.0, "steps": 30})
    with live(make_settings, engine, server_log) as server:
        worker = server.services.workers["echo"]
        body = multipart([("model", "echo"), ("prompt", "x")], SRC)
        sock = send_partial(server, body, len(body))
        assert wait_for(lambda: worker.running == 1)
        hang_up(sock)
        assert wait_for(lambda: settled(server, 1))
        assert engine.cancelled_runs == 1
        assert [r.status for r in server.services.gate.records] == [499]
    assert server_log.problems() == []


def test_hang_up_mid_stream(make_settings: Callable[..., Settings], server_log: LogTrap) -> None:
    engine = EchoEngine("echo", {"delay_s": 3.0, "steps": 30})
    with live(make_settings, engine, server_log) as server:
        with httpx.Client(timeout=10) as http, http.stream(
            "POST", f"{server.url}/v1/images/edits",
            files={"image": ("a.png", SRC, "image/png")},
            data={"model": "echo", "prompt": "x", "stream": "true", "partial_images": "3"},
        ) as response:  # fmt: skip
            for line in response.iter_lines():
                if line.startswith("data:"):
                    break
        assert wait_for(lambda: settled(server, 1))
        assert engine.cancelled_runs == 1
        assert [r.status for r in server.services.gate.records] == [499]
    assert server_log.problems() == []
