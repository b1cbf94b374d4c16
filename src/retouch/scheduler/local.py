"""``LocalBackend``: one in-process engine and its worker threads.

* Admission is a counter checked on the event loop: beyond ``workers + max_queue`` tickets a
  new request is refused at once with 429 and a ``Retry-After`` estimated from recent run times.
* A job waits for one of the engine's ``workers`` slots until its queue deadline; past it, 504,
  and the engine is never touched. The wait uses ``asyncio.timeout`` (``asyncio.wait_for`` on
  Python 3.11 can swallow a cancel that arrives as the acquire completes), and a cancellation
  still pending once the slot is granted gives the slot back instead of starting the job.
* The engine runs in the backend's own thread pool, never on the event loop. A caller that goes
  away, or a run past the model's run deadline, sets the job's cancel flag; the engine stops at
  its next step and the slot is released only when its thread has really finished, so a device
  never runs more jobs than it was sized for. An engine still running ``cancel_grace_s`` after
  being cancelled marks the backend not ready (``/readyz`` 503) until its thread returns.
* ``workers`` threads may call ``engine.run`` at the same time: an engine wrapper that batches
  concurrent jobs into one device call sizes ``workers`` to its batch size.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor

from retouch.engine.progress import JobProgress
from retouch.engine.types import EditJob, EditOutput, Engine, Pixels
from retouch.errors import (
    Cancelled,
    EngineFailed,
    RetouchError,
    RunTimeout,
)
from retouch.scheduler.base import (
    BackendStats,
    BoundedQueue,
    JobObserver,
    PartialSink,
    StartSink,
    Ticket,
)

log = logging.getLogger(__name__)


class LocalBackend(BoundedQueue):
    """A ``Backend`` over one loaded ``Engine`` in this process."""

    def __init__(
        self,
        engine: Engine,
        *,
        workers: int,
        max_queue: int,
        run_deadline_s: float = 600.0,
        cancel_grace_s: float = 30.0,
        observer: JobObserver | None = None,
    ) -> None:
        self.engine = engine
        self.observer = observer
        self.info = engine.info
        self._init_queue(workers, max_queue)
        self.run_deadline_s = run_deadline_s
        self.cancel_grace_s = cancel_grace_s
        self._executor = ThreadPoolExecutor(workers, thread_name_prefix=f"engine-{engine.info.name}")
        self._jobs: dict[Future[EditOutput], JobProgress] = {}
        self._stuck: set[Future[EditOutput]] = set()
        self._closed = False

    # -- admission ------------------------------------------------------------------------------

    async def check(self, job: EditJob) -> None:
        await asyncio.to_thread(self.engine.check, job)

    def stats(self) -> BackendStats:
        reason = None
        if self._closed:
            reason = "closed"
        elif self._stuck:
            reason = f"{len(self._stuck)} job(s) ignored cancellation for over {self.cancel_grace_s:.0f} s"
        return BackendStats(
            running=self.running,
            waiting=max(0, self.admitted - self.running),
            capacity=self.capacity,
            ready=reason is None,
            reason=reason,
        )

    # -- execution ------------------------------------------------------------------------------

    async def run(
        self,
        job: EditJob,
        ticket: Ticket,
        *,
        deadline: float,
        on_partial: PartialSink | None = None,
        on_start: StartSink | None = None,
    ) -> EditOutput:
        if ticket.backend is not self or ticket.released:
            raise RuntimeError("run() needs a live ticket issued by this backend")
        if on_start is not None:
            on_start(None)
        try:
            await self._take_slot(deadline, "the model")  # a caller cancelled meanwhile: no run
        finally:
            if self.observer is not None:
                self.observer.queue_waited(self.info.name, time.monotonic() - ticket.admitted_at)
        return await self._execute(job, on_partial)

    async def _execute(self, job: EditJob, on_partial: PartialSink | None) -> EditOutput:
        loop = asyncio.get_running_loop()
        sink = None if on_partial is None else _posting(loop, on_partial)
        progress = JobProgress(sink, job.partial_images)
        started = time.monotonic()
        self.running += 1
        future = self._executor.submit(self.engine.run, job, progress)
        self._jobs[future] = progress

        def finished(done: Future[EditOutput]) -> None:
            elapsed = time.monotonic() - started
            # RuntimeError: the loop closed first (shutdown), so there is nothing left to free.
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(self._release, done, elapsed)

        future.add_done_callback(finished)
        run_deadline = asyncio.timeout(self.run_deadline_s)
        try:
            async with run_deadline:
                return await asyncio.wrap_future(future)
        except asyncio.CancelledError:
            self._cancel(future, progress, "client went away")
            raise
        except TimeoutError as exc:
            if not run_deadline.expired():  # the engine's own TimeoutError: a failure
                log.exception("engine %s failed", self.info.name)
                raise EngineFailed("The engine failed while processing the request (TimeoutError).") from exc
            self._cancel(future, progress, "run deadline")
            raise RunTimeout(
                f"The model '{self.info.name}' did not finish within its run deadline of "
                f"{self.run_deadline_s:g} s; the job was cancelled."
            ) from None
        except Cancelled:
            raise asyncio.CancelledError() from None
        except RetouchError:
            raise
        except Exception as exc:
            log.exception("engine %s failed", self.info.name)
            raise EngineFailed(
                f"The engine failed while processing the request ({type(exc).__name__})."
            ) from exc

    def _cancel(self, future: Future[EditOutput], progress: JobProgress, why: str) -> None:
        """Ask the engine to stop at its next step; watch that it really does."""
        progress.cancel()
        if future.done():
            return
        log.info("cancelling a job of %s (%s)", self.info.name, why)
        loop = asyncio.get_running_loop()
        loop.call_later(self.cancel_grace_s, self._check_stopped, future)

    def _check_stopped(self, future: Future[EditOutput]) -> None:
        if future.done() or future in self._stuck:
            return
        self._stuck.add(future)
        log.error(
            "engine %s ignored cancellation for %.0f s: its slot stays taken and the model is "
            "marked not ready until the job returns",
            self.info.name,
            self.cancel_grace_s,
        )

    def _release(self, future: Future[EditOutput], elapsed: float) -> None:
        self.running -= 1
        if self.observer is not None:
            self.observer.engine_ran(self.info.name, elapsed)
        self._jobs.pop(future, None)
        if future in self._stuck:
            self._stuck.discard(future)
            log.warning("engine %s returned after %.0f s; the model is ready again",
                        self.info.name, elapsed)  # fmt: skip
        elif not future.cancelled() and not self._jobs_cancelled(future):
            self._ran(elapsed)
        self._slots.release()

    @staticmethod
    def _jobs_cancelled(future: Future[EditOutput]) -> bool:
        return isinstance(future.exception(), Cancelled)

    async def close(self) -> None:
        self._closed = True
        for progress in self._jobs.values():
            progress.cancel()
        self._executor.shutdown(wait=False, cancel_futures=True)
        pending = list(self._jobs)
        if pending:
            _, still = await asyncio.to_thread(
                concurrent.futures.wait, pending, self.cancel_grace_s
            )
            if still:
                # Freeing a pipeline under a running thread can crash the process; leak it.
                log.error("engine %s still runs %d job(s) after %.0f s; not freeing it",
                          self.info.name, len(still), self.cancel_grace_s)  # fmt: skip
                return
        await asyncio.to_thread(self.engine.close)


def _posting(loop: asyncio.AbstractEventLoop, sink: PartialSink) -> Callable[[Pixels, int], None]:
    """A partial-image outlet for the engine's thread that hands each image to the loop."""

    def post(image: Pixels, index: int) -> None:
        loop.call_soon_threadsafe(sink, image, index)

    return post
