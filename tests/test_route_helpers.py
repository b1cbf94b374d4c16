"""The edit route's helpers on their own: the disconnect race, idempotency, rendering."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
import pytest
from pydantic import TypeAdapter

from retouch.accounting.gate import OpenGate, StoredResponse
from retouch.api import render
from retouch.api.disconnect import until_disconnect
from retouch.api.idempotency import Idempotency, earliest_link_expiry, fingerprint
from retouch.errors import ClientLeft, Unprocessable
from retouch.protocol import (
    ErrorObject,
    Image,
    ImageEditCompletedEvent,
    ImageEditPartialImageEvent,
    ImagesResponse,
    ImagesUsage,
    InputTokensDetails,
    StreamEvent,
)
from retouch.service.form import EditForm, Upload

pytestmark = pytest.mark.anyio


class Receiver:
    """An ASGI ``receive`` that says ``http.disconnect`` once ``leave()`` is called."""

    def __init__(self) -> None:
        self._gone = asyncio.Event()

    def leave(self) -> None:
        self._gone.set()

    async def __call__(self) -> dict[str, Any]:
        await self._gone.wait()
        return {"type": "http.disconnect"}


async def test_the_race_returns_the_result_when_the_client_stays() -> None:
    async def work() -> int:
        await asyncio.sleep(0.01)
        return 7

    assert await until_disconnect(Receiver(), work()) == 7


async def test_the_race_cancels_the_work_and_waits_for_its_cleanup() -> None:
    receive = Receiver()
    cleaned = asyncio.Event()

    async def work() -> None:
        try:
            await asyncio.sleep(30)
        finally:
            await asyncio.sleep(0.01)  # cleanup that itself awaits (a ledger write)
            cleaned.set()

    asyncio.get_running_loop().call_later(0.05, receive.leave)
    with pytest.raises(ClientLeft):
        await until_disconnect(receive, work())
    assert cleaned.is_set()


async def test_the_race_lets_errors_of_the_work_through() -> None:
    async def work() -> None:
        raise Unprocessable("nope")

    with pytest.raises(Unprocessable):
        await until_disconnect(Receiver(), work())


def _form(data: bytes) -> EditForm:
    return EditForm(fields={"prompt": "x"}, images=[Upload("image", "a.png", "image/png", data)])


def test_fingerprints_cover_fields_and_file_contents() -> None:
    assert fingerprint(_form(b"a")) == fingerprint(_form(b"a"))
    assert fingerprint(_form(b"a")) != fingerprint(_form(b"b"))
    other = _form(b"a")
    other.fields["quality"] = "low"
    assert fingerprint(other) != fingerprint(_form(b"a"))


def test_link_expiry_is_read_from_stored_url_responses() -> None:
    body = orjson.dumps({"created": 1, "data": [
        {"url": "http://h/v1/blobs/k1?expires=2000&sig=s"},
        {"url": "http://h/v1/blobs/k2?expires=1500&sig=s"},
    ]})  # fmt: skip
    assert earliest_link_expiry(body) == 1500
    assert earliest_link_expiry(b'{"created":1,"data":[{"b64_json":"AAAA"}]}') is None
    assert earliest_link_expiry(b'{"url": broken') is None


async def test_idempotency_without_a_key_does_nothing() -> None:
    gate = OpenGate()
    idem = Idempotency(gate, OpenGate.ANONYMOUS, None)
    assert await idem.replay(_form(b"a")) is None
    await idem.remember([b"{}"])
    assert gate._idempotent == {}


async def test_idempotency_remembers_and_replays() -> None:
    gate = OpenGate()
    idem = Idempotency(gate, OpenGate.ANONYMOUS, "k")
    assert await idem.replay(_form(b"a")) is None
    assert idem.held
    await idem.remember([b'{"created":1,', b'"data":[]}'])
    assert not idem.held
    again = Idempotency(gate, OpenGate.ANONYMOUS, "k")
    stored = await again.replay(_form(b"a"))
    assert stored == StoredResponse(200, b'{"created":1,"data":[]}', "application/json")


USAGE = ImagesUsage(
    input_tokens=3, input_tokens_details=InputTokensDetails(text_tokens=1, image_tokens=2),
    output_tokens=4, total_tokens=7,
)  # fmt: skip


def test_an_images_response_renders_to_json_its_model_parses() -> None:
    response = ImagesResponse.model_construct(
        created=5, data=[Image.model_construct(b64_json=b"QUJD", url=None)] * 2,
        background="opaque", output_format="png", quality="low", size="8x8", usage=USAGE,
        safety_identifier=None,
    )  # fmt: skip
    body = b"".join(render.images_response(response))
    assert ImagesResponse.model_validate_json(body) == ImagesResponse(
        created=5, data=[Image(b64_json=b"QUJD")] * 2, background="opaque", output_format="png",
        quality="low", size="8x8", usage=USAGE,
    )  # fmt: skip
    assert b"safety_identifier" not in body
    dalle = ImagesResponse.model_construct(created=5, data=[Image.model_construct(url="u", b64_json=None)])
    assert orjson.loads(b"".join(render.images_response(dalle))) == {"created": 5, "data": [{"url": "u"}]}


def test_stream_events_render_to_frames_the_union_parses() -> None:
    events: TypeAdapter[Any] = TypeAdapter(StreamEvent)
    partial = ImageEditPartialImageEvent.model_construct(
        b64_json=b"QUJD", background="opaque", created_at=1, output_format="png",
        quality="low", size="8x8", partial_image_index=0, safety_identifier=None,
    )  # fmt: skip
    done = ImageEditCompletedEvent.model_construct(
        b64_json=b"QUJD", background="opaque", created_at=1, output_format="png",
        quality="low", size="8x8", usage=USAGE, safety_identifier=None,
    )  # fmt: skip
    for event, name in ((partial, b"image_edit.partial_image"), (done, b"image_edit.completed")):
        frame = render.sse_event(event)
        head, data = frame.split(b"\n", 1)
        assert head == b"event: " + name
        assert data.startswith(b"data: ")
        assert frame.endswith(b"\n\n")
        parsed = events.validate_json(data[6:-2])
        assert parsed.type == name.decode()
        assert parsed.b64_json == b"QUJD"
    error = render.error_frame(ErrorObject(message="m", type="server_error", param=None, code="c"))
    parsed = events.validate_json(error.split(b"data: ", 1)[1][:-2])
    assert parsed.error.code == "c"


async def test_the_server_speaks_exactly_the_protocol_models(echo: Any) -> None:
    from tests.conftest import png_bytes

    files = {"image": ("a.png", png_bytes(), "image/png")}
    plain = await echo.http.post("/v1/images/edits", data={"prompt": "x"}, files=files)
    parsed = ImagesResponse.model_validate_json(plain.content)  # extra="forbid": no stray keys
    assert parsed.usage is not None
    assert parsed.data[0].b64_json
    streamed = await echo.http.post(
        "/v1/images/edits", data={"prompt": "x", "stream": "true", "partial_images": "1"},
        files=files,
    )  # fmt: skip
    adapter: TypeAdapter[Any] = TypeAdapter(StreamEvent)
    frames = [f for f in streamed.content.split(b"\n\n") if f.startswith(b"event: ")]
    types = [adapter.validate_json(f.split(b"data: ", 1)[1]).type for f in frames]
    assert types == ["image_edit.partial_image", "image_edit.completed"]


async def test_authenticate_hands_the_keys_headers_to_every_response() -> None:
    from types import SimpleNamespace

    from starlette.requests import Request

    from retouch.accounting.gate import Principal
    from retouch.api.auth import authenticate
    from retouch.errors import AuthenticationFailed

    class Gate:
        async def authenticate(self, authorization: str | None) -> Principal:
            if authorization != "Bearer good":
                raise AuthenticationFailed("no")
            return Principal("k1", "alice", headers={"x-ratelimit-limit-requests": "10"})

    app = SimpleNamespace(state=SimpleNamespace(services=SimpleNamespace(gate=Gate())))

    def request(authorization: str) -> Request:
        headers = [(b"authorization", authorization.encode())]
        return Request({"type": "http", "app": app, "headers": headers, "state": {}})

    good = request("Bearer good")
    principal = await authenticate(good)
    assert principal.key_id == "k1"
    assert good.state.extra_headers == {"x-ratelimit-limit-requests": "10"}
    with pytest.raises(AuthenticationFailed):
        await authenticate(request("Bearer bad"))
