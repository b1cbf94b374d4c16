"""The seam between the edit service and whatever runs jobs: the ``Backend`` protocol.

The service never sees threads, devices, clusters or upstream servers. For each served model it
holds one ``Backend`` and talks to it in two steps:

1. ``admit()`` at once, *before any work* (the request's model is known, nothing is decoded):
   it returns a ``Ticket`` or raises ``QueueFull`` (429 with ``Retry-After``) immediately. It
   never waits and never does I/O: it runs on the event loop for every request, refused ones
   included, so it must cost microseconds.
2. ``run(job, ticket, ...)`` later, with the decoded job: wait for capacity until the queue
   deadline (``QueueTimeout``, 504, without touching the engine), run the job under the run
   deadline (``RunTimeout``, 504), stream partial images through ``on_partial``.

Implementations: ``LocalBackend`` (``scheduler.local``: in-process engine worker threads).
Planned ones plug in behind the same protocol without touching the service: a Ray Serve
deployment (the ticket is a local admission counter in front of the deployment's own queue), an
upstream OpenAI-compatible relay (``run`` forwards the job; ``check`` is a no-op), and overflow
(an ordered list of backends for one model: ``admit`` asks each in turn and the first with room
issues the ticket; ``run`` goes to ``ticket.backend``, which is why a ticket names its backend).

Cancellation is asyncio cancellation: the caller cancels the task awaiting ``run`` (client
disconnect). A backend must then stop the job at its next step, give the capacity back only once
the work has really stopped (a device sized for one job never runs two), and report, through
``stats().ready``, when a job ignores cancellation for longer than its grace period, instead of
silently losing capacity.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol, cast, runtime_checkable

from retouch.engine.types import EditJob, EditOutput, EngineInfo, Pixels
from retouch.errors import QueueFull, QueueTimeout, retry_after_headers

PartialSink = Callable[[Pixels, int], None]
"""Receives ``(image, output_index)`` on the event loop, in the order the engine published."""

StartSink = Callable[[str | None], None]
"""Receives, once, the name of the worker that took a job (a cluster replica), or None."""


class JobObserver(Protocol):
    """Timing hooks a backend calls (metrics); implementations never raise."""

    def queue_waited(self, model: str, seconds: float) -> None: ...

    def engine_ran(self, model: str, seconds: float) -> None: ...


class Ticket:
    """A place in one backend's queue, issued by ``Backend.admit`` without waiting.

    The holder owns it from admission until its response is built, and must ``release()`` it
    exactly when it no longer needs the place (``release`` is idempotent, so a ``finally`` may
    call it again). Until released, the backend counts the request against its capacity,
    whether it is still decoding, waiting for a slot or running.
    """

    __slots__ = ("_on_release", "admitted_at", "backend", "released")

    def __init__(self, backend: Backend, on_release: Callable[[], None]) -> None:
        self.backend = backend
        """The backend that issued the ticket (with overflow, not necessarily the first)."""
        self.admitted_at = time.monotonic()
        self.released = False
        self._on_release = on_release

    def release(self) -> None:
        if not self.released:
            self.released = True
            self._on_release()


@dataclass(frozen=True)
class BackendStats:
    """What ``/readyz`` and metrics show for one backend."""

    running: int
    """Jobs the engine is working on now (including cancelled ones that have not stopped)."""
    waiting: int
    """Tickets out that are not running: decoding, or waiting for a slot."""
    capacity: int
    """Most tickets out at once; beyond it ``admit`` refuses."""
    ready: bool
    """False when the backend cannot serve (closed, or an engine ignored cancellation)."""
    reason: str | None = None
    """Why not ready, for operators."""


@runtime_checkable
class Backend(Protocol):
    """Runs jobs for one served model. All methods are called on the event loop."""

    info: EngineInfo
    """Capabilities used to validate requests before admission work (mask, transparency,
    how many images)."""

    def admit(self) -> Ticket:
        """Take a place in the queue now, or raise ``QueueFull`` (429, with ``Retry-After`` /
        ``retry-after-ms`` headers from ``retry_after_s``) now. Never waits, never does I/O."""
        ...

    async def check(self, job: EditJob) -> None:
        """Cheap pre-flight check of a decoded job before it is queued (may the engine do this
        prompt?); raises a ``RetouchError`` (400) to refuse. Runs after ``admit`` and before
        ``run``, so a refused job never waits for the engine. May be a no-op."""
        ...

    async def run(
        self,
        job: EditJob,
        ticket: Ticket,
        *,
        deadline: float,
        on_partial: PartialSink | None = None,
        on_start: StartSink | None = None,
    ) -> EditOutput:
        """Run ``job`` for ``ticket`` (issued by this backend) and return its output.

        ``on_start`` is called once the backend has taken the job: at once in this process,
        when a replica takes it on a cluster. A stream's gets the replica's name (its headers
        need it before the first byte); a plain job's output names its replica instead
        (``EditOutput.replica``). A job that fails before that never calls it.

        ``deadline`` (a ``time.monotonic()`` value) bounds the wait for capacity: past it,
        ``QueueTimeout`` and the engine is never touched. The run itself is bounded by the
        backend's run deadline: past it the job is cancelled at its next step and
        ``RunTimeout`` (504) is raised at once. A cancellation that arrives while waiting or
        just as capacity is granted must not start the job. Engine failures are raised as
        ``EngineFailed`` (500); client errors as their ``RetouchError``. ``run`` does not
        release the ticket: its holder does.

        Batching: ``run`` may be awaited by up to ``capacity`` tasks at once; a backend (or an
        engine behind it) is free to coalesce concurrent jobs into one device call, as long as
        each caller gets its own output and cancelling one caller cancels only its job.
        """
        ...

    def stats(self) -> BackendStats: ...

    def retry_after_s(self) -> float:
        """Estimated seconds until a place frees up (for ``Retry-After``)."""
        ...

    async def close(self) -> None:
        """Cancel what runs, wait (bounded) until no thread or remote call still uses the
        engine, then free it. Never frees an engine that is still running a job."""
        ...


class BoundedQueue:
    """``admit`` for a backend with ``workers`` slots and ``max_queue`` waiting places: a counter
    checked on the event loop (every call is on the loop, so no lock), beyond ``capacity``
    tickets a 429 at once. Used by backends that are ``Backend``s; they call ``_ran(seconds)``
    after each completed job so that ``Retry-After`` follows recent run times."""

    info: EngineInfo

    def _init_queue(self, workers: int, max_queue: int) -> None:
        self.workers = workers
        self.capacity = workers + max_queue
        self.admitted = 0
        self.running = 0
        self._slots = asyncio.Semaphore(workers)
        self._mean_run_s = 1.0

    async def _take_slot(self, deadline: float, reaching: str) -> None:
        """One of the ``workers`` slots, waited for until ``deadline`` (then 504). A caller
        cancelled as the slot is granted gives it back at once: ``asyncio.timeout`` would
        otherwise let the job start for a client that has left. The caller releases the slot
        (``self._slots.release()``) when its job ends."""
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise QueueTimeout("The request waited too long in the queue.")
        try:
            async with asyncio.timeout(remaining):
                await self._slots.acquire()
        except TimeoutError:
            raise QueueTimeout(
                f"The request waited {remaining:.0f} s in the queue without reaching {reaching}."
            ) from None
        task = asyncio.current_task()
        if task is not None and task.cancelling():
            self._slots.release()
            raise asyncio.CancelledError()

    @property
    def saturated(self) -> bool:
        return self.admitted >= self.capacity

    def retry_after_s(self) -> float:
        return max(1.0, self._mean_run_s * (self.admitted - self.workers + 1) / self.workers)

    def admit(self) -> Ticket:
        if self.saturated:
            raise QueueFull(
                f"The model '{self.info.name}' is busy ({self.admitted} requests in flight); "
                "retry later.",
                headers=retry_after_headers(self.retry_after_s()),
            )
        self.admitted += 1
        return Ticket(cast(Backend, self), self._leave)

    def _leave(self) -> None:
        self.admitted -= 1

    def _ran(self, elapsed: float) -> None:
        self._mean_run_s = 0.8 * self._mean_run_s + 0.2 * elapsed
