"""The relay against a fake upstream on loopback that answers what each test tells it: what
goes upstream (every field, the original bytes, our key), how its errors come back, retries,
mirrored-link refusals, and overflow from a full local engine."""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest

from retouch.config import ModelSettings, UpstreamSettings, load_settings
from tests.conftest import encode_image, gradient, mask_bytes
from tests.gateway.hosts import FakeUpstream, ImageHost, ThreadedServer, error_body
from tests.gateway.test_relay import wait_until
from tests.live import LiveServer

pytestmark = pytest.mark.live
IMAGE = encode_image(gradient((32, 32)))
OTHER = encode_image(gradient((16, 16)))
KEY_ENV = "RETOUCH_TEST_UPSTREAM_KEY"
OK = json.dumps({
    "created": 1, "background": "opaque", "output_format": "png", "quality": "high",
    "size": "1024x1024", "data": [{"b64_json": "iVBORw0KGgo="}],
    "usage": {"input_tokens": 50, "input_tokens_details": {"image_tokens": 40, "text_tokens": 10},
              "output_tokens": 272, "total_tokens": 322},
}).encode()  # fmt: skip


@pytest.fixture(scope="module")
def fake() -> Iterator[tuple[FakeUpstream, ThreadedServer]]:
    upstream = FakeUpstream()
    with ThreadedServer(upstream.app) as server:
        yield upstream, server


@pytest.fixture(scope="module")
def gateway(
    fake: tuple[FakeUpstream, ThreadedServer], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LiveServer]:
    with ThreadedServer(ImageHost(b"").app) as closed:
        gone = closed.url  # a port nobody listens on any more
    base = f"{fake[1].url}/v1"
    models = [
        ModelSettings(name="fake", engine="upstream", upstream=UpstreamSettings(
            base_url=base, model="gpt-image-1.5", api_key_env=KEY_ENV, timeout_s=1.0,
            max_retries=1, max_retry_after_s=2.0, headers={"OpenAI-Project": "proj_test"})),
        ModelSettings(name="gone", engine="upstream", upstream=UpstreamSettings(
            base_url=f"{gone}/v1", max_retries=1, connect_timeout_s=1.0)),
        ModelSettings(name="local", engine="echo", options={"delay_s": 3.0, "steps": 3},
                      overflow=["fake"]),
        ModelSettings(name="alone", engine="echo", options={"delay_s": 3.0, "steps": 3}),
    ]  # fmt: skip
    os.environ[KEY_ENV] = "sk-upstream-secret"
    settings = load_settings(
        None, data_dir=tmp_path_factory.mktemp("gw") / "data", models=models,
        queue={"max_queue": 0},
    )  # fmt: skip
    try:
        with LiveServer(settings) as server:
            yield server
    finally:
        del os.environ[KEY_ENV]


def edit(gateway: LiveServer, model: str = "fake", **kwargs: Any) -> Any:
    kwargs.setdefault("image", ("a.png", IMAGE, "image/png"))
    return gateway.sdk().images.edit(model=model, prompt="make it blue", **kwargs)


def raw(gateway: LiveServer, model: str = "fake", **fields: str) -> httpx.Response:
    return httpx.post(
        f"{gateway.url}/v1/images/edits", files={"image": ("a.png", IMAGE, "image/png")},
        data={"model": model, "prompt": "x", **fields}, timeout=30,
    )  # fmt: skip


def envelope(response: httpx.Response, status: int, code: str | None) -> dict[str, Any]:
    assert response.status_code == status, response.text
    error: dict[str, Any] = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["code"] == code
    return error


def test_every_field_and_the_original_bytes_go_upstream(
    gateway: LiveServer, fake: tuple[FakeUpstream, ThreadedServer]
) -> None:
    upstream, _ = fake
    upstream.answer((200, {}, OK))
    mask = mask_bytes((32, 32), (0, 0, 8, 8))
    result = edit(
        gateway, image=[("a.png", IMAGE, "image/png"), ("b.png", OTHER, "image/png")],
        mask=("m.png", mask, "image/png"), n=2, quality="medium", size="1024x1024",
        output_format="webp", output_compression=70, background="opaque",
        input_fidelity="high", user="end-user-7", extra_body={"moderation": "low", "complexity": "high"},
    )  # fmt: skip
    assert result.usage is not None
    assert result.usage.output_tokens == 272
    got = upstream.received[-1]
    assert got["fields"] == {
        "model": "gpt-image-1.5", "prompt": "make it blue", "n": "2", "quality": "medium",
        "size": "1024x1024", "output_format": "webp", "output_compression": "70",
        "background": "opaque", "input_fidelity": "high", "user": "end-user-7",
        "moderation": "low", "complexity": "high",
    }  # fmt: skip
    assert [(name, data) for name, data, _ in got["files"]] == [
        ("image[]", IMAGE), ("image[]", OTHER), ("mask", mask)
    ]
    assert got["headers"]["authorization"] == "Bearer sk-upstream-secret"
    assert got["headers"]["openai-project"] == "proj_test"
    assert got["headers"]["x-client-request-id"].startswith("req_")
    record = gateway.services.gate.records[-1]
    assert (record.text_tokens, record.image_tokens, record.output_tokens) == (10, 40, 272)


def test_the_body_comes_back_byte_for_byte(
    gateway: LiveServer, fake: tuple[FakeUpstream, ThreadedServer]
) -> None:
    fake[0].answer((200, {}, OK))
    assert raw(gateway).content == OK


def test_upstream_4xx_passes_through(
    gateway: LiveServer, fake: tuple[FakeUpstream, ThreadedServer]
) -> None:
    fake[0].answer((400, {}, error_body("Invalid size 7x7.", "invalid_request_error", "size", "invalid_value")))
    with pytest.raises(openai.BadRequestError) as info:
        edit(gateway)
    assert info.value.body == {
        "message": "Invalid size 7x7.", "type": "invalid_request_error", "param": "size",
        "code": "invalid_value",
    }
    assert info.value.status_code == 400
    fake[0].answer((403, {}, error_body("Region unsupported", "invalid_request_error", None, "unsupported_country_region_territory")))
    envelope(raw(gateway), 403, "unsupported_country_region_territory")
    assert len(fake[0].received) == 1  # 4xx are not retried


def test_upstream_429_keeps_its_retry_hints(
    gateway: LiveServer, fake: tuple[FakeUpstream, ThreadedServer]
) -> None:
    """A Retry-After beyond max_retry_after_s is the client's to honour: passed on, no retry."""
    hints = {"retry-after": "30", "retry-after-ms": "30000"}
    fake[0].answer((429, hints, error_body("Rate limit reached for images", "requests", None, "rate_limit_exceeded")))
    response = raw(gateway)
    error = envelope(response, 429, "rate_limit_exceeded")
    assert error["type"] == "requests"
    assert response.headers["retry-after"] == "30"
    assert response.headers["retry-after-ms"] == "30000"
    assert len(fake[0].received) == 1


def test_short_429_and_503_are_retried(
    gateway: LiveServer, fake: tuple[FakeUpstream, ThreadedServer]
) -> None:
    busy = error_body("Slow down", "server_error", None, None)
    fake[0].answer((429, {"retry-after-ms": "50"}, busy), (200, {}, OK))
    assert raw(gateway).content == OK
    assert len(fake[0].received) == 2
    fake[0].answer((503, {"retry-after-ms": "50"}, busy), (200, {}, OK))
    assert raw(gateway).content == OK
    assert len(fake[0].received) == 2


def test_quota_429_is_not_retried(
    gateway: LiveServer, fake: tuple[FakeUpstream, ThreadedServer]
) -> None:
    fake[0].answer((429, {"retry-after": "1", "x-should-retry": "false"},
                    error_body("You exceeded your current quota", "insufficient_quota", None, "insufficient_quota")))  # fmt: skip
    response = raw(gateway)
    envelope(response, 429, "insufficient_quota")
    assert response.headers["x-should-retry"] == "false"
    assert len(fake[0].received) == 1


@pytest.mark.parametrize(
    ("answer", "status", "code", "attempts"),
    [
        ((500, {}, error_body("boom", "server_error", None, None)), 502, "upstream_error", 1),
        ((502, {}, b"<html>bad gateway</html>"), 502, "upstream_error", 1),
        ((503, {"retry-after": "1"}, error_body("overloaded", "server_error", None, None)), 503, "upstream_unavailable", 2),
        ((504, {}, b""), 504, "upstream_timeout", 1),
        ((401, {}, error_body("Incorrect API key", "invalid_request_error", None, "invalid_api_key")), 502, "upstream_auth_failed", 1),
        ((200, {}, b"not json"), 502, "upstream_error", 1),
        ((200, {}, b'{"data": "nope"}'), 502, "upstream_error", 1),
        ("hang", 504, "upstream_timeout", 1),
    ],
    ids=["500", "502-html", "503", "504", "401", "garbage", "wrong-shape", "timeout"],
)  # fmt: skip
def test_upstream_failures_are_502_503_504_never_500(
    gateway: LiveServer, fake: tuple[FakeUpstream, ThreadedServer],
    answer: Any, status: int, code: str, attempts: int,
) -> None:  # fmt: skip
    fake[0].answer(answer)
    response = raw(gateway)
    envelope(response, status, code)
    assert len(fake[0].received) == attempts
    assert gateway.services.gate.records[-1].status == status


def test_unreachable_upstream_is_502(gateway: LiveServer) -> None:
    with pytest.raises(openai.APIStatusError) as info:
        edit(gateway, model="gone")
    assert info.value.status_code == 502
    assert info.value.code == "upstream_unreachable"


def test_a_refused_stream_keeps_its_status(
    gateway: LiveServer, fake: tuple[FakeUpstream, ThreadedServer]
) -> None:
    fake[0].answer((429, {"retry-after": "30"}, error_body("Rate limit", "requests", None, "rate_limit_exceeded")))
    with pytest.raises(openai.RateLimitError) as info:
        edit(gateway, stream=True)
    assert info.value.response.headers["retry-after"] == "30"
    assert info.value.code == "rate_limit_exceeded"


@pytest.mark.parametrize(
    "link",
    ["{image_host}/img", "http://169.254.169.254/latest/meta-data/", "file:///etc/passwd",
     "{upstream}/files/redirect?to=http://10.0.0.1/a.png",
     "{upstream}/files/redirect?to={image_host}/img"],
)  # fmt: skip
def test_mirroring_refuses_private_links_and_redirects_to_them(
    gateway: LiveServer, fake: tuple[FakeUpstream, ThreadedServer], link: str
) -> None:
    """The upstream's own origin may be loopback; other loopback ports, private and metadata
    addresses may not, directly or through a redirect from the upstream."""
    host = ImageHost(IMAGE)
    with ThreadedServer(host.app) as image_host:
        url = link.format(image_host=image_host.url, upstream=fake[1].url)
        fake[0].answer((200, {}, json.dumps({"created": 1, "data": [{"url": url}]}).encode()))
        envelope(raw(gateway), 502, "upstream_mirror_failed")
    assert host.hosts == []  # never contacted


def test_a_full_local_engine_overflows_to_the_upstream(
    gateway: LiveServer, fake: tuple[FakeUpstream, ThreadedServer]
) -> None:
    """``local`` (one worker, no queue) lists ``fake`` as overflow; ``alone`` has none."""
    fake[0].answer((200, {}, OK))
    workers = gateway.services.workers
    results: list[Any] = []
    threads = [threading.Thread(target=lambda m=m: results.append(edit(gateway, model=m)))
               for m in ("local", "alone")]  # fmt: skip
    for thread in threads:
        thread.start()
    wait_until(lambda: workers["local"].running == 1 and workers["alone"].running == 1)
    overflowed = raw(gateway, model="local")
    assert overflowed.content == OK  # the upstream's answer, not a 429
    assert len(fake[0].received) == 1
    assert fake[0].received[0]["fields"]["model"] == "gpt-image-1.5"
    envelope(raw(gateway, model="alone"), 429, "queue_full")
    for thread in threads:
        thread.join(30)
    assert len(results) == 2
    for result in results:  # the local engines' own images
        assert result.data[0].b64_json != "iVBORw0KGgo="


def test_upstream_stream_frames_and_its_error_event_pass_through(
    gateway: LiveServer, fake: tuple[FakeUpstream, ThreadedServer]
) -> None:
    """Frames go out byte for byte (data-only ones included); an upstream ``error`` event
    reaches the SDK as an APIError, and the ledger says 502."""
    partial = b'data: {"type":"image_edit.partial_image","b64_json":"QUJD","partial_image_index":0}\n\n'
    failure = (b'event: error\ndata: {"type":"error","error":{"message":"upstream broke",'
               b'"type":"server_error","param":null,"code":"engine_error"}}\n\n')  # fmt: skip
    fake[0].answer((200, {}, partial + failure, "text/event-stream"))
    with httpx.stream(
        "POST", f"{gateway.url}/v1/images/edits", files={"image": ("a.png", IMAGE, "image/png")},
        data={"model": "fake", "prompt": "x", "stream": "true", "partial_images": "1"}, timeout=30,
    ) as response:  # fmt: skip
        assert response.status_code == 200
        assert response.read() == partial + failure
    assert fake[0].received[-1]["fields"]["stream"] == "true"
    wait_until(lambda: gateway.services.gate.records[-1].status == 502)
    fake[0].answer((200, {}, partial + failure, "text/event-stream"))
    with pytest.raises(openai.APIError) as info:
        list(edit(gateway, stream=True, partial_images=1))
    assert "upstream broke" in str(info.value)


def test_json_image_urls_are_fetched_then_relayed(
    gateway: LiveServer, fake: tuple[FakeUpstream, ThreadedServer]
) -> None:
    """The gateway fetches an allowed URL itself and relays the bytes; the upstream never
    sees the URL. (``fetch.allow_networks`` is empty here, so loopback is refused first.)"""
    host = ImageHost(IMAGE)
    with ThreadedServer(host.app) as image_host:
        fake[0].answer((200, {}, OK))
        doc = {"model": "fake", "prompt": "x", "images": [{"image_url": f"{image_host.url}/img"}]}
        response = httpx.post(f"{gateway.url}/v1/images/edits", json=doc, timeout=30)
    envelope(response, 400, "invalid_image_url")
    assert fake[0].received == []
    assert host.hosts == []


def test_relays_are_listed_as_models(gateway: LiveServer) -> None:
    models = {m.id: m for m in gateway.sdk().models.list()}
    assert models["fake"].owned_by == "retouch:upstream"
    assert models["local"].owned_by == "retouch:echo"
    ready = httpx.get(f"{gateway.url}/readyz", timeout=10).json()
    assert ready["models"]["fake"]["capacity"] == 16
