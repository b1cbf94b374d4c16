"""``POST /v1/images/edits`` orchestration: validate -> decode -> engine -> encode -> respond.

No HTTP types here. ``prepare`` does everything that can fail with a 4xx (so a streaming
response never starts on a bad request); ``respond`` and ``stream`` run the engine and build the
wire payloads; both record usage exactly once, whatever happens.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar

import orjson
import pybase64

from retouch.accounting.gate import Gate, Principal, UsageRecord
from retouch.config import Settings
from retouch.engine.types import EditJob, EditOutput, Pixels
from retouch.errors import (
    InvalidImage,
    InvalidValue,
    PayloadTooLarge,
    RetouchError,
)
from retouch.imaging import decode
from retouch.imaging.encode import CONTENT_TYPES, encode, fit, flatten
from retouch.metrics import Metrics
from retouch.scheduler import Worker
from retouch.service.form import EditForm
from retouch.service.models import ModelRoutes
from retouch.service.params import EditParams, resolve_size, to_edit_params
from retouch.service.tokens import Usage, compute_usage
from retouch.storage.base import BlobStore
from retouch.storage.signing import UrlSigner

log = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass
class PreparedEdit:
    """A request that passed every check and whose pixels are decoded."""

    request_id: str
    principal: Principal
    params: EditParams
    job: EditJob
    input_sizes: list[tuple[int, int]]
    worker: Worker
    deadline: float
    started: float = field(default_factory=time.monotonic)
    replica: str | None = None
    """The engine replica that took the job (Ray backend), for ``x-retouch-replica``."""

    def on_start(self, replica: str | None) -> None:
        self.replica = replica


class EditService:
    def __init__(
        self,
        settings: Settings,
        routes: ModelRoutes,
        workers: dict[str, Worker],
        gate: Gate,
        store: BlobStore,
        signer: UrlSigner,
        metrics: Metrics | None = None,
    ) -> None:
        self.settings = settings
        self.metrics = metrics or Metrics()
        self.routes = routes
        self.workers = workers
        self.gate = gate
        self.store = store
        self.signer = signer
        threads = settings.queue.imaging_threads or None
        self._pool = ThreadPoolExecutor(threads, thread_name_prefix="imaging")

    async def _off_loop(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)

    # -- validation and decoding -------------------------------------------------------------

    async def prepare(
        self, form: EditForm, principal: Principal, request_id: str
    ) -> tuple[PreparedEdit, dict[str, str]]:
        """Validate, admit and decode. Returns the prepared edit and rate-limit headers."""
        route = self.routes.resolve(form.fields.get("model"))
        allow_url = route.family == "dall-e-2" or self.settings.storage.allow_url_for_gpt_models
        params = to_edit_params(
            form,
            model=route.requested,
            served_model=route.model.name,
            family=route.family,
            limits=self.settings.limits,
            allow_url=allow_url,
        )
        worker = self.workers[route.model.name]
        self._check_capabilities(params, form, worker)
        headers = await self.gate.admit(
            principal, model=params.model, images=params.n, served_model=params.served_model
        )
        admitted = time.monotonic()
        try:
            job, sizes = await self._off_loop(self._decode, form, params)
            await self._off_loop(worker.engine.check, job)
        except BaseException as exc:  # admitted (and counted), so it gets its ledger row
            if isinstance(exc, RetouchError):
                status = exc.status
            else:
                status = 499 if isinstance(exc, asyncio.CancelledError) else 500
            await self._write_record(
                UsageRecord(
                    request_id=request_id, key_id=principal.key_id, model=params.model,
                    status=status, input_images=len(form.images), output_images=0,
                    text_tokens=0, image_tokens=0, output_tokens=0,
                    latency_ms=int((time.monotonic() - admitted) * 1000),
                    user=params.safety_identifier or params.user,
                )
            )  # fmt: skip
            raise
        deadline = time.monotonic() + self.settings.queue.deadline_s
        prepared = PreparedEdit(request_id, principal, params, job, sizes, worker, deadline)
        return prepared, headers

    def _check_capabilities(self, params: EditParams, form: EditForm, worker: Worker) -> None:
        info = worker.engine.info
        limit = 1 if params.family == "dall-e-2" else min(info.max_images, self.settings.limits.max_images)
        if len(form.images) > limit:
            raise InvalidValue(
                f"Invalid 'image': {len(form.images)} images were sent but the model "
                f"'{params.model}' takes at most {limit}.",
                param="image",
                code="too_many_images",
            )
        if form.mask is not None and not info.supports_mask:
            raise InvalidValue(
                f"The model '{params.model}' does not support masks.", param="mask"
            )
        if params.background == "transparent" and not info.supports_transparency:
            raise InvalidValue(
                "Transparent background is not supported for this model.", param="background"
            )

    def _decode(self, form: EditForm, params: EditParams) -> tuple[EditJob, list[tuple[int, int]]]:
        limits = self.settings.limits
        dalle = params.family == "dall-e-2"
        opened = [
            decode.open_upload(u, max_pixels=limits.max_image_pixels, png_only=dalle)
            for u in form.images
        ]
        mask_opened = (
            decode.open_upload(form.mask, max_pixels=limits.max_image_pixels, png_only=True)
            if form.mask is not None
            else None
        )
        total = sum(o.width * o.height for o in opened)
        if total > limits.max_request_pixels:
            raise PayloadTooLarge(
                f"The input images have {total:,} pixels together; at most "
                f"{limits.max_request_pixels:,} are allowed per request.",
                param="image",
                code="image_too_large",
            )
        first = opened[0]
        if dalle and first.width != first.height:
            raise InvalidImage(
                f"Invalid file '{first.upload.param}': dall-e-2 needs a square image, got "
                f"{first.width}x{first.height}.",
                param=first.upload.param,
            )
        images = tuple(decode.load_pixels(o) for o in opened)
        mask = None
        if mask_opened is not None:
            mask = decode.mask_pixels(mask_opened, (first.width, first.height))
        elif dalle:
            if images[0].shape[2] != 4:
                raise InvalidImage(
                    "Invalid input image - without a mask, dall-e-2 edits the transparent "
                    "area of the image, and this image has no alpha channel.",
                    param=first.upload.param,
                )
            mask = decode.alpha_to_mask(images[0])
        size = resolve_size(params, (first.width, first.height), limits)
        job = EditJob(
            prompt=params.prompt,
            images=images,
            mask=mask,
            size=size,
            n=params.n,
            quality=params.quality,
            input_fidelity=params.input_fidelity,
            background=params.background,
            partial_images=params.partial_images,
        )
        return job, [(o.width, o.height) for o in opened]

    # -- output ---------------------------------------------------------------------------------

    def _encode_b64(self, pixels: Pixels, params: EditParams, size: tuple[int, int]) -> bytes:
        return pybase64.b64encode(self._encode(pixels, params, size))

    def _encode(self, pixels: Pixels, params: EditParams, size: tuple[int, int]) -> bytes:
        started = time.perf_counter()
        pixels = fit(pixels, size)
        if params.background == "opaque" or params.output_format == "jpeg":
            pixels = flatten(pixels)
        data = encode(pixels, params.output_format, params.output_compression)
        self.metrics.encoded(params.served_model, params.output_format, time.perf_counter() - started)
        return data

    @staticmethod
    def _background_of(images: list[Pixels], params: EditParams) -> str:
        """What the encoded images really carry: alpha survives only in png/webp."""
        if params.output_format == "jpeg" or params.background == "opaque":
            return "opaque"
        return "transparent" if any(i.shape[2] == 4 for i in images) else "opaque"

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
        meta: dict[str, Any] = {
            "background": background,
            "output_format": p.params.output_format,
            "quality": p.params.quality,
            "size": f"{w}x{h}",
        }
        if p.params.safety_identifier:
            meta["safety_identifier"] = p.params.safety_identifier
        return meta

    async def _record(self, p: PreparedEdit, status: int, usage: Usage | None, images: int) -> None:
        record = UsageRecord(
            request_id=p.request_id,
            key_id=p.principal.key_id,
            model=p.params.model,
            status=status,
            input_images=len(p.job.images),
            output_images=images,
            text_tokens=usage.text_tokens if usage else 0,
            image_tokens=usage.image_tokens if usage else 0,
            output_tokens=usage.output_tokens if usage else 0,
            latency_ms=int((time.monotonic() - p.started) * 1000),
            user=p.params.safety_identifier or p.params.user,
        )
        await self._write_record(record)

    async def settle(self, p: PreparedEdit, status: int) -> None:
        """Record a prepared edit that is refused before it runs."""
        await self._record(p, status, None, 0)

    async def _write_record(self, record: UsageRecord) -> None:
        self.metrics.result(record.model, record.status)
        try:
            await asyncio.shield(self.gate.record(record))
        except Exception:  # the ledger must never turn a served edit into an error
            self.metrics.ledger_failure()
            log.exception("could not record usage for %s", record.request_id)

    # -- non-streaming --------------------------------------------------------------------------

    async def respond(self, p: PreparedEdit, base_url: str) -> list[bytes]:
        """Run the edit and return the ``ImagesResponse`` JSON body, in pieces (joining
        megabytes of base64 into one buffer costs more than sending the pieces)."""
        status, usage, produced = 499, None, 0
        try:
            output = await p.worker.run(p.job, deadline=p.deadline, on_start=p.on_start)
            produced = len(output.images)
            usage = self._usage(p, produced, 0)
            body = await self._images_response(p, output, usage, base_url)
            status = 200
            return body
        except RetouchError as exc:
            status = exc.status
            raise
        except asyncio.CancelledError:
            raise
        except Exception:
            status = 500
            raise
        finally:
            await self._record(p, status, usage if status == 200 else None, produced if status == 200 else 0)

    async def _images_response(
        self, p: PreparedEdit, output: EditOutput, usage: Usage, base_url: str
    ) -> list[bytes]:
        params, size = p.params, p.job.size
        if params.response_format == "url":
            blobs = await asyncio.gather(
                *(self._off_loop(self._encode, img, params, size) for img in output.images)
            )
            urls = await asyncio.gather(*(self._off_loop(self._store, b, params, base_url) for b in blobs))
            items = [[orjson.dumps({"url": url})] for url in urls]
        else:
            b64s = await asyncio.gather(
                *(self._off_loop(self._encode_b64, img, params, size) for img in output.images)
            )
            items = [_with_b64({}, b) for b in b64s]
        doc: dict[str, Any] = {"created": int(time.time())}
        if params.family != "dall-e-2":
            doc.update(self._meta(p, self._background_of(output.images, params)))
            doc["usage"] = usage.wire()
        pieces = [orjson.dumps(doc)[:-1], b',"data":[']
        for i, item in enumerate(items):
            pieces += [b",", *item] if i else item
        return [*pieces, b"]}"]

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
        if direct is not None:
            return direct
        base = (self.settings.storage.public_base_url or base_url).rstrip("/")
        return f"{base}/v1/blobs/{key}?expires={expires}&sig={self.signer.sign(key, expires)}"

    # -- streaming ------------------------------------------------------------------------------

    async def begin_stream(self, p: PreparedEdit) -> AsyncIterator[bytes]:
        """Start the job and return its SSE body once a worker has taken it: the response
        headers can then name the replica, and a refusal (429 from the cluster's queue, 503)
        is a real status rather than an in-stream error. The local backend takes a job at
        admission, so this returns at once there."""
        queue: asyncio.Queue[tuple[Pixels, int]] = asyncio.Queue()
        started = asyncio.Event()

        def on_start(replica: str | None) -> None:
            p.on_start(replica)
            started.set()

        task = asyncio.ensure_future(
            p.worker.run(p.job, deadline=p.deadline,
                         on_partial=lambda img, i: queue.put_nowait((img, i)), on_start=on_start)
        )  # fmt: skip
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
        return self.stream(p, queue, task)

    async def stream(
        self,
        p: PreparedEdit,
        queue: asyncio.Queue[tuple[Pixels, int]] | None = None,
        task: asyncio.Future[EditOutput] | None = None,
    ) -> AsyncIterator[bytes]:
        """SSE frames: partial images as the engine publishes them, then one completed event
        per output image. Errors after the first byte become a final ``error`` event."""
        if queue is None or task is None:
            queue = asyncio.Queue()
            sink = queue
            task = asyncio.ensure_future(
                p.worker.run(p.job, deadline=p.deadline, on_partial=lambda img, i: sink.put_nowait((img, i)))
            )
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
                    yield b": ping\n\n"
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
            meta = self._meta(p, self._background_of(output.images, p.params))
            for img in output.images:
                b64 = await self._off_loop(self._encode_b64, img, p.params, p.job.size)
                yield _sse(
                    "image_edit.completed",
                    {"type": "image_edit.completed", "created_at": int(time.time()),
                     **meta, "usage": usage.wire()},
                    b64,
                )  # fmt: skip
            status = 200
        except RetouchError as exc:
            status = exc.status
            yield error_event(exc.error_object())
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("stream %s failed", p.request_id)
            status = 500
            yield error_event(
                {"message": "The server failed while streaming the result.", "type": "server_error",
                 "param": None, "code": "internal_error"}
            )  # fmt: skip
        finally:
            if getter is not None and not getter.done():  # a client that left mid-wait
                getter.cancel()
            if not task.done():
                task.cancel()
            await self._record(p, status, usage, produced)

    async def _partial_event(self, p: PreparedEdit, image: Pixels, index: int) -> bytes:
        b64 = await self._off_loop(self._encode_b64, image, p.params, p.job.size)
        meta = self._meta(p, self._background_of([image], p.params))
        return _sse(
            "image_edit.partial_image",
            {"type": "image_edit.partial_image", "created_at": int(time.time()),
             **meta, "partial_image_index": index},
            b64,
        )  # fmt: skip

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


def _with_b64(doc: dict[str, Any], b64: bytes) -> list[bytes]:
    """``doc`` as JSON pieces with ``"b64_json"`` spliced in: base64 needs no escaping, and
    letting a JSON encoder scan megabytes of it costs more than the base64 itself."""
    rest = orjson.dumps(doc)
    return [b'{"b64_json":"', b64, b'"' + (b"," if len(rest) > 2 else b"") + rest[1:]]


def _sse(event: str, data: dict[str, Any], b64: bytes | None = None) -> bytes:
    payload = [orjson.dumps(data)] if b64 is None else _with_b64(data, b64)
    return b"".join([b"event: ", event.encode(), b"\ndata: ", *payload, b"\n\n"])


def error_event(error: dict[str, Any]) -> bytes:
    return _sse("error", {"type": "error", "error": error})
