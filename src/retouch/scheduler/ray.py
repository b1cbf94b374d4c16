"""``RayBackend``: the front's side of the Ray backend, one per model, calling the model's
Serve deployment (``retouch.cluster``) through a handle.

* Transport (``cluster.transport``): by default the handle sends jobs over Serve's gRPC
  channel to each replica (``_by_reference=False``), about half the round trip of a Ray actor
  call (``bench/serve_rtt.py``); ``actor`` sends them as actor calls through the object store.
  Either way the handle's router runs on the front's event loop (``deploy.front_handle``), not
  in a thread of its own: a call crosses no thread on its way out or back.
* A job goes through the replica's generator method ``stream``: the first item (``start``)
  arrives when a replica has taken the job, so the front learns which replica runs it (the
  ``x-retouch-replica`` header, sent before a stream's first byte), the queue wait is measured
  here, and the queue deadline bounds only the wait for a replica. On the actor transport a
  plain job (no partial images) is instead one call of the replica's ``run``, a stream item
  less; its queue wait ends when Serve's router assigns it to a replica. Over gRPC a unary call
  cannot do that: the replica's acceptance reaches the router only with the result.
* Admission is Serve's: ``max_ongoing_requests`` per replica, ``max_queued_requests`` per front
  (its handle). ``BackPressureError`` becomes our 429 with a ``Retry-After`` estimate; there is
  no second queue in the front: ``admit`` only counts this front's requests in flight (for
  ``/readyz`` and metrics) and never refuses. The 429 comes when the job is submitted, right
  after decoding, and for a stream still before its first byte (``on_start``).
* A client that goes away or a passed deadline calls ``cancel()`` on the stream (a timeout
  alone would leave the replica working); the replica stops the engine at its next step.
* A replica that dies under a job fails it with a ``RayActorError`` (``ActorDiedError``, or
  ``ActorUnavailableError`` over gRPC): that becomes a 503 in OpenAI's envelope, which the
  official SDKs retry; Serve routes the retry to a live replica.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable
from typing import Any, TypeVar

from retouch.config import ModelSettings, Settings
from retouch.engine.types import EditJob, EditOutput, EngineInfo
from retouch.errors import (
    EngineFailed,
    QueueFull,
    QueueTimeout,
    RetouchError,
    RunTimeout,
    ServiceUnavailable,
    retry_after_headers,
)
from retouch.logs import request_id_var
from retouch.scheduler.base import BackendStats, JobObserver, PartialSink, StartSink, Ticket

log = logging.getLogger(__name__)
T = TypeVar("T")

_REPLICA_GRACE_S = 30.0  # beyond the run deadline, for the replica's own RunTimeout to arrive
_ROUTER_SHUTDOWN_S = 5.0  # its last metrics push to Serve's controller


class RayBackend:
    def __init__(
        self,
        model: ModelSettings,
        settings: Settings,
        handle: Any,
        info: EngineInfo,
        *,
        observer: JobObserver | None = None,
    ) -> None:
        self.model = model
        self.info = info
        self.observer = observer
        self._handle = handle.options(stream=True)
        self._unary = handle
        # Over gRPC a unary call learns it was assigned only with its result (the replica's
        # acceptance travels with the reply), so every job streams: the first item ("start")
        # arrives once a replica has taken it. See the module docstring.
        self._plain_is_unary = settings.cluster.transport == "actor"
        self.max_queue = settings.queue.max_queue
        self.run_deadline_s = model.run_deadline_s or settings.queue.run_deadline_s
        self.admitted = 0  # this front's tickets out (decoding, queued or running)
        self.running = 0  # of those, the ones a replica has taken
        self._mean_run_s = 1.0
        self._closed = False

    def admit(self) -> Ticket:
        self.admitted += 1
        return Ticket(self, self._leave)

    def _leave(self) -> None:
        self.admitted -= 1

    async def check(self, job: EditJob) -> None:
        """The replica checks the job before its engine starts (the front has no engine)."""
        return None

    def stats(self) -> BackendStats:
        return BackendStats(
            running=self.running,
            waiting=max(0, self.admitted - self.running),
            # This front's view: Serve queues max_queue here beyond what replicas run.
            capacity=self.running + self.max_queue + 1,
            ready=not self._closed,
            reason="closed" if self._closed else None,
        )

    def retry_after_s(self) -> float:
        return max(1.0, self._mean_run_s * (max(0, self.admitted - self.running) + 1))

    async def run(
        self,
        job: EditJob,
        ticket: Ticket,
        *,
        deadline: float,
        on_partial: PartialSink | None = None,
        on_start: StartSink | None = None,
    ) -> EditOutput:
        from grpc.aio import AioRpcError
        from ray.exceptions import RayActorError, RayTaskError
        from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError

        if ticket.backend is not self or ticket.released:
            raise RuntimeError("run() needs a live ticket issued by this backend")
        try:
            if on_partial is None and self._plain_is_unary:
                return await self._run_plain(job, ticket, deadline, on_start)
            return await self._run_stream(job, ticket, deadline, on_partial, on_start)
        except BackPressureError:
            raise QueueFull(
                f"The model '{self.model.name}' is busy; retry later.",
                headers=retry_after_headers(self.retry_after_s()),
            ) from None
        except RayTaskError as exc:
            cause = exc.cause
            if isinstance(cause, RetouchError):
                raise cause from None
            log.error("replica of %s failed: %s", self.model.name, exc)
            raise EngineFailed("The engine failed while processing the request.") from None
        except AioRpcError as exc:  # the gRPC transport's own failures (Serve maps UNAVAILABLE)
            log.error("gRPC call to a replica of %s failed: %s %s", self.model.name, exc.code(), exc.details())
            raise EngineFailed("The call to the engine replica failed.") from None
        except (RayActorError, DeploymentUnavailableError) as exc:
            log.warning("engine replica of %s lost during a request: %s", self.model.name, exc)
            raise ServiceUnavailable(
                "The engine replica running this request went away; retry the request.",
                headers=retry_after_headers(1.0),
            ) from None

    async def _run_plain(
        self, job: EditJob, ticket: Ticket, deadline: float, on_start: StartSink | None
    ) -> EditOutput:
        """A job without partial images on the actor transport: one call of the replica's
        ``run``. The queue wait ends when Serve's router has assigned it to a replica
        (``_to_object_ref``, Serve's developer API, resolves then: ``on_start(None)``); the
        replica names itself in the result (``EditOutput.replica``)."""
        response = self._unary.run.remote(job, request_id_var.get(), self.run_deadline_s)
        started = False
        try:
            await self._wait_for_replica(response._to_object_ref(), ticket, deadline)
            started = True
            self.running += 1
            if on_start is not None:
                on_start(None)  # taken; the replica names itself in the result
            result: tuple[str, EditOutput, float] = await self._within_run_deadline(response)
            replica, output, run_s = result
            self._ran(run_s)
            output.replica = replica
            return output
        except BaseException as exc:
            if not _from_ray(exc):  # client gone, deadline: free the replica
                response.cancel()
            raise
        finally:
            if started:
                self.running -= 1

    async def _run_stream(
        self,
        job: EditJob,
        ticket: Ticket,
        deadline: float,
        on_partial: PartialSink | None,
        on_start: StartSink | None,
    ) -> EditOutput:
        """A job through the replica's generator ``stream``; its first item (``start``,
        naming the replica) ends the queue wait."""
        stream = self._handle.stream.remote(job, request_id_var.get(), self.run_deadline_s)
        started = False
        try:
            kind, replica = await self._wait_for_replica(stream.__anext__(), ticket, deadline)
            if kind != "start":
                raise EngineFailed(f"unexpected first item {kind!r} from the engine replica")
            started, run_started = True, time.monotonic()
            self.running += 1
            if on_start is not None:
                on_start(replica)
            output = await self._within_run_deadline(self._drain(stream, on_partial))
            self._ran(time.monotonic() - run_started)
            output.replica = replica
            return output
        except BaseException as exc:
            if not _from_ray(exc):  # client gone, deadline, any failure here: free the replica
                stream.cancel()
            raise
        finally:
            if started:
                self.running -= 1

    async def _wait_for_replica(self, assigned: Awaitable[T], ticket: Ticket, deadline: float) -> T:
        """The queue deadline bounds only the wait for a replica."""
        try:
            async with asyncio.timeout(max(0.0, deadline - time.monotonic())):
                return await assigned
        except TimeoutError:
            raise QueueTimeout(
                "The request waited too long in the queue without reaching the model."
            ) from None
        finally:
            self._observe_wait(time.monotonic() - ticket.admitted_at)

    async def _within_run_deadline(self, work: Awaitable[T]) -> T:
        """The replica enforces the run deadline; this bounds a wedged replica."""
        try:
            async with asyncio.timeout(self.run_deadline_s + _REPLICA_GRACE_S):
                return await work
        except TimeoutError:
            raise RunTimeout(
                f"The model '{self.model.name}' did not finish within its run deadline of "
                f"{self.run_deadline_s:g} s."
            ) from None

    async def _drain(self, stream: Any, on_partial: PartialSink | None) -> EditOutput:
        async for kind, payload in stream:
            if kind == "partial":
                if on_partial is not None:
                    image, index = payload
                    on_partial(image, index)
            elif kind == "final":
                output: EditOutput = payload
                return output
        raise EngineFailed("The engine replica ended the job without a result.")

    def _observe_wait(self, seconds: float) -> None:
        if self.observer is not None:
            self.observer.queue_waited(self.model.name, seconds)

    def _ran(self, seconds: float) -> None:
        self._mean_run_s = 0.8 * self._mean_run_s + 0.2 * seconds
        if self.observer is not None:
            self.observer.engine_ran(self.model.name, seconds)

    async def close(self) -> None:
        """Stops this front's router (it runs on the front's loop); the replicas belong to the
        cluster, not to this front."""
        self._closed = True
        try:
            async with asyncio.timeout(_ROUTER_SHUTDOWN_S):
                await self._unary.shutdown_async()
        except Exception as exc:  # the cluster may be gone already: nothing left to stop
            log.warning("router of %s not shut down cleanly: %r", self.model.name, exc)


def _from_ray(exc: BaseException) -> bool:
    """An error Ray raised for the call itself (refused, failed, replica lost): nothing to
    cancel."""
    from grpc.aio import AioRpcError
    from ray.exceptions import RayActorError, RayTaskError
    from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError

    failures = BackPressureError | RayTaskError | RayActorError | DeploymentUnavailableError | AioRpcError
    return isinstance(exc, failures)


async def attach(settings: Settings, *, observer: JobObserver | None = None) -> dict[str, RayBackend]:
    """Connect to the cluster, deploy when this front is a deployer, and build a backend per
    model from its deployment's handle."""
    from retouch.cluster import deploy

    await asyncio.to_thread(deploy.connect, settings)
    if settings.cluster.deploy:
        await asyncio.to_thread(deploy.deploy, settings)
    else:
        await asyncio.to_thread(deploy.wait_running, settings, settings.cluster.deploy_timeout_s)
    backends: dict[str, RayBackend] = {}
    for model in deploy.cluster_models(settings):
        handle = deploy.front_handle(model, settings)
        described = await handle.describe.remote()
        backends[model.name] = RayBackend(model, settings, handle, described["info"], observer=observer)
    return backends
