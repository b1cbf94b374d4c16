"""JSON edits whose ``image_url`` is an http(s) URL: fetched SSRF-safe within the byte and
pixel caps, errors naming ``images[N].image_url``, and a setting that turns URL inputs off."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pytest

from retouch.config import Settings
from tests.conftest import Harness, decode_b64, echo_models, encode_image, gradient, mask_bytes
from tests.gateway.hosts import ImageHost, ThreadedServer
from tests.test_contract_edits import RecordingEcho, assert_envelope

pytestmark = pytest.mark.anyio
PIXELS = gradient((48, 32))
IMAGE = encode_image(PIXELS)


@pytest.fixture(scope="module")
def host() -> Iterator[tuple[ImageHost, ThreadedServer]]:
    image_host = ImageHost(IMAGE)
    with ThreadedServer(image_host.app) as server:
        yield image_host, server


@pytest.fixture
def start(
    harness_factory: Callable[..., Any], make_settings: Callable[..., Settings]
) -> Callable[..., Any]:
    """A harness whose fetcher may reach loopback (where the test image host lives) unless
    ``allow_loopback=False``; other settings as keyword groups."""

    async def make(allow_loopback: bool = True, engine: Any = None, **groups: Any) -> Harness:
        fetch = dict(groups.pop("fetch", {}))
        if allow_loopback:
            fetch.setdefault("allow_networks", ["127.0.0.0/8", "::1/128"])
        settings = make_settings(models=echo_models(), fetch=fetch, **groups)
        engines = {"echo": engine} if engine is not None else None
        harness: Harness = await harness_factory(settings, engines=engines)
        return harness

    return make


def body(*urls: str, **fields: Any) -> dict[str, Any]:
    return {"model": "echo", "prompt": "keep it", "images": [{"image_url": u} for u in urls], **fields}


async def test_fetched_image_reaches_the_engine(
    start: Callable[..., Any], host: tuple[ImageHost, ThreadedServer]
) -> None:
    harness = await start()
    response = await harness.http.post("/v1/images/edits", json=body(f"{host[1].url}/img"))
    assert response.status_code == 200, response.text
    out = np.asarray(decode_b64(response.json()["data"][0]["b64_json"]).convert("RGB"))
    assert np.array_equal(out, PIXELS)


async def test_urls_data_urls_and_a_mask_url_mix(
    start: Callable[..., Any], host: tuple[ImageHost, ThreadedServer]
) -> None:
    engine = RecordingEcho()
    harness = await start(engine=engine)
    data_url = "data:image/png;base64," + base64.b64encode(encode_image(PIXELS[::-1])).decode()
    mask_host = ImageHost(mask_bytes((48, 32), (0, 0, 8, 8)))
    with ThreadedServer(mask_host.app) as masks:
        doc = body(f"{host[1].url}/img", data_url, f"{host[1].url}/redirect?to=/img")
        doc["mask"] = {"image_url": f"{masks.url}/img"}
        response = await harness.http.post("/v1/images/edits", json=doc)
    assert response.status_code == 200, response.text
    job = engine.jobs[-1]
    assert len(job.images) == 3
    assert np.array_equal(job.images[0], PIXELS)
    assert np.array_equal(job.images[1], PIXELS[::-1])
    assert np.array_equal(job.images[2], PIXELS)
    assert job.mask is not None
    assert job.mask[0, 0] == 255  # alpha 0 -> editable
    assert job.mask[-1, -1] == 0


async def test_loopback_is_refused_by_default(
    start: Callable[..., Any], host: tuple[ImageHost, ThreadedServer]
) -> None:
    harness = await start(allow_loopback=False)
    ok = "data:image/png;base64," + base64.b64encode(IMAGE).decode()
    for url in [f"{host[1].url}/img", f"http://localhost:{host[1].port}/img",
                "http://169.254.169.254/latest/meta-data/iam/", "http://[::1]/x.png"]:  # fmt: skip
        response = await harness.http.post("/v1/images/edits", json=body(ok, url))
        assert_envelope(response, 400, param="images[1].image_url", code="invalid_image_url")
        assert "public" in response.json()["error"]["message"]


async def test_redirect_to_a_private_address_is_refused(
    start: Callable[..., Any], host: tuple[ImageHost, ThreadedServer]
) -> None:
    """The host itself is allowed here (an operator's allow_networks); the metadata address
    it redirects to is not."""
    harness = await start(fetch={"allow_networks": ["127.0.0.0/8"]})
    url = f"{host[1].url}/redirect?to=http://169.254.169.254/latest/meta-data/"
    response = await harness.http.post("/v1/images/edits", json=body(url))
    assert_envelope(response, 400, param="images[0].image_url", code="invalid_image_url")


async def test_url_inputs_can_be_turned_off(
    start: Callable[..., Any], host: tuple[ImageHost, ThreadedServer]
) -> None:
    image_host, server = host
    seen = len(image_host.hosts)
    harness = await start(fetch={"image_urls": False})
    response = await harness.http.post("/v1/images/edits", json=body(f"{server.url}/img"))
    assert_envelope(response, 400, param="images[0].image_url", code="unsupported_image_url")
    assert len(image_host.hosts) == seen  # nothing was fetched


async def test_byte_caps_apply_to_fetched_images(
    start: Callable[..., Any], host: tuple[ImageHost, ThreadedServer]
) -> None:
    url = f"{host[1].url}/img"
    harness = await start(limits={"max_image_bytes": len(IMAGE) - 1})
    response = await harness.http.post("/v1/images/edits", json=body(url))
    assert_envelope(response, 413, param="images[0].image_url", code="file_too_large")
    big = await start(limits={"max_image_bytes": 10_000_000})
    response = await big.http.post("/v1/images/edits", json=body(f"{host[1].url}/big"))
    assert_envelope(response, 400, param="images[0]", code="invalid_image_file")  # not an image


async def test_fetched_bytes_count_against_the_request_budget(
    start: Callable[..., Any], host: tuple[ImageHost, ThreadedServer]
) -> None:
    """Three fetched images fit their file cap each but not the body budget together."""
    url = f"{host[1].url}/img"
    harness = await start(limits={"max_body_bytes": 2 * len(IMAGE) + 400})
    response = await harness.http.post("/v1/images/edits", json=body(url, url, url))
    assert response.status_code == 413, response.text
    assert response.json()["error"]["code"] == "request_too_large"
    assert response.json()["error"]["param"].endswith(".image_url")


async def test_pixel_caps_apply_to_fetched_images(
    start: Callable[..., Any], host: tuple[ImageHost, ThreadedServer]
) -> None:
    harness = await start(limits={"max_image_pixels": 48 * 32 - 1})
    response = await harness.http.post("/v1/images/edits", json=body(f"{host[1].url}/img"))
    assert response.status_code in (400, 413), response.text
    assert response.json()["error"]["param"] == "images[0]"


async def test_upstream_errors_and_slow_hosts_are_400s(
    start: Callable[..., Any], host: tuple[ImageHost, ThreadedServer]
) -> None:
    harness = await start(fetch={"allow_networks": ["127.0.0.0/8"], "timeout_s": 0.5})
    response = await harness.http.post("/v1/images/edits", json=body(f"{host[1].url}/status/404"))
    assert_envelope(response, 400, param="images[0].image_url", code="invalid_image_url")
    assert "404" in response.json()["error"]["message"]
    response = await harness.http.post("/v1/images/edits", json=body(f"{host[1].url}/drip"))
    assert_envelope(response, 400, param="images[0].image_url", code="image_url_timeout")


async def test_a_slow_fetch_does_not_block_other_requests(
    start: Callable[..., Any], host: tuple[ImageHost, ThreadedServer]
) -> None:
    harness = await start(fetch={"allow_networks": ["127.0.0.0/8"], "timeout_s": 1.5})
    slow = asyncio.ensure_future(
        harness.http.post("/v1/images/edits", json=body(f"{host[1].url}/slow-headers"))
    )
    await asyncio.sleep(0.2)
    for _ in range(3):
        assert (await harness.http.get("/healthz")).status_code == 200
    assert not slow.done()
    response = await slow
    assert_envelope(response, 400, param="images[0].image_url", code="image_url_timeout")


async def test_a_relay_gets_the_fetched_bytes_not_the_url(
    harness_factory: Callable[..., Any], make_settings: Callable[..., Settings],
    host: tuple[ImageHost, ThreadedServer],
) -> None:  # fmt: skip
    from retouch.config import ModelSettings, UpstreamSettings
    from tests.gateway.hosts import FakeUpstream
    from tests.gateway.test_relay_errors import OK

    upstream = FakeUpstream()
    upstream.answer((200, {}, OK))
    with ThreadedServer(upstream.app) as server:
        relay = ModelSettings(
            name="relay", engine="upstream", upstream=UpstreamSettings(base_url=f"{server.url}/v1")
        )
        settings = make_settings(models=[relay], fetch={"allow_networks": ["127.0.0.0/8"]})
        harness: Harness = await harness_factory(settings)
        doc = body(f"{host[1].url}/img", f"{host[1].url}/redirect?to=/img")
        doc["model"] = "relay"
        response = await harness.http.post("/v1/images/edits", json=doc)
    assert response.status_code == 200, response.text
    assert response.content == OK
    got = upstream.received[-1]
    assert [(name, data) for name, data, _ in got["files"]] == [("image[]", IMAGE), ("image[]", IMAGE)]
    assert got["fields"] == {"model": "relay", "prompt": "keep it"}
