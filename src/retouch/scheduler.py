"""Admission and execution: one ``EngineWorker`` owns each engine.

* Admission is a counter checked on the event loop: beyond ``workers + max_queue`` requests a
  new one is refused at once with 429 and a ``Retry-After`` estimated from recent run times.
* A request waits for one of the engine's ``workers`` slots until its deadline; past it, 504,
  and the engine is never touched.
* The engine runs in the worker's own thread pool, never on the event loop. A caller that goes
  away (client disconnect) sets the job's cancel flag; the engine stops at its next step and
  the slot is released only when its thread has really finished, so a device never runs two
  jobs it was sized for one.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Protocol

from retouch.engine.types import EditJob, EditOutput, Engine, EngineInfo, Pixels
from retouch.errors import (
    Cancelled,
    EngineFailed,
    QueueFull,
    QueueTimeout,
    RetouchError,
    retry_after_headers,
)

log = logging.getLogger(__name__)

PartialSink = Callable[[Pixels, int], None]
"""Receives (image, output_index) on the event loop."""


class JobObserver(Protocol):
    """Timing hooks (metrics); implementations never raise."""

    def queue_waited(self, model: str, seconds: float) -> None: ...

    def engine_ran(self, model: str, seconds: float) -> None: ...


class EngineView(Protocol):
    @property
    def info(self) -> EngineInfo: ...

    def check(self, job: EditJob) -> None: ...


class Worker(Protocol):
    """What the edit service needs of whatever runs a model's jobs (``EngineWorker`` in this
    process, ``cluster.backend.RayBackend`` on a Ray cluster)."""

    @property
    def engine(self) -> EngineView: ...

    @property
    def saturated(self) -> bool: ...

    @property
    def running(self) -> int: ...

    @property
    def waiting(self) -> int: ...

    @property
    def admitted(self) -> int: ...

    @property
    def capacity(self) -> int: ...

    def retry_after_s(self) -> float: ...

    async def run(
        self,
        job: EditJob,
        *,
        deadline: float,
        on_partial: PartialSink | None = None,
        on_start: Callable[[str | None], None] | None = None,
    ) -> EditOutput: ...

    def close(self) -> None: ...


class JobProgress:
    """The ``Progress`` an engine sees: a cancel flag and a thread-safe partial-image outlet."""

    def __init__(
        self, loop: asyncio.AbstractEventLoop, sink: PartialSink | None, limit: int
    ) -> None:
        self._loop = loop
        self._sink = sink
        self._limit = limit
        self._sent = 0
        self._cancel = threading.Event()

    @property
    def cancelled(self) -> bool:
        return self._cancel.is_set()

    def cancel(self) -> None:
        self._cancel.set()

    def check(self) -> None:
        if self._cancel.is_set():
            raise Cancelled()

    def partial(self, image: Pixels, *, output_index: int = 0) -> None:
        if self._sink is None or self._sent >= self._limit or self._cancel.is_set():
            return
        self._sent += 1
        self._loop.call_soon_threadsafe(self._sink, image, output_index)


class EngineWorker:
    def __init__(
        self, engine: Engine, *, workers: int, max_queue: int, observer: JobObserver | None = None
    ) -> None:
        self.engine = engine
        self.observer = observer
        self.workers = workers
        self.capacity = workers + max_queue
        self.admitted = 0
        self.running = 0
        self._slots = asyncio.Semaphore(workers)
        self._executor = ThreadPoolExecutor(workers, thread_name_prefix=f"engine-{engine.info.name}")
        self._mean_run_s = 1.0

    @property
    def waiting(self) -> int:
        return max(0, self.admitted - self.running)

    @property
    def saturated(self) -> bool:
        return self.admitted >= self.capacity

    def retry_after_s(self) -> float:
        return max(1.0, self._mean_run_s * (self.admitted - self.workers + 1) / self.workers)

    async def run(
        self,
        job: EditJob,
        *,
        deadline: float,
        on_partial: PartialSink | None = None,
        on_start: Callable[[str | None], None] | None = None,
    ) -> EditOutput:
        """Run ``job`` when a slot frees up; ``deadline`` is a ``time.monotonic()`` value.
        ``on_start`` is called once the job is admitted here (a cluster backend calls it when
        a replica takes the job, with the replica's name)."""
        if self.admitted >= self.capacity:
            raise QueueFull(
                f"The model '{self.engine.info.name}' is busy ({self.admitted} requests in "
                "flight); retry later.",
                headers=retry_after_headers(self.retry_after_s()),
            )
        self.admitted += 1
        admitted_at = time.monotonic()
        if on_start is not None:
            on_start(None)
        try:
            try:
                await self._acquire(deadline)
            finally:
                if self.observer is not None:
                    self.observer.queue_waited(self.engine.info.name, time.monotonic() - admitted_at)
            return await self._execute(job, on_partial)
        finally:
            self.admitted -= 1

    async def _acquire(self, deadline: float) -> None:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise QueueTimeout("The request waited too long in the queue.")
        try:
            await asyncio.wait_for(self._slots.acquire(), remaining)
        except TimeoutError:
            raise QueueTimeout(
                f"The request waited {remaining:.0f} s in the queue without reaching the model."
            ) from None

    async def _execute(self, job: EditJob, on_partial: PartialSink | None) -> EditOutput:
        loop = asyncio.get_running_loop()
        progress = JobProgress(loop, on_partial, job.partial_images)
        started = time.monotonic()
        self.running += 1

        def finished(_: Future[EditOutput]) -> None:
            loop.call_soon_threadsafe(self._release, time.monotonic() - started)

        future = self._executor.submit(self.engine.run, job, progress)
        future.add_done_callback(finished)
        try:
            return await asyncio.wrap_future(future)
        except asyncio.CancelledError:
            progress.cancel()
            raise
        except Cancelled:
            raise asyncio.CancelledError() from None
        except RetouchError:
            raise
        except Exception as exc:
            log.exception("engine %s failed", self.engine.info.name)
            raise EngineFailed(
                f"The engine failed while processing the request ({type(exc).__name__})."
            ) from exc

    def _release(self, elapsed: float) -> None:
        self.running -= 1
        if self.observer is not None:
            self.observer.engine_ran(self.engine.info.name, elapsed)
        self._mean_run_s = 0.8 * self._mean_run_s + 0.2 * elapsed
        self._slots.release()

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
        self.engine.close()
