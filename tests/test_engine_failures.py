"""An engine that fails answers 500 in OpenAI's envelope; the worker stays healthy."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import openai
import pytest

from retouch.config import Settings
from retouch.engine.echo import EchoEngine
from retouch.engine.types import EditJob, EditOutput, Progress
from tests.conftest import echo_models, encode_image, gradient

pytestmark = pytest.mark.anyio
SRC = encode_image(gradient((32, 32)))


class FlakyEngine(EchoEngine):
    """Fails on prompts that say so; works otherwise."""

    def run(self, job: EditJob, progress: Progress) -> EditOutput:
        if "explode" in job.prompt:
            raise MemoryError("CUDA out of memory (simulated)")
        return super().run(job, progress)


async def test_engine_exception_is_500_and_the_next_request_works(
    harness_factory: Callable[..., Any], make_settings: Callable[..., Settings]
) -> None:
    engine = FlakyEngine("echo")
    h = await harness_factory(make_settings(models=echo_models()), engines={"echo": engine})
    with pytest.raises(openai.InternalServerError) as info:
        await h.sdk.images.edit(model="echo", image=("a.png", SRC, "image/png"), prompt="explode")
    assert info.value.code == "engine_error"
    assert info.value.body["type"] == "server_error"  # type: ignore[index]
    assert info.value.response.headers["x-request-id"].startswith("req_")
    ok = await h.sdk.images.edit(model="echo", image=("a.png", SRC, "image/png"), prompt="fine")
    assert ok.data[0].b64_json
    worker = h.services.workers["echo"]
    assert (worker.running, worker.admitted) == (0, 0)
    assert [r.status for r in h.services.gate.records] == [500, 200]


async def test_engine_exception_while_streaming_is_an_error_event(
    harness_factory: Callable[..., Any], make_settings: Callable[..., Settings]
) -> None:
    h = await harness_factory(make_settings(models=echo_models()), engines={"echo": FlakyEngine("echo")})
    stream = await h.sdk.images.edit(
        model="echo", image=("a.png", SRC, "image/png"), prompt="explode", stream=True
    )
    with pytest.raises(openai.APIError, match="engine failed"):
        async for _ in stream:
            pass
