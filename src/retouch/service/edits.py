"""``POST /v1/images/edits`` orchestration: admit -> validate -> decode -> backend -> encode.

No HTTP types here. The order is the point (docs/request-path.md):

1. ``admission()`` gives the body reader an ``Admission``: the queue ticket is taken as soon as
   the model is known, before a single image is decoded (a full queue is a 429 at once).
2. ``prepare`` validates, asks the gate (rate limits, quota), decodes with a bounded number of
   concurrent decodes and runs the backend's pre-flight check: everything that can fail with a
   4xx, so a stream never starts on a bad request.
3. ``respond`` (an ``ImagesResponse``) or ``stream`` (typed stream events) runs the backend and
   builds the wire models; the bytes are made by ``retouch.api.render``.

Every request that reached the gate gets exactly one ledger row, whatever happens; so does one
that held a queue ticket when its client left (499).
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import pybase64

from retouch.accounting.gate import Gate, Principal, UsageRecord
from retouch.config import Settings
from retouch.engine.types import EditJob, EditOutput, Pixels
from retouch.errors import QueueTimeout, RetouchError
from retouch.imaging.encode import CONTENT_TYPES
from retouch.metrics import Metrics
from retouch.net.fetch import Fetcher
from retouch.protocol import (
    ErrorEvent,
    ErrorObject,
    Image,
    ImageEditCompletedEvent,
    ImageEditPartialImageEvent,
    ImageGenCompletedEvent,
    ImageGenPartialImageEvent,
    ImagesResponse,
    ImagesUsage,
    InputTokensDetails,
    OutputTokensDetails,
)
from retouch.scheduler.base import Backend, PartialSink, StartSink, Ticket
from retouch.scheduler.upstream import UpstreamBackend
from retouch.service import jobs
from retouch.service.admission import Admission, UploadBudget
from retouch.service.capabilities import Served
from retouch.service.form import EditForm
from retouch.service.models import ModelRoutes
from retouch.service.params import EditParams, Mode, to_edit_params
from retouch.service.relay import PreparedRelay, RelayService
from retouch.service.stream import KEEPALIVE, StreamItem
from retouch.service.tokens import Usage, compute_usage
from retouch.storage.base import BlobStore
from retouch.storage.signing import UrlSigner
from retouch.threads import background_pool
from retouch.upstream import RelayedBody

log = logging.getLogger(__name__)
T = TypeVar("T")



_INTERNAL = ErrorObject(
    message="The server failed while streaming the result.",
    type="server_error",
    param=None,
    code="internal_error",
)


@dataclass
class PreparedEdit:
    """A request that passed every check, holds its queue ticket and has decoded pixels."""

    request_id: str
    principal: Principal
    params: EditParams
    job: EditJob
    input_sizes: list[tuple[int, int]]
    backend: Backend
    ticket: Ticket
    deadline: float
    """Queue deadline (``time.monotonic()``), counted from the end of the upload."""
    headers: dict[str, str]
    """The key's ``x-ratelimit-*`` headers as of admission."""
    started: float = field(default_factory=time.monotonic)
    recorded: bool = False
    replica: str | None = None
    """The engine replica that took the job (Ray backend), for ``x-retouch-replica``."""

    def on_start(self, replica: str | None) -> None:
        self.replica = replica


class EditService:
    def __init__(
        self,
        settings: Settings,
        routes: ModelRoutes,
        backends: dict[str, Backend],
        gate: Gate,
        store: BlobStore,
        signer: UrlSigner,
        metrics: Metrics | None = None,
        *,
        fetcher: Fetcher | None = None,
    ) -> None:
        self.settings = settings
        self.metrics = metrics or Metrics()
        self.routes = routes
        self.backends = backends
        self.gate = gate
        self.store = store
        self.signer = signer
        queue = settings.queue
        self.budget = UploadBudget(queue.max_buffered_bytes)
        self.decodes = asyncio.Semaphore(queue.max_decodes or os.cpu_count() or 1)
        self._pool = background_pool(queue.imaging_threads or None, "imaging", queue.imaging_nice)
        self.relay = RelayService(settings, gate, store, signer, fetcher or Fetcher(), self._off_loop)

    async def _off_loop(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)

    # -- admission, validation and decoding ----------------------------------------------------

    def _served(self) -> dict[str, Served]:
        """Every configured model's engine kind and declared capabilities (for errors that
        name who could serve a request)."""
        return {
            name: Served(self.routes.models[name].engine, b.info)
            for name, b in self.backends.items()
        }

    def admission(self) -> Admission:
        """A fresh admission for one request (hand it to the body reader)."""
        return Admission(self.routes, self.backends, self.budget)

    async def prepare(
        self, form: EditForm, principal: Principal, request_id: str, admission: Admission,
        mode: Mode = "edit",
    ) -> PreparedEdit | PreparedRelay:  # fmt: skip
        """Admit (if the body reader did not yet), validate, decode. Takes the ticket over
        from ``admission``; the returned edit must end with ``respond``, ``stream`` or
        ``abandon``."""
        admission.on_model(form.fields.get("model"))  # 400 / 429 now, before any decode
        route = admission.route
        assert route is not None
        assert admission.ticket is not None
        backend = admission.ticket.backend  # with overflow, not necessarily the model's own
        params = to_edit_params(
            form,
            model=route.requested,
            served_model=route.model.name,
            family=route.family,
            limits=self.settings.limits,
            allow_url=self.settings.storage.allow_url_for_gpt_models,
            mode=mode,  # a generation: the same rules, no input files
        )
        jobs.check_capabilities(params, form, backend.info, self.settings.limits, self._served())
        if isinstance(backend, UpstreamBackend):  # no pixels: the request goes on as it came
            return await self.relay.prepare(
                form, params, backend, admission, principal, request_id,
                generation=mode == "generate",
            )  # fmt: skip
        headers = await self.gate.admit(
            principal, model=params.model, images=params.n, served_model=params.served_model
        )
        admitted = time.monotonic()
        # The queue deadline counts from here, not from the ticket: the upload itself is bounded
        # by limits.receipt_timeout_s.
        deadline = admitted + self.settings.queue.deadline_s
        inputs = len(form.images)
        try:
            job, sizes = await self._decode(form, params, deadline)
            admission.give_bytes()
            await backend.check(job)
        except BaseException as exc:  # admitted (and counted), so it gets its ledger row
            if isinstance(exc, RetouchError):
                status = exc.status
            else:
                status = 499 if isinstance(exc, asyncio.CancelledError) else 500
            admission.recorded = True
            await self._write_record(
                UsageRecord(
                    request_id=request_id, key_id=principal.key_id, model=params.model,
                    status=status, input_images=inputs, output_images=0,
                    text_tokens=0, image_tokens=0, output_tokens=0,
                    latency_ms=int((time.monotonic() - admitted) * 1000),
                    user=params.end_user,
                )
            )  # fmt: skip
            raise
        ticket = admission.hand_over()
        return PreparedEdit(
            request_id, principal, params, job, sizes, backend, ticket, deadline, headers
        )

    async def _decode(
        self, form: EditForm, params: EditParams, deadline: float
    ) -> tuple[EditJob, list[tuple[int, int]]]:
        """At most ``max_decodes`` requests decode at once (each may expand to hundreds of MB
        of pixels); the wait counts against the queue deadline."""
        try:
            async with asyncio.timeout(max(0.0, deadline - time.monotonic())):
                await self.decodes.acquire()
        except TimeoutError:
            raise QueueTimeout("The request waited too long for its images to be decoded.") from None
        try:
            result = await self._off_loop(
                jobs.decode_job, form, params, self.settings.limits,
                self.backends[params.served_model].info.markup,
            )  # fmt: skip
        finally:
            self.decodes.release()
        # The raw uploads are not needed any more; dropping them here is what makes the upload
        # budget's accounting true (the caller gives the bytes back next).
        form.images, form.mask, form.markup = [], None, None
        return result

    async def abandoned(self, admission: Admission, principal: Principal, request_id: str) -> None:
        """The client left before its edit was prepared: a 499 row if it held a ticket."""
        route = admission.route
        if route is None or admission.ticket is None or admission.recorded:
            return
        admission.recorded = True
        await self._write_record(
            UsageRecord(
                request_id=request_id, key_id=principal.key_id, model=route.requested,
                status=499, input_images=0, output_images=0, text_tokens=0, image_tokens=0,
                output_tokens=0,
                latency_ms=int((time.monotonic() - admission.ticket.admitted_at) * 1000),
            )
        )  # fmt: skip

    # -- running --------------------------------------------------------------------------------

    async def _run(
        self,
        p: PreparedEdit,
        on_partial: PartialSink | None = None,
        on_start: StartSink | None = None,
    ) -> EditOutput:
        try:
            output = await p.backend.run(
                p.job, p.ticket, deadline=p.deadline, on_partial=on_partial,
                on_start=on_start or p.on_start,
            )  # fmt: skip
        finally:
            p.ticket.release()
        if output.replica:
            p.replica = output.replica
        return output

    def _encode(self, pixels: Pixels, params: EditParams, size: tuple[int, int]) -> bytes:
        started = time.perf_counter()
        data = jobs.encode_output(pixels, params, size)
        self.metrics.encoded(params.served_model, params.output_format, time.perf_counter() - started)
        return data

    def _encode_b64(self, pixels: Pixels, params: EditParams, size: tuple[int, int]) -> bytes:
        return pybase64.b64encode(self._encode(pixels, params, size))

    async def abandon(self, p: PreparedEdit | PreparedRelay) -> None:
        """End an edit whose response never ran (its client left first): free the ticket,
        write the 499 row. Idempotent: a no-op after ``respond`` or ``stream`` finished."""
        if isinstance(p, PreparedRelay):
            await self.relay.abandon(p)
            return
        p.ticket.release()
        await self._record(p, 499, None, 0)

    async def respond(
        self, p: PreparedEdit | PreparedRelay, base_url: str
    ) -> ImagesResponse | RelayedBody:
        """Run the edit and return its ``ImagesResponse`` (a relay's: the upstream's body)."""
        if isinstance(p, PreparedRelay):
            return await self.relay.respond(p, base_url)
        status, usage, produced = 499, None, 0
        try:
            output = await self._run(p)
            produced = len(output.images)
            usage = self._usage(p, produced, 0)
            response = await self._images_response(p, output, usage, base_url)
            status = 200
            return response
        except RetouchError as exc:
            status = exc.status
            raise
        except asyncio.CancelledError:
            raise
        except Exception:
            status = 500
            raise
        finally:
            ok = status == 200
            await self._record(p, status, usage if ok else None, produced if ok else 0)

    async def _images_response(
        self, p: PreparedEdit, output: EditOutput, usage: Usage, base_url: str
    ) -> ImagesResponse:
        params, size = p.params, p.job.size
        if params.response_format == "url":
            blobs = await asyncio.gather(
                *(self._off_loop(self._encode, img, params, size) for img in output.images)
            )
            urls = await asyncio.gather(*(self._off_loop(self._store, b, params, base_url) for b in blobs))
            data = [Image.model_construct(url=url, b64_json=None) for url in urls]
        else:
            b64s = await asyncio.gather(
                *(self._off_loop(self._encode_b64, img, params, size) for img in output.images)
            )
            data = [Image.model_construct(b64_json=b, url=None) for b in b64s]
        if params.family == "dall-e-2":
            return ImagesResponse.model_construct(created=int(time.time()), data=data)
        return ImagesResponse.model_construct(
            created=int(time.time()),
            data=data,
            **self._meta(p, jobs.background_of(output.images, params)),
            usage=_wire_usage(usage),
        )

    def _store(self, data: bytes, params: EditParams, base_url: str) -> str:
        ttl = self.settings.storage.url_ttl_s
        expires = int(time.time()) + ttl
        key = self.store.put(
            data,
            content_type=CONTENT_TYPES[params.output_format],
            extension=params.output_format,
            expires_at=expires,
        )
        direct = self.store.direct_url(key, expires)
        if direct is not None:  # an S3 presigned URL: clients fetch from the object store
            return direct
        base = (self.settings.storage.public_base_url or base_url).rstrip("/")
        return f"{base}/v1/blobs/{key}?expires={expires}&sig={self.signer.sign(key, expires)}"

    # -- streaming ------------------------------------------------------------------------------

    def stream(self, p: PreparedEdit | PreparedRelay) -> AsyncIterator[StreamItem]:
        """The stream items of a prepared edit (a relay's come from its upstream)."""
        if isinstance(p, PreparedRelay):
            return self.relay.stream(p)
        return self._stream(p)

    async def begin_stream(self, p: PreparedEdit | PreparedRelay) -> AsyncIterator[StreamItem]:
        """Start the job and return its event stream once the backend has taken it, so the
        response headers can name the replica and a refusal (the cluster's 429, a lost
        replica's 503) is a real status instead of an in-stream error. The local backend
        takes a job at once, so this returns at once there. A refusal is recorded here.
        A relay's stream comes from its upstream (asked before the 200, in ``prepare``)."""
        if isinstance(p, PreparedRelay):
            return self.relay.stream(p)
        queue: asyncio.Queue[tuple[Pixels, int]] = asyncio.Queue()
        started = asyncio.Event()

        def on_start(replica: str | None) -> None:
            p.on_start(replica)
            started.set()

        task = asyncio.ensure_future(self._run(p, lambda img, i: queue.put_nowait((img, i)), on_start))
        waiter = asyncio.ensure_future(started.wait())
        first: set[asyncio.Future[Any]] = {task, waiter}
        try:
            await asyncio.wait(first, return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:
            task.cancel()
            await self._record(p, 499, None, 0)
            raise
        finally:
            waiter.cancel()
        if task.done() and not started.is_set() and task.exception() is not None:
            exc = task.exception()
            assert exc is not None
            await self._record(p, exc.status if isinstance(exc, RetouchError) else 500, None, 0)
            raise exc
        return self._stream(p, queue, task)

    async def _stream(
        self,
        p: PreparedEdit,
        queue: asyncio.Queue[tuple[Pixels, int]] | None = None,
        task: asyncio.Future[EditOutput] | None = None,
    ) -> AsyncIterator[StreamItem]:
        """Partial images as the engine publishes them, then one completed event per output
        image; ``KEEPALIVE`` while idle. Errors after the first byte become a final
        ``ErrorEvent``. ``queue`` and ``task``: a job ``begin_stream`` started."""
        if queue is None or task is None:
            queue = asyncio.Queue()
            sink = queue
            task = asyncio.ensure_future(self._run(p, lambda img, i: sink.put_nowait((img, i))))
        status, usage, produced, partials = 499, None, 0, 0
        keepalive = self.settings.queue.keepalive_s
        getter: asyncio.Future[tuple[Pixels, int]] | None = None
        try:
            while True:
                getter = asyncio.ensure_future(queue.get())
                pending: set[asyncio.Future[Any]] = {getter, task}
                done, _ = await asyncio.wait(pending, timeout=keepalive, return_when=asyncio.FIRST_COMPLETED)
                if getter in done:
                    image, _index = getter.result()
                    yield await self._partial_event(p, image, partials)
                    partials += 1
                    self.metrics.partial_sent(p.params.served_model)
                    continue
                getter.cancel()
                if not done:
                    yield KEEPALIVE
                    continue
                break
            output = task.result()
            while not queue.empty():  # partials published just before the engine returned
                image, _index = queue.get_nowait()
                yield await self._partial_event(p, image, partials)
                partials += 1
                self.metrics.partial_sent(p.params.served_model)
            produced = len(output.images)
            usage = self._usage(p, produced, partials)
            meta = self._meta(p, jobs.background_of(output.images, p.params))
            wire_usage = _wire_usage(usage)
            completed = (
                ImageEditCompletedEvent if p.params.mode == "edit" else ImageGenCompletedEvent
            )
            for img in output.images:
                b64 = await self._off_loop(self._encode_b64, img, p.params, p.job.size)
                yield completed.model_construct(
                    b64_json=b64, created_at=int(time.time()), **meta, usage=wire_usage
                )
            status = 200
        except RetouchError as exc:
            status = exc.status
            yield ErrorEvent(error=ErrorObject.model_validate(exc.error_object()))
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("stream %s failed", p.request_id)
            status = 500
            yield ErrorEvent(error=_INTERNAL)
        finally:
            if getter is not None and not getter.done():  # a client that left mid-wait
                getter.cancel()
            if not task.done():
                task.cancel()
            p.ticket.release()  # the task may never have started
            await self._record(p, status, usage, produced)

    async def _partial_event(
        self, p: PreparedEdit, image: Pixels, index: int
    ) -> ImageEditPartialImageEvent | ImageGenPartialImageEvent:
        b64 = await self._off_loop(self._encode_b64, image, p.params, p.job.size)
        meta = self._meta(p, jobs.background_of([image], p.params))
        partial = (
            ImageEditPartialImageEvent if p.params.mode == "edit" else ImageGenPartialImageEvent
        )
        return partial.model_construct(
            b64_json=b64, created_at=int(time.time()), **meta, partial_image_index=index
        )

    # -- usage and records ----------------------------------------------------------------------

    def _usage(self, p: PreparedEdit, images_out: int, partials: int) -> Usage:
        return compute_usage(
            family=p.params.family,
            prompt=p.params.prompt,
            input_sizes=p.input_sizes,
            fidelity=p.params.input_fidelity,
            quality=p.params.quality,
            size=p.job.size,
            images_out=images_out,
            partials_sent=partials,
        )

    def _meta(self, p: PreparedEdit, background: str) -> dict[str, Any]:
        w, h = p.job.size
        return {
            "background": background,
            "output_format": p.params.output_format,
            "quality": p.params.quality,
            "size": f"{w}x{h}",
            # the newest SDKs: the effective id, safety_identifier else the deprecated user
            "safety_identifier": p.params.end_user,
        }

    async def _record(self, p: PreparedEdit, status: int, usage: Usage | None, images: int) -> None:
        if p.recorded:
            return
        p.recorded = True
        record = UsageRecord(
            request_id=p.request_id,
            key_id=p.principal.key_id,
            model=p.params.model,
            status=status,
            input_images=len(p.input_sizes),
            output_images=images,
            text_tokens=usage.text_tokens if usage else 0,
            image_tokens=usage.image_tokens if usage else 0,
            output_tokens=usage.output_tokens if usage else 0,
            latency_ms=int((time.monotonic() - p.started) * 1000),
            user=p.params.end_user,
        )
        await self._write_record(record)

    async def _write_record(self, record: UsageRecord) -> None:
        self.metrics.result(record.model, record.status)
        try:
            await asyncio.shield(self.gate.record(record))
        except Exception:  # the ledger must never turn a served edit into an error
            self.metrics.ledger_failure()
            log.exception("could not record usage for %s", record.request_id)

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


def _wire_usage(usage: Usage) -> ImagesUsage:
    return ImagesUsage.model_construct(
        input_tokens=usage.input_tokens,
        input_tokens_details=InputTokensDetails.model_construct(
            text_tokens=usage.text_tokens, image_tokens=usage.image_tokens
        ),
        output_tokens=usage.output_tokens,
        # the newest SDKs parse it; every output token of an image model is an image token
        output_tokens_details=OutputTokensDetails.model_construct(
            image_tokens=usage.output_tokens, text_tokens=0
        ),
        total_tokens=usage.total_tokens,
    )
