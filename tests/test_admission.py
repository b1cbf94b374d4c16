"""Admission before work: the queue ticket is taken before any decode, decodes are bounded and
the upload bytes held across requests are capped."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import openai
import orjson
import pytest

from retouch.engine.echo import EchoEngine
from retouch.service import jobs
from tests.conftest import Harness, echo_models, encode_image, gradient
from tests.live import LiveServer
from tests.test_hostile_http import (
    assert_envelope,
    connect,
    parse,
    read_response,
    read_until_closed,
)
from tests.waiting import async_wait_until, wait_until

pytestmark = pytest.mark.anyio

SRC = encode_image(gradient((64, 64)))
NOT_AN_IMAGE = b"\x89PNG\r\n\x1a\n" + b"garbage" * 100


@pytest.fixture
def decode_calls(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    calls: list[float] = []
    real = jobs.decode_job

    def counted(*args: Any) -> Any:
        calls.append(time.monotonic())
        return real(*args)

    monkeypatch.setattr(jobs, "decode_job", counted)
    return calls


async def busy(harness_factory: Callable[..., Any], make_settings: Callable[..., Any]) -> tuple[Harness, Any]:
    """A server whose only slot is taken by a long edit (queue of 0)."""
    h: Harness = await harness_factory(
        make_settings(models=echo_models(delay_s=5.0, steps=100), queue={"max_queue": 0})
    )
    first = asyncio.ensure_future(
        h.sdk.images.edit(model="echo", image=("a.png", SRC, "image/png"), prompt="x")
    )
    worker = h.services.workers["echo"]
    await async_wait_until(lambda: worker.running, timeout=5)
    assert worker.running == 1
    return h, first


async def test_a_full_queue_answers_429_before_decoding(
    harness_factory: Callable[..., Any], make_settings: Callable[..., Any], decode_calls: list[float]
) -> None:
    h, first = await busy(harness_factory, make_settings)
    decoded_before = len(decode_calls)
    files = {"image": ("a.png", NOT_AN_IMAGE, "image/png")}
    # The model field first (as the SDK sends it) and last: both refused, neither decoded (an
    # undecodable image would be a 400 if it had been looked at).
    early = await h.http.post("/v1/images/edits", data={"model": "echo", "prompt": "x"}, files=files)
    late_body, late_type = _multipart_model_last(NOT_AN_IMAGE)
    late = await h.http.post("/v1/images/edits", content=late_body, headers={"content-type": late_type})
    as_json = await h.http.post("/v1/images/edits", json={
        "model": "echo", "prompt": "x",
        "images": [{"image_url": "data:image/png;base64," + base64.b64encode(NOT_AN_IMAGE).decode()}],
    })  # fmt: skip
    for response in (early, late, as_json):
        assert response.status_code == 429, response.text
        assert response.json()["error"]["code"] == "queue_full"
        assert int(response.headers["retry-after"]) >= 1
        assert int(response.headers["retry-after-ms"]) >= 1
    assert len(decode_calls) == decoded_before
    with pytest.raises(openai.RateLimitError):  # streaming too: a real 429, not an SSE error
        await h.sdk.images.edit(
            model="echo", image=("a.png", SRC, "image/png"), prompt="x", stream=True
        )
    assert h.services.workers["echo"].admitted == 1
    assert h.services.edits.budget.used == 0
    first.cancel()


def _multipart_model_last(image: bytes) -> tuple[bytes, str]:
    b = "xyzboundary"
    body = (
        f'--{b}\r\nContent-Disposition: form-data; name="image"; filename="a.png"\r\n'
        "Content-Type: image/png\r\n\r\n"
    ).encode() + image + (
        f'\r\n--{b}\r\nContent-Disposition: form-data; name="prompt"\r\n\r\nx\r\n'
        f'--{b}\r\nContent-Disposition: form-data; name="model"\r\n\r\necho\r\n--{b}--\r\n'
    ).encode()
    return body, f"multipart/form-data; boundary={b}"


async def test_an_unknown_model_is_refused_before_decoding(
    echo: Harness, decode_calls: list[float]
) -> None:
    response = await echo.http.post(
        "/v1/images/edits", data={"model": "nope", "prompt": "x"},
        files={"image": ("a.png", NOT_AN_IMAGE, "image/png")},
    )  # fmt: skip
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "model_not_found"
    assert decode_calls == []
    assert echo.services.workers["echo"].admitted == 0


async def test_concurrent_decodes_are_bounded(
    harness_factory: Callable[..., Any], make_settings: Callable[..., Any],
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    lock = threading.Lock()
    now = peak = 0
    real = jobs.decode_job

    def slow(*args: Any) -> Any:
        nonlocal now, peak
        with lock:
            now += 1
            peak = max(peak, now)
        time.sleep(0.05)
        with lock:
            now -= 1
        return real(*args)

    monkeypatch.setattr(jobs, "decode_job", slow)
    h: Harness = await harness_factory(
        make_settings(models=echo_models(), queue={"max_decodes": 2, "max_queue": 16})
    )
    results = await asyncio.gather(*(
        h.sdk.images.edit(model="echo", image=("a.png", SRC, "image/png"), prompt="x")
        for _ in range(8)
    ))  # fmt: skip
    assert len(results) == 8
    assert peak == 2


async def test_upload_bytes_across_requests_are_capped(
    harness_factory: Callable[..., Any], make_settings: Callable[..., Any],
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    decoding, resume = threading.Event(), threading.Event()
    real = jobs.decode_job

    def held(*args: Any) -> Any:
        decoding.set()
        resume.wait(10)
        return real(*args)

    monkeypatch.setattr(jobs, "decode_job", held)
    cap = 300_000
    h: Harness = await harness_factory(make_settings(
        models=echo_models(),
        limits={"max_body_bytes": cap, "max_image_bytes": cap},
        queue={"max_buffered_bytes": cap},
    ))  # fmt: skip
    big = SRC + bytes(200_000)  # still a valid PNG: trailing bytes after IEND are ignored
    first = asyncio.ensure_future(
        h.sdk.images.edit(model="echo", image=("a.png", big, "image/png"), prompt="x")
    )
    assert await asyncio.to_thread(decoding.wait, 10)
    assert h.services.edits.budget.used > 200_000
    refused = await h.http.post(
        "/v1/images/edits", data={"model": "echo", "prompt": "x"},
        files={"image": ("a.png", big, "image/png")},
    )  # fmt: skip
    assert refused.status_code == 503
    assert refused.json()["error"]["code"] == "server_busy"
    assert int(refused.headers["retry-after"]) >= 1
    resume.set()
    assert (await first).data[0].b64_json
    assert h.services.edits.budget.used == 0
    assert h.services.workers["echo"].admitted == 0


def test_a_queue_of_zero_is_refused_on_the_ray_backend(make_settings: Callable[..., Any]) -> None:
    """Serve's ``max_queued_requests`` takes -1 or >= 1: 0 would fail at deploy time, so the
    settings refuse it up front, saying what to do."""
    with pytest.raises(ValueError, match="max_queued_requests must be -1"):
        make_settings(queue={"max_queue": 0}, cluster={"backend": "ray"})
    assert make_settings(queue={"max_queue": 1}, cluster={"backend": "ray"}).queue.max_queue == 1


def test_the_budget_must_fit_one_maximal_request(make_settings: Callable[..., Any]) -> None:
    with pytest.raises(ValueError, match="max_buffered_bytes"):
        make_settings(queue={"max_buffered_bytes": 1000})


async def test_readyz_reports_each_backend(echo: Harness) -> None:
    ready = await echo.http.get("/readyz")
    assert ready.status_code == 200
    body = orjson.loads(ready.content)
    assert body["status"] == "ready"
    assert body["models"]["echo"]["ready"] is True


async def test_a_wedged_engine_answers_504_and_marks_the_model_not_ready(
    harness_factory: Callable[..., Any], make_settings: Callable[..., Any]
) -> None:
    from retouch.config import ModelSettings
    from tests.test_scheduler import StubbornEngine

    engine = StubbornEngine()
    models = [ModelSettings(name="stubborn", engine="echo", run_deadline_s=0.2)]
    h: Harness = await harness_factory(
        make_settings(models=models, queue={"cancel_grace_s": 0.2}), engines={"stubborn": engine}
    )
    with pytest.raises(openai.APIStatusError) as info:
        await h.sdk.images.edit(model="stubborn", image=("a.png", SRC, "image/png"), prompt="x")
    assert info.value.status_code == 504
    assert info.value.code == "run_timeout"
    async def not_ready() -> bool:
        return (await h.http.get("/readyz")).status_code == 503

    await async_wait_until(not_ready, timeout=5)
    ready = await h.http.get("/readyz")
    assert ready.json()["status"] == "not_ready"
    assert "ignored cancellation" in ready.json()["models"]["stubborn"]["reason"]
    engine.release.set()
    async def is_ready() -> bool:
        return (await h.http.get("/readyz")).status_code == 200

    await async_wait_until(is_ready, timeout=5)
    ready = await h.http.get("/readyz")
    assert ready.json()["status"] == "ready"
    assert [r.status for r in h.services.gate.records] == [504]


@pytest.mark.live
def test_an_early_429_reaches_the_sdk_over_a_real_socket(make_settings: Callable[..., Any]) -> None:
    """A refused multi-MB upload gets its 429 (not a reset connection), and the client goes
    on (on a new connection: the refused one is closed after its body)."""
    import httpx as httpx1

    engine = EchoEngine("echo", {"delay_s": 3.0, "steps": 30})
    settings = make_settings(models=echo_models(), queue={"max_queue": 0})
    big = SRC + bytes(4_000_000)  # several socket buffers' worth still unsent at the refusal
    with LiveServer(settings, engines={"echo": engine}) as server, server.sdk() as client:
        first = threading.Thread(target=lambda: client.images.edit(
            model="echo", image=("a.png", SRC, "image/png"), prompt="x"
        ))  # fmt: skip
        first.start()
        wait_until(lambda: server.services.workers["echo"].running == 1, timeout=10)
        for _ in range(3):
            with pytest.raises(openai.RateLimitError) as info:
                client.images.edit(model="echo", image=("a.png", big, "image/png"), prompt="x")
            assert info.value.code == "queue_full"
        with httpx1.Client(base_url=server.url) as http:  # the refused connection closes; a new one
            refused = http.post("/v1/images/edits", data={"model": "echo", "prompt": "x"},
                                files={"image": ("a.png", big, "image/png")})  # fmt: skip
            assert refused.status_code == 429
            assert http.get("/healthz").status_code == 200
            assert http.get("/readyz").json()["models"]["echo"]["waiting"] == 0
        first.join()
    assert engine.runs == 1


_PART_HEAD = (
    b'--b\r\nContent-Disposition: form-data; name="model"\r\n\r\necho\r\n'
    b'--b\r\nContent-Disposition: form-data; name="image"; filename="a.png"\r\n'
    b"Content-Type: image/png\r\n\r\n"
)
_REST = bytes(3_000_000) + b"\r\n--b--\r\n"


@contextlib.contextmanager
def _slot_taken(make_settings: Callable[..., Any], **server: Any) -> Iterator[Any]:
    """A live server whose one slot is held by a 3 s edit (queue of 0); on exit the edit
    has finished and the server stopped."""
    engine = EchoEngine("echo", {"delay_s": 3.0, "steps": 30})
    settings = make_settings(models=echo_models(), queue={"max_queue": 0}, server=server)
    live = LiveServer(settings, engines={"echo": engine})
    live.start()
    client = live.sdk()
    first = threading.Thread(target=lambda: client.images.edit(
        model="echo", image=("a.png", SRC, "image/png"), prompt="x"
    ))  # fmt: skip
    first.start()
    try:
        wait_until(lambda: live.services.workers["echo"].running == 1, timeout=10)
        yield live
    finally:
        first.join()
        live.stop()


def _refused_upload(live: Any, *, chunked: bool = False) -> tuple[Any, bytes]:
    """Send the head and the model field of a 3 MB upload, nothing more; return the socket and
    the answer. ``chunked``: no ``Content-Length`` (the body's length is unknown): then the
    server closes after its answer, and this reads until its FIN."""
    sock: socket.socket = connect(live)
    if chunked:
        sock.sendall(
            b"POST /v1/images/edits HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
            b"Content-Type: multipart/form-data; boundary=b\r\n\r\n"
            b"%x\r\n%s\r\n" % (len(_PART_HEAD), _PART_HEAD)
        )
        return sock, read_until_closed(sock)  # the answer, then EOF: the body is mostly unsent
    length = len(_PART_HEAD) + len(_REST)
    sock.sendall(
        b"POST /v1/images/edits HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n"
        b"Content-Type: multipart/form-data; boundary=b\r\n\r\n" % length + _PART_HEAD
    )
    return sock, read_response(sock)  # the answer, while the body is mostly unsent


def _queue_is_empty(live: Any) -> None:
    with live.http() as http:
        assert http.get("/readyz").json()["models"]["echo"]["waiting"] == 0


@pytest.mark.live
def test_an_early_429_keeps_the_connection_and_the_rest_of_the_body_is_skipped(
    make_settings: Callable[..., Any],
) -> None:
    """The 429 is sent once the model field is read, while 3 MB of the body are still
    unsent. The body's length is known, so the connection stays: the rest is read and
    dropped, unparsed (sending it does not hit a reset; it is not a next request), and the
    request sent right behind it in the same write is answered on the same connection."""
    with _slot_taken(make_settings) as live:
        sock, answer = _refused_upload(live)
        headers = assert_envelope(answer, 429, "queue_full")
        assert "retry-after" in headers
        assert headers.get("connection") != "close"
        # the rest of the body (with bytes that would parse as a request) and, in the same
        # write, the next request
        fake = b"GET /x HTTP/1.1\r\n\r\n"
        rest = _REST[:1000] + fake + _REST[1000 + len(fake) :]
        sock.sendall(rest + b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        status, _, body = parse(read_response(sock))
        assert (status, body) == (200, {"status": "ok"})
        sock.close()
        _queue_is_empty(live)


@pytest.mark.live
def test_the_refused_sdk_retries_on_the_same_connection(make_settings: Callable[..., Any]) -> None:
    """httpx (the OpenAI SDK's transport) sends its whole upload, reads the 429 and puts the
    connection back in its pool; the next request reuses it."""
    import httpx as httpx1

    with _slot_taken(make_settings) as live:
        connections = live.server.server_state.connections
        baseline = len(connections)
        with httpx1.Client(base_url=live.url) as http:
            for _ in range(3):
                refused = http.post("/v1/images/edits", data={"model": "echo", "prompt": "x"},
                                    files={"image": ("a.png", _REST, "image/png")})  # fmt: skip
                assert refused.status_code == 429
            assert http.get("/healthz").status_code == 200
            assert len(connections) == baseline + 1  # one connection served all four
        _queue_is_empty(live)


@pytest.mark.live
def test_an_early_429_on_a_body_of_unknown_length_lingers_then_closes(
    make_settings: Callable[..., Any],
) -> None:
    """Chunked: the body's end cannot be found without parsing it, so the 429 says
    ``connection: close`` and the server half-closes. The rest is then read and dropped
    (sending it does not hit a reset), and the server closes once the client is done: the
    lingering close of ``api.server``."""
    with _slot_taken(make_settings) as live:
        connections = live.server.server_state.connections
        baseline = len(connections)
        sock, answer = _refused_upload(live, chunked=True)
        headers = assert_envelope(answer, 429, "queue_full")
        assert headers["connection"] == "close"
        assert len(connections) == baseline + 1  # lingering: open, reading
        sock.sendall(b"%x\r\n%s\r\n0\r\n\r\n" % (len(_REST), _REST))  # dropped: no EPIPE / reset
        sock.shutdown(socket.SHUT_WR)  # the client is done
        wait_until(lambda: len(connections) == baseline, timeout=10)
        sock.close()
        _queue_is_empty(live)


@pytest.mark.live
@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_a_connection_that_goes_silent_after_an_early_429_is_closed(
    make_settings: Callable[..., Any], chunked: bool
) -> None:
    """After an early 429, a client that stops sending its body is closed after
    ``linger_idle_s``, not held open, whether its connection would be kept or not."""
    with _slot_taken(make_settings, linger_idle_s=0.5, linger_s=30) as live:
        connections = live.server.server_state.connections
        baseline = len(connections)
        sock, _ = _refused_upload(live, chunked=chunked)
        sock.sendall((b"%x\r\n" % len(_REST) if chunked else b"") + _REST[:100_000])  # then silence
        assert len(connections) == baseline + 1
        wait_until(lambda: len(connections) == baseline, timeout=10)
        sock.close()


@pytest.mark.live
def test_a_trickled_body_after_an_early_429_is_cut_at_linger_s(
    make_settings: Callable[..., Any],
) -> None:
    """A client that keeps sending its refused body slowly, never going silent, is closed
    after ``linger_s`` all the same."""
    with _slot_taken(make_settings, linger_idle_s=60, linger_s=1.0) as live:
        connections = live.server.server_state.connections
        baseline = len(connections)
        sock, _ = _refused_upload(live)

        def trickled_until_closed() -> bool:
            try:
                sock.sendall(b"\0" * 1000)
            except OSError:
                return True
            return len(connections) == baseline

        # never silent for linger_idle_s (60 s): only linger_s can end it within the wait
        wait_until(trickled_until_closed, timeout=20, interval=0.05)
        sock.close()


@pytest.mark.live
def test_aiohttp_reads_an_early_429_on_a_large_upload(make_settings: Callable[..., Any]) -> None:
    """Open WebUI's client (aiohttp FormData, text parts first) gets the 429 sent at the model
    field while its 3 MB upload is still going out, not a connection error."""
    import aiohttp

    with _slot_taken(make_settings) as live:

        async def send() -> list[tuple[int, str]]:
            got = []
            async with aiohttp.ClientSession() as session:
                for _ in range(3):
                    form = aiohttp.FormData()
                    form.add_field("model", "echo")
                    form.add_field("prompt", "x")
                    form.add_field("image", _REST, filename="a.png", content_type="image/png")
                    async with session.post(f"{live.url}/v1/images/edits", data=form) as r:
                        got.append((r.status, (await r.json())["error"]["code"]))
            return got

        assert asyncio.run(send()) == [(429, "queue_full")] * 3
