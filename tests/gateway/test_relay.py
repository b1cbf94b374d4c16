"""The ``upstream`` relay against a real second ``retouch serve`` (a separate process), through
the official SDK over real sockets: what comes back is what the upstream sent."""

from __future__ import annotations

import base64
import io
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import httpx2
import numpy as np
import openai
import pytest
from PIL import Image

from retouch.config import ModelSettings, UpstreamSettings, load_settings
from tests.conftest import encode_image, gradient, mask_bytes
from tests.gateway.processes import RetouchUpstream
from tests.live import LiveServer

pytestmark = pytest.mark.live
PIXELS = gradient((64, 48))
IMAGE = encode_image(PIXELS)
OTHER = encode_image(gradient((32, 32))[::-1])


def relay(name: str, base: str, **upstream: Any) -> ModelSettings:
    return ModelSettings(
        name=name, engine="upstream", upstream=UpstreamSettings(base_url=f"{base}/v1", **upstream)
    )


@pytest.fixture(scope="module")
def upstream(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RetouchUpstream]:
    process = RetouchUpstream(tmp_path_factory.mktemp("upstream")).wait_ready()
    yield process
    process.stop()


@pytest.fixture(scope="module")
def gateway(upstream: RetouchUpstream, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    models = [relay("echo", upstream.url), relay("slow", upstream.url, model="slow"),
              relay("stepped", upstream.url, model="stepped")]  # fmt: skip
    settings = load_settings(None, data_dir=tmp_path_factory.mktemp("gateway") / "data", models=models)
    with LiveServer(settings) as server:
        yield server


def direct(upstream: RetouchUpstream) -> openai.OpenAI:
    return openai.OpenAI(
        base_url=f"{upstream.url}/v1", api_key="sk-x", max_retries=0,
        http_client=httpx2.Client(timeout=30),
    )  # fmt: skip


def comparable(doc: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in doc.items() if k != "created"}


def pixels(b64: str) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(b64))).convert("RGB"))


@pytest.mark.parametrize(
    "kwargs",
    [
        {"image": ("a.png", IMAGE, "image/png")},
        {"image": [("a.png", IMAGE, "image/png"), ("b.png", OTHER, "image/png")]},
        {"image": ("a.png", IMAGE, "image/png"),
         "mask": ("m.png", mask_bytes((64, 48), (0, 0, 16, 16)), "image/png")},
        {"image": ("a.png", IMAGE, "image/png"), "n": 2, "quality": "low", "size": "32x24",
         "output_format": "webp", "output_compression": 50, "user": "u-1"},
    ],
    ids=["plain", "multi-image", "mask", "options"],
)  # fmt: skip
def test_edit_comes_back_as_the_upstream_sent_it(
    gateway: LiveServer, upstream: RetouchUpstream, kwargs: dict[str, Any]
) -> None:
    via = gateway.sdk().images.edit(model="echo", prompt="keep it", **kwargs)
    same = direct(upstream).images.edit(model="echo", prompt="keep it", **kwargs)
    assert comparable(via.model_dump()) == comparable(same.model_dump())
    assert via.usage is not None
    assert via.data
    if "size" not in kwargs:
        assert np.array_equal(pixels(via.data[0].b64_json or ""), PIXELS)
    record = gateway.services.gate.records[-1]
    assert record.status == 200
    assert record.output_tokens == via.usage.output_tokens
    assert record.image_tokens == via.usage.input_tokens_details.image_tokens
    assert record.text_tokens == via.usage.input_tokens_details.text_tokens
    assert record.output_images == len(via.data)


def test_generation_comes_back_as_the_upstream_sent_it(
    gateway: LiveServer, upstream: RetouchUpstream
) -> None:
    """``/v1/images/generations`` relays to the upstream's generations route (JSON), and the
    ledger records the upstream's usage for the caller."""
    kwargs: dict[str, Any] = {"prompt": "a lighthouse", "size": "64x48", "n": 2}
    via = gateway.sdk().images.generate(model="echo", **kwargs)
    same = direct(upstream).images.generate(model="echo", **kwargs)
    assert comparable(via.model_dump()) == comparable(same.model_dump())
    assert len(via.data or []) == 2
    assert via.usage is not None
    record = gateway.services.gate.records[-1]
    assert record.status == 200
    assert record.output_images == 2
    assert record.output_tokens == via.usage.output_tokens


def test_streamed_generation_relays_generation_events(
    gateway: LiveServer, upstream: RetouchUpstream
) -> None:
    stream = gateway.sdk().images.generate(
        model="stepped", prompt="a lighthouse", size="64x48", stream=True, partial_images=2
    )
    kinds = [event.type for event in stream]
    assert kinds[-1] == "image_generation.completed"
    assert set(kinds) <= {"image_generation.partial_image", "image_generation.completed"}


def test_openai_names_pass_on_as_sent(gateway: LiveServer, upstream: RetouchUpstream) -> None:
    """``gpt-image-1`` is served by the gateway's default model, a relay without a model
    name of its own: the upstream gets ``gpt-image-1`` and applies that family's rules."""
    sdk = gateway.sdk()
    result = sdk.images.edit(model="gpt-image-1", image=("a.png", IMAGE, "image/png"), prompt="x")
    assert result.size == "1536x1024"  # gpt-image auto size, resolved upstream
    with pytest.raises(openai.BadRequestError) as info:
        sdk.images.edit(model="gpt-image-1", image=("a.png", IMAGE, "image/png"), prompt="x",
                        size="100x100")  # fmt: skip
    assert info.value.code == "invalid_value"
    assert info.value.param == "size"


def test_streaming_relays_partials_as_they_arrive(
    gateway: LiveServer, upstream: RetouchUpstream
) -> None:
    """The first partial reaches the client while the upstream is still running the edit."""
    stream = gateway.sdk().images.edit(
        model="stepped", image=("a.png", IMAGE, "image/png"), prompt="x", stream=True,
        partial_images=2,
    )  # fmt: skip
    kinds: list[str] = []
    running_at_first_partial = None
    for event in stream:
        if event.type == "image_edit.partial_image" and running_at_first_partial is None:
            running_at_first_partial = upstream.ready()["models"]["stepped"]["running"]
        kinds.append(event.type)
        if event.type == "image_edit.completed":
            assert event.usage.output_tokens > 0
            assert np.array_equal(pixels(event.b64_json), PIXELS)
    assert kinds == ["image_edit.partial_image"] * 2 + ["image_edit.completed"]
    assert running_at_first_partial == 1
    record = gateway.services.gate.records[-1]
    assert record.status == 200
    assert record.output_tokens > 0


def wait_until(check: Any, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.05)
    raise AssertionError("condition not reached in time")


def slow_running(upstream: RetouchUpstream) -> int:
    running: int = upstream.ready()["models"]["slow"]["running"]
    return running


def test_client_disconnect_cancels_the_upstream_request(
    gateway: LiveServer, upstream: RetouchUpstream
) -> None:
    """The upstream's ``slow`` edit takes 30 s; a client that gives up after it started
    closes the relay's upstream connection, and the upstream stops its engine."""
    sdk = gateway.sdk(timeout=httpx2.Timeout(30))
    failures: list[BaseException] = []

    def call() -> None:
        try:
            sdk.with_options(timeout=2.5).images.edit(
                model="slow", image=("a.png", IMAGE, "image/png"), prompt="x"
            )
        except openai.APITimeoutError as exc:
            failures.append(exc)

    thread = threading.Thread(target=call)
    thread.start()
    wait_until(lambda: slow_running(upstream) == 1)
    thread.join(15)
    assert failures  # the client gave up
    wait_until(lambda: slow_running(upstream) == 0)  # long before the 30 s
    wait_until(lambda: gateway.services.gate.records[-1].status == 499)


def test_stream_disconnect_cancels_the_upstream_request(
    gateway: LiveServer, upstream: RetouchUpstream
) -> None:
    with httpx.Client(timeout=30) as client, client.stream(
        "POST", f"{gateway.url}/v1/images/edits",
        files={"image": ("a.png", IMAGE, "image/png")},
        data={"model": "slow", "prompt": "x", "stream": "true"},
    ) as response:  # fmt: skip
        assert response.status_code == 200
        wait_until(lambda: slow_running(upstream) == 1)
    wait_until(lambda: slow_running(upstream) == 0)
    wait_until(lambda: gateway.services.gate.records[-1].status == 499)


def test_dall_e_2_links_are_mirrored_and_outlive_the_upstream(tmp_path: Path) -> None:
    own = RetouchUpstream(tmp_path / "up").wait_ready()
    try:
        settings = load_settings(None, data_dir=tmp_path / "gw", models=[relay("echo", own.url)])
        with LiveServer(settings) as gw:
            rgba = np.zeros((32, 32, 4), np.uint8)
            rgba[..., 0] = 200
            rgba[8:, :, 3] = 255  # the transparent top rows are the area to edit
            square = encode_image(rgba)
            result = gw.sdk().images.edit(
                model="dall-e-2", image=("a.png", square, "image/png"), prompt="x", n=2,
                size="256x256", response_format="url",
            )  # fmt: skip
            links = [d.url or "" for d in result.data]
            assert len(links) == 2
            assert all(link.startswith(f"{gw.url}/v1/blobs/") for link in links)
            own.stop()
            for link in links:
                got = httpx.get(link, timeout=10)
                assert got.status_code == 200
                assert got.headers["content-type"] == "image/png"
                assert Image.open(io.BytesIO(got.content)).size == (256, 256)
    finally:
        own.stop()
