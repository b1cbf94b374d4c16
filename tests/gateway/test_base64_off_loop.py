"""The gateway advice on our own side: base64 of image payloads never runs on the event loop.

Every pybase64 and stdlib base64 entry point is wrapped to note the thread it ran on; large
payloads (data URLs in, b64_json out, streamed partials) must all have been handled elsewhere.
"""

from __future__ import annotations

import base64
import threading
from collections.abc import Callable
from typing import Any

import numpy as np
import pybase64
import pytest

from retouch.config import Settings
from tests.conftest import Harness, echo_models, encode_image

pytestmark = pytest.mark.anyio
LARGE = 64 * 1024


@pytest.fixture
def calls(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, int, int]]:
    """(function, payload size, thread id) of every base64 call."""
    seen: list[tuple[str, int, int]] = []

    def wrap(module: Any, name: str) -> None:
        original: Callable[..., Any] = getattr(module, name)

        def spy(data: Any, *args: Any, **kwargs: Any) -> Any:
            seen.append((f"{module.__name__}.{name}", len(data), threading.get_ident()))
            return original(data, *args, **kwargs)

        monkeypatch.setattr(module, name, spy)

    for name in ("b64decode", "b64encode", "standard_b64decode", "standard_b64encode",
                 "b64encode_as_string", "decodebytes", "encodebytes"):  # fmt: skip
        for module in (pybase64, base64):
            if hasattr(module, name):
                wrap(module, name)
    return seen


async def test_large_base64_work_is_off_the_event_loop(
    calls: list[tuple[str, int, int]],
    harness_factory: Callable[..., Any],
    make_settings: Callable[..., Settings],
) -> None:
    loop_thread = threading.get_ident()
    harness: Harness = await harness_factory(make_settings(models=echo_models(steps=4)))
    noise = np.random.default_rng(0).integers(0, 255, (256, 256, 3), dtype=np.uint8)
    image = encode_image(noise)
    assert len(image) > LARGE
    url = "data:image/png;base64," + pybase64.b64encode(image).decode()
    doc = {"model": "echo", "prompt": "keep", "images": [{"image_url": url}]}
    calls.clear()
    response = await harness.http.post("/v1/images/edits", json=doc)
    assert response.status_code == 200, response.text
    async with harness.http.stream(
        "POST", "/v1/images/edits", json={**doc, "stream": True, "partial_images": 2}
    ) as stream:
        events = [line async for line in stream.aiter_lines() if line.startswith("event:")]
    assert events.count("event: image_edit.partial_image") == 2
    # a data URL decode per request, an encode per output and per partial
    assert len(calls) >= 6
    assert sum(size >= LARGE for _, size, _ in calls) >= 4
    on_loop = [(name, size) for name, size, thread in calls if thread == loop_thread]
    assert on_loop == []
