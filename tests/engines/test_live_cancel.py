"""A client that drops a streaming edit mid-way stops the denoising loop (real socket, uvicorn)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
import uvicorn

from retouch.api.server import server_config
from retouch.bootstrap import build_app
from retouch.config import Settings
from retouch.scheduler import JobProgress, LocalBackend
from tests.engines.conftest import KLEIN_OPTIONS, model
from tests.engines.helpers import png
from tests.waiting import async_wait_until, wait_until

pytestmark = [pytest.mark.anyio, pytest.mark.torch, pytest.mark.live]

STEPS = 8


class LiveServer:
    """uvicorn on 127.0.0.1, port 0, in a thread of this process (the engine stays inspectable)."""

    def __init__(self, settings: Settings) -> None:
        self.app = build_app(settings)
        # the production server configuration (retouch serve), on a free loopback port
        config = server_config(self.app, settings, host="127.0.0.1", port=0, log_level="warning")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, name="uvicorn", daemon=True)

    def __enter__(self) -> LiveServer:
        self.thread.start()

        def started() -> bool:
            if not self.thread.is_alive():
                raise RuntimeError("uvicorn did not start")
            return bool(self.server.started)

        wait_until(started, timeout=120)
        return self

    @property
    def url(self) -> str:
        host, port = self.server.servers[0].sockets[0].getsockname()[:2]
        return f"http://{host}:{port}/v1"

    def worker(self, name: str) -> LocalBackend:
        worker: LocalBackend = self.app.state.services.workers[name]
        return worker

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(30)


@pytest.fixture
def live_klein(make_settings: Callable[..., Settings], klein_weights: Path) -> Iterator[LiveServer]:
    settings = make_settings(
        models=[model("klein", "flux2-klein", klein_weights, {**KLEIN_OPTIONS, "steps": STEPS})]
    )
    with LiveServer(settings) as server:
        yield server


@pytest.fixture
def cancel_seen(monkeypatch: pytest.MonkeyPatch) -> threading.Event:
    """Set when the server cancels a job (the scheduler's ``JobProgress.cancel``)."""
    seen = threading.Event()
    cancel = JobProgress.cancel

    def cancel_and_signal(self: JobProgress) -> None:
        cancel(self)
        seen.set()

    monkeypatch.setattr(JobProgress, "cancel", cancel_and_signal)
    return seen


async def test_disconnect_stops_the_engine_at_the_next_step(
    live_klein: LiveServer, gate: Callable[..., Any], cancel_seen: threading.Event
) -> None:
    worker = live_klein.worker("klein")
    engine = worker.engine
    # Step 3 waits until the server has cancelled the job, so the outcome does not depend on
    # how fast the disconnect travels; without cancellation it would go on to step 8.
    held = gate(engine.pipe.transformer, hold_from=3)
    held.release = cancel_seen

    client = openai.AsyncOpenAI(api_key="sk-test", base_url=live_klein.url, max_retries=0)
    stream = await client.images.edit(
        model="klein", image=png(), prompt="x", stream=True, partial_images=3
    )
    async for event in stream:
        assert event.type == "image_edit.partial_image"  # after step 2 of 8
        break
    await stream.close()  # drops the connection mid-stream

    assert await asyncio.to_thread(cancel_seen.wait, 30)
    # the engine thread finishes its current step, then stops
    await async_wait_until(lambda: worker.running == 0, timeout=30)
    assert worker.running == 0
    assert engine.cancelled_runs == 1
    # Cancelled before step 3 began (2 steps) or while it was held (3): steps 4-8 never ran.
    assert held.calls == engine.steps_run
    assert 2 <= engine.steps_run <= 3
    await client.close()


async def test_a_client_that_gives_up_on_a_plain_request_frees_the_model(
    live_klein: LiveServer, gate: Callable[..., Any], cancel_seen: threading.Event
) -> None:
    worker = live_klein.worker("klein")
    held = gate(worker.engine.pipe.transformer, hold_from=1)
    held.release = cancel_seen  # step 1 runs only once the server has cancelled the job

    impatient = openai.AsyncOpenAI(
        api_key="sk-test", base_url=live_klein.url, max_retries=0, timeout=1.0
    )
    with pytest.raises(openai.APITimeoutError):
        await impatient.images.edit(model="klein", image=png(), prompt="x")
    assert await asyncio.to_thread(cancel_seen.wait, 30)
    await async_wait_until(lambda: worker.running == 0, timeout=30)
    assert worker.engine.cancelled_runs == 1
    assert worker.engine.steps_run == 1  # stopped after the step that was in flight
    # The model is free again: the next request is served in full.
    client = openai.AsyncOpenAI(api_key="sk-test", base_url=live_klein.url, max_retries=0)
    result = await client.images.edit(model="klein", image=png(), prompt="x")
    assert len(result.data) == 1
    assert worker.engine.steps_run == 1 + STEPS
    await impatient.close()
    await client.close()
