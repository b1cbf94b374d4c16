"""``LocalBackend``: admission, the cancellation race, the run deadline, wedged engines, close."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable

import numpy as np
import pytest

from retouch.engine.echo import EchoEngine
from retouch.engine.types import EditJob, EditOutput, EngineInfo, Progress
from retouch.errors import EngineFailed, QueueFull, QueueTimeout, RunTimeout
from retouch.scheduler import Backend, LocalBackend

pytestmark = pytest.mark.anyio

JOB = EditJob(
    prompt="x", images=(np.zeros((8, 8, 3), np.uint8),), mask=None, size=(8, 8), n=1,
    quality="low", input_fidelity="low", background="auto", partial_images=0,
)  # fmt: skip


class StubbornEngine:
    """Runs until ``release`` is set, ignoring cancellation (a wedged driver call)."""

    def __init__(self) -> None:
        self.info = EngineInfo(name="stubborn", description="ignores cancellation")
        self.release = threading.Event()
        self.started = threading.Event()
        self.running = False
        self.closed_while_running = False
        self.closed = False

    def load(self) -> None:
        return None

    def check(self, job: EditJob) -> None:
        return None

    def run(self, job: EditJob, progress: Progress) -> EditOutput:
        self.running = True
        self.started.set()
        self.release.wait(30)
        self.running = False
        return EditOutput(images=[job.images[0]])

    def close(self) -> None:
        self.closed = True
        self.closed_while_running = self.running


async def eventually(predicate: Callable[[], bool], timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.01)
    return True


def later(seconds: float = 30.0) -> float:
    return time.monotonic() + seconds


async def test_the_backend_satisfies_the_protocol() -> None:
    backend = LocalBackend(EchoEngine(), workers=1, max_queue=0)
    assert isinstance(backend, Backend)
    await backend.close()


async def test_a_full_queue_refuses_at_once_with_retry_after() -> None:
    backend = LocalBackend(EchoEngine(), workers=1, max_queue=1)
    tickets = [backend.admit(), backend.admit()]
    with pytest.raises(QueueFull) as info:
        backend.admit()
    assert int(info.value.headers["retry-after"]) >= 1
    assert int(info.value.headers["retry-after-ms"]) >= 1
    tickets[0].release()
    tickets[0].release()  # idempotent
    assert backend.admitted == 1
    backend.admit()  # room again
    await backend.close()


async def test_a_cancel_arriving_as_the_slot_is_granted_never_starts_the_engine() -> None:
    engine = EchoEngine()
    backend = LocalBackend(engine, workers=1, max_queue=1)
    await backend._slots.acquire()  # someone else holds the only slot
    ticket = backend.admit()
    waiting = asyncio.ensure_future(backend.run(JOB, ticket, deadline=later()))
    for _ in range(5):
        await asyncio.sleep(0)
    assert not waiting.done()
    backend._slots.release()  # the slot frees up ...
    waiting.cancel()  # ... and the client leaves in the same loop iteration
    with pytest.raises(asyncio.CancelledError):
        await waiting
    ticket.release()
    assert engine.runs == 0
    assert backend.running == 0
    # The slot was not lost: the next job gets it at once.
    again = backend.admit()
    await backend.run(JOB, again, deadline=later(5))
    assert engine.runs == 1
    await backend.close()


async def test_the_queue_deadline_is_504_without_touching_the_engine() -> None:
    engine = EchoEngine()
    backend = LocalBackend(engine, workers=1, max_queue=1)
    await backend._slots.acquire()
    with pytest.raises(QueueTimeout):
        await backend.run(JOB, backend.admit(), deadline=time.monotonic() + 0.05)
    assert engine.runs == 0
    await backend.close()


async def test_a_job_past_its_run_deadline_is_cancelled_at_the_next_step() -> None:
    engine = EchoEngine("echo", {"delay_s": 20.0, "steps": 2000})
    backend = LocalBackend(engine, workers=1, max_queue=0, run_deadline_s=0.2)
    with pytest.raises(RunTimeout) as info:
        await backend.run(JOB, backend.admit(), deadline=later())
    assert info.value.status == 504
    assert await eventually(lambda: backend.running == 0)
    assert engine.cancelled_runs == 1
    assert backend.stats().ready
    await backend.close()


async def test_an_engine_that_ignores_cancellation_marks_the_model_not_ready() -> None:
    engine = StubbornEngine()
    backend = LocalBackend(engine, workers=1, max_queue=1, run_deadline_s=0.1, cancel_grace_s=0.2)
    ticket = backend.admit()
    with pytest.raises(RunTimeout):
        await backend.run(JOB, ticket, deadline=later())
    ticket.release()
    assert await eventually(lambda: not backend.stats().ready)
    stats = backend.stats()
    assert stats.running == 1  # the slot is still taken: capacity is not silently lost
    assert stats.reason is not None
    assert "ignored cancellation" in stats.reason
    engine.release.set()
    assert await eventually(lambda: backend.stats().ready)
    assert backend.running == 0
    await backend.close()


async def test_close_waits_for_running_threads_before_freeing_the_engine() -> None:
    engine = StubbornEngine()
    backend = LocalBackend(engine, workers=1, max_queue=0, cancel_grace_s=10)
    run = asyncio.ensure_future(backend.run(JOB, backend.admit(), deadline=later()))
    assert await asyncio.to_thread(engine.started.wait, 10)
    closing = asyncio.ensure_future(backend.close())
    await asyncio.sleep(0.1)
    assert not engine.closed
    engine.release.set()
    await closing
    assert engine.closed
    assert not engine.closed_while_running
    run.cancel()


async def test_close_does_not_free_an_engine_that_never_stops() -> None:
    engine = StubbornEngine()
    backend = LocalBackend(engine, workers=1, max_queue=0, cancel_grace_s=0.1)
    run = asyncio.ensure_future(backend.run(JOB, backend.admit(), deadline=later()))
    assert await asyncio.to_thread(engine.started.wait, 10)
    await backend.close()
    assert not engine.closed  # leaked on purpose rather than freed under a running thread
    assert not backend.stats().ready
    engine.release.set()
    run.cancel()


async def test_an_engines_own_timeout_error_is_a_failure_not_the_run_deadline() -> None:
    class TimingOut(StubbornEngine):
        def run(self, job: EditJob, progress: Progress) -> EditOutput:
            raise TimeoutError("a driver call timed out")

    backend = LocalBackend(TimingOut(), workers=1, max_queue=0, run_deadline_s=60)
    with pytest.raises(EngineFailed) as info:
        await backend.run(JOB, backend.admit(), deadline=later())
    assert info.value.status == 500
    assert await eventually(lambda: backend.running == 0)
    await backend.close()
