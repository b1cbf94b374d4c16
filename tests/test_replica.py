"""The Serve replica class on its own (no cluster): a cancelled job gives its slot back only
once the engine thread has stopped, with and without partial images (tests/cluster checks the
same through a real cluster, from a client's hang-up)."""

from __future__ import annotations

import asyncio
import logging
import time

import numpy as np
import pytest

from retouch.engine.types import EditJob

pytest.importorskip("ray.serve")  # (its import warns about pydantic; importorskip mutes that)
from retouch.cluster.replica import EngineReplica


def job(partial_images: int) -> EditJob:
    pixels = np.zeros((16, 16, 3), np.uint8)
    return EditJob(prompt="x", images=(pixels,), mask=None, size=(16, 16), n=1, quality="high",
                   input_fidelity="low", background="auto", partial_images=partial_images)  # fmt: skip


def replica(delay_s: float, steps: int) -> EngineReplica:
    return EngineReplica({"name": "echo", "engine": "echo", "options": {"delay_s": delay_s, "steps": steps}})


@pytest.mark.parametrize("partial_images", [0, 2])
def test_a_cancelled_job_returns_once_its_engine_thread_has_stopped(
    partial_images: int, caplog: pytest.LogCaptureFixture
) -> None:
    r = replica(delay_s=4.0, steps=40)  # 100 ms a step: the thread is asleep when cancelled

    async def scenario() -> None:
        stream = r.stream(job(partial_images), "req-7", None)
        kind, name = await stream.__anext__()
        assert (kind, name.split("@")[0]) == ("start", "local")
        rest = asyncio.ensure_future(stream.__anext__())
        deadline = time.monotonic() + 10
        while r.engine.runs == 0:  # type: ignore[attr-defined]
            assert time.monotonic() < deadline, "the engine never started"
            await asyncio.sleep(0.01)
        rest.cancel()  # what Serve does when the front cancels the call
        with pytest.raises(asyncio.CancelledError):
            await rest
        # Without the wait, the cancellation would arrive while the thread still sleeps.
        assert r.engine.cancelled_runs == 1  # type: ignore[attr-defined]

    with caplog.at_level(logging.INFO, logger="retouch.cluster.replica"):
        asyncio.run(scenario())
    assert "request req-7 cancelled; its engine thread has stopped" in caplog.text


@pytest.mark.parametrize("partial_images", [0, 2])
def test_a_job_streams_start_partials_and_final(partial_images: int) -> None:
    r = replica(delay_s=0.0, steps=4)

    async def items() -> list[str]:
        return [kind async for kind, _ in r.stream(job(partial_images), None, None)]

    assert asyncio.run(items()) == ["start", *["partial"] * partial_images, "final"]
