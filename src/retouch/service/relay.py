"""The relay request path: validate -> admit -> check headers -> forward -> mirror -> respond.

What ``EditService`` does for local engines, for a backend that computes no pixels
(``retouch.upstream``). Everything around the engine stays the same: retouch's own validation
(the family's rules), keys, rate limits and quotas (``Gate.admit``), the byte and pixel caps
(image headers are read, pixels are not decoded), the ledger (the upstream's own ``usage``,
recorded for the retouch key that made the request) and signed links.

* Faithful relay: the client's text fields go upstream as they came (the model name swapped
  when the backend names one) with the uploaded bytes; the upstream's JSON body comes back
  unchanged unless it holds links.
* Mirrored links: each ``url`` in the upstream's answer is fetched at once (SSRF-safe, the
  upstream's own origin allowed) into retouch's blob store and replaced by retouch's signed
  link, which outlives the upstream's.
* Streams: the upstream is asked before the 200 goes out, so its 4xx/429/5xx keep their
  status; then its events are relayed as they arrive (``: ping`` while it is silent). A
  client that leaves closes the upstream connection, which cancels the upstream's work.
* The queue ticket comes from the same admission as for local engines (``service.admission``,
  which also does overflow); the upstream ``slot`` is held while a request is in flight.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
import orjson

from retouch.accounting.gate import Gate, Principal, UsageRecord
from retouch.config import Settings
from retouch.errors import (
    RetouchError,
    UpstreamError,
)
from retouch.imaging import decode
from retouch.imaging.encode import CONTENT_TYPES
from retouch.net.fetch import Fetcher, FetchFailed, FetchPolicy
from retouch.protocol import ErrorEvent, ErrorObject
from retouch.scheduler.base import Ticket
from retouch.scheduler.upstream import UpstreamBackend
from retouch.service import jobs
from retouch.service.admission import Admission
from retouch.service.form import EditForm, Upload
from retouch.service.params import EditParams
from retouch.service.stream import KEEPALIVE, StreamItem
from retouch.storage.base import BlobStore
from retouch.storage.signing import UrlSigner
from retouch.upstream import RelayedBody, RelayEvent, RelayRequest

log = logging.getLogger(__name__)
OffLoop = Callable[..., Awaitable[Any]]
_FORMATS = {"PNG": "png", "JPEG": "jpeg", "WEBP": "webp"}
_INTERNAL = ErrorObject(
    message="The server failed while relaying the stream.", type="server_error", param=None,
    code="internal_error",
)  # fmt: skip


@dataclass
class PreparedRelay:
    request_id: str
    principal: Principal
    params: EditParams
    backend: UpstreamBackend
    ticket: Ticket
    request: RelayRequest
    input_images: int
    deadline: float
    headers: dict[str, str]
    """The key's ``x-ratelimit-*`` headers as of admission."""
    started: float = field(default_factory=time.monotonic)
    response: httpx.Response | None = None
    """The upstream's open streaming response (streams only)."""
    held: contextlib.AsyncExitStack = field(default_factory=contextlib.AsyncExitStack)
    """The upstream slot a stream holds until it ends."""
    recorded: bool = False


@dataclass(frozen=True)
class _Usage:
    text_tokens: int = 0
    image_tokens: int = 0
    output_tokens: int = 0


class RelayService:
    def __init__(
        self,
        settings: Settings,
        gate: Gate,
        store: BlobStore,
        signer: UrlSigner,
        fetcher: Fetcher,
        off_loop: OffLoop,
    ) -> None:
        self.settings = settings
        self.gate = gate
        self.store = store
        self.signer = signer
        self.fetcher = fetcher
        self._off_loop = off_loop
        self._cleanups: set[asyncio.Task[None]] = set()

    # -- admission ------------------------------------------------------------------------------

    async def prepare(
        self, form: EditForm, params: EditParams, backend: UpstreamBackend,
        admission: Admission, principal: Principal, request_id: str, *, generation: bool = False,
    ) -> PreparedRelay:  # fmt: skip
        """Ask the gate, check the inputs' headers, take the ticket over from ``admission``;
        for a stream, also send the request (so the upstream's refusal keeps its status).
        ``generation``: relay to ``/images/generations`` (JSON) instead of ``/images/edits``."""
        assert admission.ticket is not None
        headers = await self.gate.admit(
            principal, model=params.model, images=params.n, served_model=params.served_model
        )
        admitted = time.monotonic()
        deadline = admitted + self.settings.queue.deadline_s  # from the end of the upload
        p: PreparedRelay | None = None
        try:
            if form.images:
                await self._off_loop(check_inputs, form, params, self.settings)
            request = relay_request(form, backend, request_id, generation=generation)
            p = PreparedRelay(
                request_id, principal, params, backend, admission.hand_over(), request,
                len(form.images), deadline, headers,
            )  # fmt: skip
            if params.stream:
                await p.held.enter_async_context(backend.slot(deadline))
                p.response = await backend.client.open(request)
            return p
        except BaseException as exc:
            admission.recorded = True
            status = _status_of(exc)
            if p is not None:
                await self._close(p)
                await self._record(p, status, None, 0)
            else:
                await self._write(
                    UsageRecord(
                        request_id=request_id, key_id=principal.key_id, model=params.model,
                        status=status, input_images=len(form.images), output_images=0,
                        text_tokens=0, image_tokens=0, output_tokens=0,
                        latency_ms=int((time.monotonic() - admitted) * 1000),
                        user=params.safety_identifier or params.user,
                    )
                )  # fmt: skip
            raise

    async def abandon(self, p: PreparedRelay) -> None:
        """End a relay whose response never ran or has ended; idempotent."""
        await self._close(p)
        await self._record(p, 499, None, 0)

    # -- non-streaming --------------------------------------------------------------------------

    async def respond(self, p: PreparedRelay, base_url: str) -> RelayedBody:
        status, usage, produced = 499, None, 0
        try:
            async with p.backend.slot(p.deadline):
                body = await p.backend.client.post(p.request)
            doc = await self._off_loop(_load_response, body)
            data = doc["data"]
            produced = len(data)
            usage = _usage_of(doc)
            if any(isinstance(item.get("url"), str) for item in data):
                body = await self._mirror(p, doc, base_url)
            status = 200
            return RelayedBody(body)
        except RetouchError as exc:
            status = exc.status
            raise
        except asyncio.CancelledError:
            raise
        except Exception:
            status = 500
            raise
        finally:
            p.ticket.release()
            await self._record(p, status, usage, produced if status == 200 else 0)

    async def _mirror(self, p: PreparedRelay, doc: dict[str, Any], base_url: str) -> bytes:
        policy = FetchPolicy.from_settings(
            self.settings.fetch, max_bytes=self.settings.limits.max_image_bytes
        ).allowing_origin_of(p.backend.settings.base_url)
        items = [item for item in doc["data"] if isinstance(item.get("url"), str)]
        links = await asyncio.gather(*(self._mirror_one(i["url"], policy, base_url) for i in items))
        for item, link in zip(items, links, strict=True):
            item["url"] = link
        body: bytes = await self._off_loop(orjson.dumps, doc)
        return body

    async def _mirror_one(self, url: str, policy: FetchPolicy, base_url: str) -> str:
        try:
            fetched = await self.fetcher.get(url, policy)
        except FetchFailed as exc:
            raise UpstreamError(
                f"The upstream's image link could not be mirrored: {exc.message}.",
                code="upstream_mirror_failed",
            ) from None
        ext = _FORMATS.get(decode.sniff(fetched.data) or "")
        if ext is None:  # never serve what we did not check (HTML, SVG, ...)
            raise UpstreamError(
                "The upstream's image link did not hold a PNG, JPEG or WebP image.",
                code="upstream_mirror_failed",
            )
        link: str = await self._off_loop(self._store, fetched.data, ext, base_url)
        return link

    def _store(self, data: bytes, ext: str, base_url: str) -> str:
        expires = int(time.time()) + self.settings.storage.url_ttl_s
        key = self.store.put(data, content_type=CONTENT_TYPES[ext], extension=ext, expires_at=expires)
        base = (self.settings.storage.public_base_url or base_url).rstrip("/")
        return f"{base}/v1/blobs/{key}?expires={expires}&sig={self.signer.sign(key, expires)}"

    # -- streaming ------------------------------------------------------------------------------

    async def stream(self, p: PreparedRelay) -> AsyncIterator[StreamItem]:
        """The upstream's SSE frames as they arrive (``RelayEvent``, sent unchanged);
        ``KEEPALIVE`` while it is silent; usage from its ``*.completed`` events."""
        assert p.response is not None
        events = p.backend.client.events(p.response)
        pending: asyncio.Future[RelayEvent | None] | None = None
        status, usage, produced, failed = 499, None, 0, False
        keepalive = self.settings.queue.keepalive_s
        try:
            while True:
                if pending is None:
                    pending = asyncio.ensure_future(anext(events, None))
                done, _ = await asyncio.wait({pending}, timeout=keepalive)
                if not done:
                    yield KEEPALIVE
                    continue
                event, pending = pending.result(), None
                if event is None:
                    break
                if event.event.endswith(".completed"):
                    produced += 1
                    usage = await self._off_loop(_usage_of_event, event.data) or usage
                elif event.event == "error":
                    failed = True
                yield event
            if not produced and not failed:
                raise UpstreamError("The upstream ended the stream without an image.")
            status = 502 if failed else 200
        except RetouchError as exc:
            status = exc.status
            yield ErrorEvent(error=ErrorObject.model_validate(exc.error_object()))
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("relay stream %s failed", p.request_id)
            status = 500
            yield ErrorEvent(error=_INTERNAL)
        finally:
            if pending is not None:
                pending.cancel()
            # A stream whose client left may be cancelled through an anyio cancel scope, which
            # cancels every await in here again: the clean-up runs as its own task.
            cleanup = asyncio.ensure_future(
                self._finish_stream(p, events, pending, status, usage, produced)
            )
            self._cleanups.add(cleanup)
            cleanup.add_done_callback(self._cleanups.discard)
            await asyncio.shield(cleanup)

    async def _finish_stream(
        self, p: PreparedRelay, events: AsyncGenerator[RelayEvent, None],
        pending: asyncio.Future[RelayEvent | None] | None, status: int, usage: _Usage | None,
        produced: int,
    ) -> None:  # fmt: skip
        if pending is not None:
            await asyncio.gather(pending, return_exceptions=True)
        await events.aclose()
        await self._close(p)
        await self._record(p, status, usage, produced if status == 200 else 0)

    async def _close(self, p: PreparedRelay) -> None:
        if p.response is not None:
            await asyncio.shield(p.response.aclose())
        await p.held.aclose()
        p.ticket.release()

    # -- ledger ---------------------------------------------------------------------------------

    async def _record(
        self, p: PreparedRelay, status: int, usage: _Usage | None, images: int
    ) -> None:
        if p.recorded:
            return
        p.recorded = True
        u = usage or _Usage()
        await self._write(
            UsageRecord(
                request_id=p.request_id, key_id=p.principal.key_id, model=p.params.model,
                status=status, input_images=p.input_images, output_images=images,
                text_tokens=u.text_tokens, image_tokens=u.image_tokens,
                output_tokens=u.output_tokens,
                latency_ms=int((time.monotonic() - p.started) * 1000),
                user=p.params.safety_identifier or p.params.user,
            )
        )  # fmt: skip

    async def _write(self, record: UsageRecord) -> None:
        try:
            await asyncio.shield(self.gate.record(record))
        except Exception:  # the ledger must never turn a served edit into an error
            log.exception("could not record usage for %s", record.request_id)


_INT_FIELDS = frozenset({"n", "output_compression", "partial_images", "frame_count",
                         "frame_duration_ms"})  # fmt: skip
_BOOL_FIELDS = frozenset({"stream"})


def relay_request(
    form: EditForm, backend: UpstreamBackend, request_id: str, *, generation: bool = False
) -> RelayRequest:
    """The client's fields and files as the upstream will get them: edits as multipart, which
    every OpenAI-compatible server takes (the SDK's spellings ``image`` / ``image[]``);
    generations as the JSON body OpenAI takes for them, numbers and booleans typed again
    (the form keeps every field as text; validation already checked them)."""
    fields = dict(form.fields)
    if backend.settings.model is not None:
        fields["model"] = backend.settings.model
    if generation:
        doc: dict[str, object] = {}
        for key, value in fields.items():
            if key in _INT_FIELDS:
                doc[key] = int(value)
            elif key in _BOOL_FIELDS:
                doc[key] = value.strip().lower() == "true"
            else:
                doc[key] = value
        return RelayRequest("/images/generations", fields, (), request_id, json=doc)
    name = "image" if len(form.images) == 1 else "image[]"
    files = [(name, u) for u in form.images] + ([("mask", form.mask)] if form.mask else [])
    parts = tuple(
        (field_name, u.filename or _filename(u), u.data, u.content_type or "application/octet-stream")
        for field_name, u in files
    )  # fmt: skip
    return RelayRequest("/images/edits", fields, parts, request_id)


def _filename(upload: Upload) -> str:
    """A name for a part that came without one (a JSON data URL or a fetched image)."""
    ext = {"image/jpeg": "jpg", "image/webp": "webp"}.get(upload.content_type or "", "png")
    return f"{upload.param.replace('[', '_').replace(']', '')}.{ext}"


def check_inputs(form: EditForm, params: EditParams, settings: Settings) -> None:
    """The same byte-cheap checks as for local engines, from image headers only: formats,
    per-image and per-request pixel caps, dall-e-2's square PNG. Pixels are not decoded."""
    jobs.open_inputs(form, params, settings.limits)


def _load_response(body: bytes) -> dict[str, Any]:
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError:
        doc = None
    if not isinstance(doc, dict) or not isinstance(doc.get("data"), list):
        raise UpstreamError("The upstream's answer is not an ImagesResponse.")
    if not all(isinstance(item, dict) for item in doc["data"]):
        raise UpstreamError("The upstream's answer is not an ImagesResponse.")
    return doc


def _usage_of(doc: dict[str, Any]) -> _Usage | None:
    usage = doc.get("usage")
    if not isinstance(usage, dict):
        return None
    details = usage.get("input_tokens_details")
    details = details if isinstance(details, dict) else {}
    try:
        text = int(details.get("text_tokens", 0))
        image = int(details.get("image_tokens", 0))
        if not details:
            text = int(usage.get("input_tokens", 0))
        return _Usage(text, image, int(usage.get("output_tokens", 0)))
    except (TypeError, ValueError):
        return None


def _usage_of_event(data: bytes) -> _Usage | None:
    try:
        doc = orjson.loads(data)
    except orjson.JSONDecodeError:
        return None
    return _usage_of(doc) if isinstance(doc, dict) else None


def _status_of(exc: BaseException) -> int:
    if isinstance(exc, RetouchError):
        return exc.status
    return 499 if isinstance(exc, asyncio.CancelledError) else 500
