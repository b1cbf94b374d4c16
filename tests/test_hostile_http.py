"""Hostile HTTP clients on real sockets against the production server configuration
(``retouch.api.server.server_config``, which ``retouch serve`` runs): slow-loris heads and
bodies are closed by the server, malformed requests that never reach the app are answered in
OpenAI's envelope, and half-open connections beyond the open-files limit cannot lock
``/healthz`` out."""

from __future__ import annotations

import contextlib
import os
import resource
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from retouch.config import load_settings
from tests.conftest import echo_models
from tests.live import LiveServer
from tests.waiting import wait_until

HEADER_TIMEOUT_S = 1.0
BODY_TIMEOUT_S = 1.0


@pytest.fixture(scope="module")
def guarded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    settings = load_settings(
        None, data_dir=tmp_path_factory.mktemp("hostile-http") / "data", models=echo_models(),
        server={"header_timeout_s": HEADER_TIMEOUT_S, "max_head_bytes": 8192},
        limits={"receipt_timeout_s": BODY_TIMEOUT_S, "max_body_bytes": 1_000_000},
    )  # fmt: skip
    server = LiveServer(settings)
    server.start()
    yield server
    server.stop()


def connect(server: LiveServer) -> socket.socket:
    host, port = server.base_url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=10)
    return sock


def read_until_closed(sock: socket.socket, timeout: float = 10.0) -> bytes:
    """Everything the server sends until it closes the connection (TimeoutError if it does
    not within ``timeout``)."""
    sock.settimeout(0.2)
    chunks: list[bytes] = []
    closed = False

    def server_closed() -> bool:
        nonlocal closed
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            return False
        except ConnectionResetError:
            closed = True
            return True
        if not chunk:
            closed = True
        chunks.append(chunk)
        return closed

    wait_until(server_closed, timeout)
    return b"".join(chunks)


class ResponseReader:
    """Responses one at a time from a connection that stays open (several may come in one
    read: pipelined requests)."""

    def __init__(self, sock: socket.socket, timeout: float = 10.0) -> None:
        self.sock = sock
        self.timeout = timeout
        self.buffer = b""

    def next(self) -> bytes:
        self.sock.settimeout(self.timeout)
        while True:
            head, sep, body = self.buffer.partition(b"\r\n\r\n")
            if sep:
                _, headers, _ = parse(head + sep)
                length = int(headers.get("content-length", "0"))
                if len(body) >= length:
                    one = head + sep + body[:length]
                    self.buffer = body[length:]
                    return one
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError(f"closed by the server after {self.buffer[:200]!r}")
            self.buffer += chunk


def read_response(sock: socket.socket, timeout: float = 10.0) -> bytes:
    """One response (head and its ``content-length`` body), leaving the connection open."""
    return ResponseReader(sock, timeout).next()


def parse(raw: bytes) -> tuple[int, dict[str, str], Any]:
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ")[1])
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    return status, headers, orjson.loads(body) if body else None


def assert_envelope(raw: bytes, status: int, code: str) -> dict[str, str]:
    got, headers, body = parse(raw)
    assert got == status, raw[:300]
    assert headers["content-type"] == "application/json"
    assert headers["x-request-id"].startswith("req_")
    assert set(body) == {"error"}
    assert set(body["error"]) == {"message", "type", "param", "code"}
    assert body["error"]["code"] == code
    assert body["error"]["message"]
    return headers


# -- slow loris ---------------------------------------------------------------------------------


def test_slow_loris_heads_are_closed_by_the_server(guarded: LiveServer) -> None:
    """20 clients each send a request head one header every 0.3 s, forever; the server answers
    408 and closes every one at its header deadline (well before they would finish)."""
    socks = [connect(guarded) for _ in range(20)]
    for sock in socks:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
    closed: dict[int, bytes] = {}

    def trickle_until_all_closed() -> bool:
        for i, sock in enumerate(socks):
            if i in closed:
                continue
            try:
                sock.sendall(b"X-Slow: 1\r\n")
            except OSError:
                closed[i] = b""
                continue
            sock.settimeout(0.01)
            with contextlib.suppress(TimeoutError):
                data = sock.recv(65536)
                closed[i] = data + read_until_closed(sock, 5) if data else b""
        return len(closed) == len(socks)

    wait_until(trickle_until_all_closed, timeout=30, interval=0.3)
    answered = [raw for raw in closed.values() if raw]
    assert answered  # at least those still writable when the deadline hit read the 408
    for raw in answered:
        assert_envelope(raw, 408, "request_timeout")
    for sock in socks:
        sock.close()


def test_keep_alive_connection_gets_a_fresh_header_deadline(guarded: LiveServer) -> None:
    sock = connect(guarded)
    sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
    sock.settimeout(5)
    assert sock.recv(65536).startswith(b"HTTP/1.1 200")
    sock.sendall(b"GET /healthz HTTP/1.1\r\n")  # the next head never completes
    assert_envelope(read_until_closed(sock), 408, "request_timeout")
    sock.close()


def test_slow_body_gets_408_and_the_connection_is_closed(guarded: LiveServer) -> None:
    """A body trickled in past the receipt deadline: the app answers 408, and the server then
    closes the connection instead of swallowing the trickle forever."""
    sock = connect(guarded)
    sock.sendall(
        b"POST /v1/images/edits HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n"
        b"Content-Type: multipart/form-data; boundary=b\r\n\r\n--b\r\n"
    )
    received: list[bytes] = []

    def trickle_until_closed() -> bool:
        try:
            sock.sendall(b"x")
        except OSError:
            return True
        sock.settimeout(0.01)
        try:
            data = sock.recv(65536)
        except TimeoutError:
            return False
        received.append(data)
        return not data

    wait_until(trickle_until_closed, timeout=30, interval=0.2)
    assert_envelope(b"".join(received), 408, "request_timeout")
    sock.close()


# -- requests the HTTP layer answers itself -----------------------------------------------------


@pytest.mark.parametrize(
    ("request_bytes", "status", "code"),
    [
        (b"GARBAGE\r\n\r\n", 400, "invalid_http_request"),
        (b"GET / HTTP/1.1 extra\r\nHost: x\r\n\r\n", 400, "invalid_http_request"),
        (b"GET /h\xc3\xa9 HTTP/1.1\r\nHost: x\r\n\r\n", 400, "invalid_http_request"),
        (b"GET /healthz HTTP/1.1\r\nHost: x\r\nBad Header: 1\r\n\r\n", 400, "invalid_http_request"),
        (b"GET /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: 1, 2\r\n\r\n", 400, "invalid_http_request"),
        (b"GET /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n", 400, "invalid_http_request"),
        (b"GET /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: \xc2\xb2\r\n\r\n", 400, "invalid_http_request"),
        (b"GET /healthz HTTP/1.1\r\nHost: x\r\nX: " + b"a" * 20000, 431, "request_header_too_large"),
        (b"GET /healthz HTTP/1.1\r\nHost: x\r\nX: " + b"a" * 20000 + b"\r\n\r\n", 431,
         "request_header_too_large"),
        (b"POST /healthz HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\n", 501, "invalid_http_request"),
    ],
    ids=["garbage", "bad-request-line", "non-ascii-target", "bad-header", "two-lengths", "negative-length",
         "superscript-length", "huge-head", "huge-complete-head", "unknown-coding"],
)  # fmt: skip
def test_malformed_requests_are_answered_in_the_envelope(
    guarded: LiveServer, request_bytes: bytes, status: int, code: str
) -> None:
    sock = connect(guarded)
    sock.sendall(request_bytes)
    headers = assert_envelope(read_until_closed(sock), status, code)
    assert headers["connection"] == "close"
    sock.close()


def test_content_length_of_ten_to_the_thirty(guarded: LiveServer) -> None:
    """h11 refuses a Content-Length of more than 20 digits itself: a 400 in the envelope."""
    sock = connect(guarded)
    sock.sendall(
        b"POST /v1/images/edits HTTP/1.1\r\nHost: x\r\nContent-Length: 1" + b"0" * 30
        + b"\r\nContent-Type: multipart/form-data; boundary=b\r\n\r\n--b\r\n"
    )  # fmt: skip
    raw = read_until_closed(sock)
    assert_envelope(raw, 400, "invalid_http_request")
    assert b"Content-Length" in raw
    sock.close()


def test_content_length_over_the_cap_then_closed(guarded: LiveServer) -> None:
    """A declared body over max_body_bytes: the app's 413, then the server closes rather
    than reading (and discarding) the rest."""
    sock = connect(guarded)
    sock.sendall(
        b"POST /v1/images/edits HTTP/1.1\r\nHost: x\r\nContent-Length: 123456789012\r\n"
        b"Content-Type: multipart/form-data; boundary=b\r\n\r\n--b\r\n"
    )
    assert_envelope(read_until_closed(sock), 413, "request_too_large")
    sock.close()


def test_body_longer_than_declared(guarded: LiveServer) -> None:
    """The surplus reads as the next request, which is not HTTP: the first request is
    answered, the surplus gets a 400 in the envelope, then the connection closes."""
    sock = connect(guarded)
    sock.sendall(b"POST /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nabSURPLUS BYTES\r\n\r\n")
    raw = read_until_closed(sock)
    first, _, rest = raw.partition(b"HTTP/1.1 400")
    assert first.startswith(b"HTTP/1.1 405")  # /healthz is GET only: the app's own answer
    assert_envelope(b"HTTP/1.1 400" + rest, 400, "invalid_http_request")
    sock.close()


def test_server_still_serves(guarded: LiveServer) -> None:
    with guarded.http() as http:
        assert http.get("/healthz").status_code == 200


# -- 1,100 half-open connections under a 1,024 open-files limit ----------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _limit_open_files() -> None:
    resource.setrlimit(resource.RLIMIT_NOFILE, (1024, 1024))


@pytest.fixture
def serve_1024(tmp_path: Path) -> Iterator[tuple[int, subprocess.Popen[bytes]]]:
    """``retouch serve`` itself, in a child process whose open-files limit is 1,024 (soft and
    hard, so raising it is no way out)."""
    port = _free_port()
    env = {**os.environ, "RETOUCH_SERVER__HEADER_TIMEOUT_S": "30", "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "retouch", "serve", "--port", str(port), "--data-dir",
         str(tmp_path / "data"), "--model", "echo=echo"],
        env=env, preexec_fn=_limit_open_files, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        wait_until(lambda: _healthz(port) == 200 or proc.poll() is not None, timeout=120)
        assert proc.poll() is None, proc.stderr.read() if proc.stderr else b""
        yield port, proc
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def _healthz(port: int) -> int | None:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            sock.settimeout(5)
            data = sock.recv(65536)
    except OSError:
        return None
    return int(data.split(b" ", 2)[1]) if data.startswith(b"HTTP/1.1 ") else None


def test_healthz_reachable_with_1100_half_open_connections(
    serve_1024: tuple[int, subprocess.Popen[bytes]],
) -> None:
    port, proc = serve_1024
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard < 1300:
        pytest.skip(f"this test process may open only {hard} files")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, 1300), hard))
    socks: list[socket.socket] = []
    try:
        for _ in range(1100):
            sock = socket.socket()
            sock.setblocking(False)
            with contextlib.suppress(BlockingIOError):
                sock.connect(("127.0.0.1", port))
            socks.append(sock)
        for sock in socks:  # each sends half a request head and then nothing
            with contextlib.suppress(OSError):
                sock.send(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        # the server is still reachable: it drops the oldest half-open heads to make room
        assert wait_until(lambda: _healthz(port) == 200, timeout=30)
        assert proc.poll() is None
        for _ in range(5):
            assert _healthz(port) == 200
    finally:
        for sock in socks:
            sock.close()
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_waiting_helper_times_out() -> None:
    """The deadline helper fails loudly rather than passing a test that waited in vain."""
    calls: list[int] = []
    with pytest.raises(TimeoutError, match="still false"):
        wait_until(lambda: calls.append(1), timeout=0.05)
    assert calls  # it did poll
