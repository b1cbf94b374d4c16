"""Pure pieces of the relay: SSE framing, retry hints, error mapping."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from retouch.errors import UpstreamError, UpstreamRejected, UpstreamTimeout, UpstreamUnavailable
from retouch.upstream.client import error_from_response, parse_events, retry_after_s
from tests.gateway.hosts import error_body

pytestmark = pytest.mark.anyio


async def chunks(*parts: bytes) -> AsyncIterator[bytes]:
    for part in parts:
        yield part


async def collect(stream: bytes, size: int, cap: int = 1 << 20) -> list[tuple[str, bytes, bytes]]:
    pieces = [stream[i : i + size] for i in range(0, len(stream), size)]
    return [(e.event, e.data, e.frame) async for e in parse_events(chunks(*pieces), cap)]


STREAM = (
    b": ping\n\n"
    b"event: image_edit.partial_image\ndata: {\"type\":\"image_edit.partial_image\",\"b64_json\":\"QUJD\"}\n\n"
    b"event: image_edit.completed\r\ndata: {\"type\":\"image_edit.completed\"}\r\n\r\n"
    b"data: {\"type\":\"image_edit.completed\",\"usage\":{}}\n\n"
)


@pytest.mark.parametrize("size", [1, 3, 7, 64, 10_000])
async def test_frames_survive_any_chunking(size: int) -> None:
    events = await collect(STREAM, size)
    assert [e[0] for e in events] == [
        "", "image_edit.partial_image", "image_edit.completed", "image_edit.completed"
    ]
    assert b"".join(e[2] for e in events) == STREAM  # relayed byte for byte
    assert events[1][1] == b'{"type":"image_edit.partial_image","b64_json":"QUJD"}'


async def test_an_endless_frame_is_an_error() -> None:
    with pytest.raises(UpstreamError):
        await collect(b"data: " + b"A" * 5000, 100, cap=1000)


def test_retry_hints() -> None:
    assert retry_after_s({"retry-after-ms": "250", "retry-after": "9"}) == 0.25
    assert retry_after_s({"retry-after": "3"}) == 3.0
    assert retry_after_s({"retry-after": "Wed, 21 Oct 2015 07:28:00 GMT"}) is None
    assert retry_after_s({}) is None


def test_error_mapping() -> None:
    body = error_body("Bad mask", "invalid_request_error", "mask", "invalid_mask_image_format")
    rejected = error_from_response(400, {"retry-after": "2", "x-other": "1"}, body)
    assert isinstance(rejected, UpstreamRejected)
    assert rejected.status == 400
    assert rejected.error_object() == {
        "message": "Bad mask", "type": "invalid_request_error", "param": "mask",
        "code": "invalid_mask_image_format",
    }
    assert rejected.headers == {"retry-after": "2"}
    assert isinstance(error_from_response(503, {}, b""), UpstreamUnavailable)
    assert isinstance(error_from_response(504, {}, b""), UpstreamTimeout)
    for status in (500, 502, 401):
        error = error_from_response(status, {}, b"<html>")
        assert error.status == 502
    assert error_from_response(418, {}, b"").error_object()["type"] == "invalid_request_error"


async def test_relay_admission_and_overflow_order() -> None:
    """``concurrency + max_queue`` tickets, then 429; overflow takes the first backend with
    room, and when every one is full the model's own 429 answers."""
    from retouch.config import ModelSettings, UpstreamSettings
    from retouch.errors import QueueFull
    from retouch.scheduler.upstream import UpstreamBackend
    from retouch.service.admission import admit_in_order

    def model(name: str, overflow: list[str]) -> ModelSettings:
        up = UpstreamSettings(base_url="http://127.0.0.1:9/v1", concurrency=1)
        return ModelSettings(name=name, engine="upstream", upstream=up, overflow=overflow)

    backends = {n: UpstreamBackend(n, model(n, []).upstream, max_queue=1) for n in "abc"}
    try:
        first = model("a", ["b", "c"])
        tickets = [admit_in_order(backends, first) for _ in range(6)]
        assert [t.backend for t in tickets] == [backends[n] for n in "aabbcc"]
        assert backends["a"].stats().waiting == 2
        with pytest.raises(QueueFull) as info:
            admit_in_order(backends, first)
        assert "'a'" in info.value.message
        assert info.value.headers["retry-after"]
        tickets[2].release()
        tickets[2].release()  # idempotent
        assert admit_in_order(backends, first).backend is backends["b"]
    finally:
        for backend in backends.values():
            await backend.close()


async def test_a_generation_is_relayed_as_typed_json() -> None:
    import json

    from retouch.config import UpstreamSettings
    from retouch.scheduler.upstream import UpstreamBackend
    from retouch.service.form import EditForm
    from retouch.service.relay import relay_request

    backend = UpstreamBackend(
        "g", UpstreamSettings(base_url="http://127.0.0.1:9/v1", model="gpt-image-1.5"),
        max_queue=0,
    )  # fmt: skip
    try:
        form = EditForm(fields={"prompt": "a cat", "n": "2", "stream": "true", "partial_images": "1",
                                "quality": "low", "model": "mine"})  # fmt: skip
        request = relay_request(form, backend, "req_1", generation=True)
        built = backend.client._build(request)
        assert built.url.path == "/v1/images/generations"
        assert built.headers["content-type"] == "application/json"
        assert json.loads(built.content) == {
            "prompt": "a cat", "n": 2, "stream": True, "partial_images": 1, "quality": "low",
            "model": "gpt-image-1.5",
        }
    finally:
        await backend.close()


async def test_a_relay_cancelled_as_its_slot_is_granted_gives_the_slot_back() -> None:
    """The relay's upstream slots are waited for through ``BoundedQueue._take_slot``, as the
    local workers' are: a client that leaves in the loop iteration its slot frees up does not
    keep it or reach the upstream, and the next request gets the slot."""
    import asyncio
    import time

    from retouch.config import UpstreamSettings
    from retouch.scheduler.upstream import UpstreamBackend

    backend = UpstreamBackend(
        "g", UpstreamSettings(base_url="http://127.0.0.1:9/v1", concurrency=1), max_queue=1
    )
    entered: list[str] = []

    async def relay(name: str) -> None:
        async with backend.slot(time.monotonic() + 30):
            entered.append(name)

    try:
        await backend._slots.acquire()  # someone else holds the only slot
        waiting = asyncio.ensure_future(relay("left"))
        for _ in range(5):
            await asyncio.sleep(0)
        assert not waiting.done()
        backend._slots.release()  # the slot frees up ...
        waiting.cancel()  # ... and the client leaves in the same loop iteration
        with pytest.raises(asyncio.CancelledError):
            await waiting
        assert entered == []
        assert backend.running == 0
        await asyncio.wait_for(relay("next"), timeout=5)  # the slot was not lost
        assert entered == ["next"]
    finally:
        await backend.close()
