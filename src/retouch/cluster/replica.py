"""The Serve deployment that runs one engine per replica process.

Every method is ``async`` and the engine runs in the replica's own thread pool, never in a
method Serve runs in its thread pool: Serve frees a cancelled *sync* method's slot while its
thread keeps running, so the next job would start on a GPU that is still busy. Here a
cancellation (the front's ``response.cancel()``, a client that went away) sets the job's cancel
flag, the engine stops at its next step, and the method returns only once its thread has
finished, so the replica never runs more jobs than ``max_ongoing_requests``. The methods run on the
replica's main event loop, the one Serve's own server runs on (``deploy.REPLICA_ENV``), so none
may block: only ``__init__`` does (loading the engine, before the replica takes requests).

Each result names the replica (``<replica tag>@<node id prefix>``), which the front sends back
in the ``x-retouch-replica`` header. Jobs go through ``stream`` (a generator: its first item
names the replica before any partial image; a job without partial images just awaits the
engine between its two items); on the actor transport plain requests go through ``run``, one
call (see ``retouch.scheduler.ray``).
"""

from __future__ import annotations

import asyncio
import logging
import sys
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from retouch.config import ModelSettings
from retouch.engine.progress import JobProgress
from retouch.engine.registry import build_engine
from retouch.engine.types import EditJob, EditOutput, EngineInfo, Pixels
from retouch.errors import Cancelled, EngineFailed, RetouchError, RunTimeout

log = logging.getLogger(__name__)

# Stream items: ("start", replica) first, then ("partial", (pixels, index)), then
# ("final", EditOutput). Plain tuples pickle cheaply and need no class on the front.
StreamItem = tuple[str, Any]


class EngineReplica:
    """One engine, loaded once in ``__init__`` (Serve retries a failing constructor)."""

    def __init__(self, model: dict[str, Any]) -> None:
        _log_to_stderr()
        self.model = ModelSettings.model_validate(model)
        self.engine = build_engine(self.model)
        self.engine.load()
        self._pool = ThreadPoolExecutor(self.model.workers, thread_name_prefix="engine")
        self.replica = _replica_name()
        self._stuck_since: float | None = None
        log.info("replica %s of model %s loaded", self.replica, self.model.name)

    async def describe(self) -> dict[str, Any]:
        """What fronts validate requests against; no engine work."""
        info: EngineInfo = self.engine.info
        return {"info": info, "replica": self.replica}

    async def stream(
        self, job: EditJob, request_id: str | None = None, run_deadline_s: float | None = None
    ) -> AsyncIterator[StreamItem]:
        """Generator method (the front calls it with ``handle.options(stream=True)``);
        ``request_id`` is the front's, for log lines that can be joined across the cluster."""
        yield ("start", self.replica)
        if job.partial_images == 0:  # nothing to interleave with the engine: one await
            yield ("final", await self._run_whole(job, request_id, run_deadline_s))
            return
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[tuple[Pixels, int]] = asyncio.Queue()

        def sink(image: Pixels, index: int) -> None:
            loop.call_soon_threadsafe(queue.put_nowait, (image, index))

        task = asyncio.ensure_future(self._run(job, sink, run_deadline_s))
        try:
            while True:
                getter = asyncio.ensure_future(queue.get())
                done, _ = await asyncio.wait({getter, task}, return_when=asyncio.FIRST_COMPLETED)
                if getter in done:
                    yield ("partial", getter.result())
                    continue
                getter.cancel()
                break
            while not queue.empty():
                yield ("partial", queue.get_nowait())
            yield ("final", task.result())
        finally:
            if not task.done():  # the consumer went away: Serve threw CancelledError in here
                task.cancel()
                await _settle(task)
                log.info("request %s cancelled; its engine thread has stopped", request_id)

    async def run(
        self, job: EditJob, request_id: str | None = None, run_deadline_s: float | None = None
    ) -> tuple[str, EditOutput, float]:
        """One call for a job without partial images (the front's plain requests): the
        replica's name, the output and the engine's run time. ``stream``'s ``start`` item costs
        a round trip; here the front learns of the assignment from Serve's router instead
        (``RayBackend``). A cancellation reaches the engine through ``_run``."""
        started = time.monotonic()
        output = await self._run_whole(job, request_id, run_deadline_s)
        return self.replica, output, time.monotonic() - started

    async def _run_whole(self, job: EditJob, request_id: str | None, run_deadline_s: float | None) -> EditOutput:
        """A job without partial images; a cancellation (the caller went away) returns only
        once the engine thread has stopped (``_run``)."""
        try:
            return await self._run(job, None, run_deadline_s)
        except asyncio.CancelledError:
            log.info("request %s cancelled; its engine thread has stopped", request_id)
            raise

    async def _run(
        self, job: EditJob, sink: Callable[[Pixels, int], None] | None, run_deadline_s: float | None
    ) -> EditOutput:
        self.engine.check(job)  # cheap, and a refusal (400) must not wait for a thread
        progress = JobProgress(sink, job.partial_images)
        future: Future[EditOutput] = self._pool.submit(self.engine.run, job, progress)
        timer = None
        if run_deadline_s is not None:
            timer = asyncio.get_running_loop().call_later(max(0.0, run_deadline_s), progress.cancel)
        started = time.monotonic()
        try:
            return await _hold(future, progress)
        except Cancelled:
            if timer is not None and time.monotonic() - started >= (run_deadline_s or 0):
                raise RunTimeout(
                    f"The model '{self.model.name}' did not finish within its run deadline of "
                    f"{run_deadline_s:g} s; the job was cancelled."
                ) from None
            raise asyncio.CancelledError() from None
        except RetouchError:
            raise
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.exception("engine %s failed on replica %s", self.model.name, self.replica)
            raise EngineFailed(
                f"The engine failed while processing the request ({type(exc).__name__})."
            ) from None
        finally:
            if timer is not None:
                timer.cancel()

    def __del__(self) -> None:
        pool = getattr(self, "_pool", None)
        if pool is not None:
            pool.shutdown(wait=False, cancel_futures=True)


async def _hold(future: Future[EditOutput], progress: JobProgress) -> EditOutput:
    """Await the engine thread; on cancellation set the flag and keep holding the slot until
    the thread has really returned, then let the cancellation out."""
    wrapped = asyncio.wrap_future(future)
    try:
        return await asyncio.shield(wrapped)
    except asyncio.CancelledError:
        progress.cancel()
        await _settle(wrapped)
        raise


async def _settle(task: asyncio.Future[Any]) -> None:
    while not task.done():
        try:
            await asyncio.shield(task)
        except asyncio.CancelledError:
            continue
        except BaseException:
            break
    if task.done() and not task.cancelled():
        task.exception()  # retrieved, so asyncio does not log it as never awaited


def _log_to_stderr() -> None:
    """Replica processes have no retouch logging set up; Ray keeps their stderr in the node's
    log folder (``logs/worker-*.err``)."""
    logger = logging.getLogger("retouch")
    if not logger.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)


def _replica_name() -> str:
    import ray
    from ray import serve

    if not ray.is_initialized():  # constructed outside Serve (tests of the class itself);
        return "local@none"  # asking Ray for the node would start a local Ray instance
    try:
        tag = serve.get_replica_context().replica_tag
    except Exception:
        tag = "local"
    return f"{tag}@{ray.get_runtime_context().get_node_id()[:8]}"


def build_application(args: dict[str, Any]) -> Any:
    """Application builder named by the declarative Serve config (``import_path``): one
    deployment named after the model. Options (replicas, queue limits, resources) come from
    the config's ``deployments`` entry, so changing them is an in-place update."""
    from ray import serve

    model = args["model"]
    deployment = serve.deployment(name=model["name"])(EngineReplica)
    return deployment.bind(model)
