"""``POST /v1/images/edits`` and ``POST /v1/images/generations``: read the body under
admission, then one service call, JSON or SSE. A generation is the same pipeline with a JSON
body and no input files (``mode="generate"``).

Authentication (``auth``), idempotency (``idempotency``) and the disconnect race
(``disconnect``) are helpers with their own tests; this route only puts them in order.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response

from retouch.api import render
from retouch.api.auth import authenticate
from retouch.api.disconnect import until_disconnect
from retouch.api.forms import (
    RequestTimeout,
    UrlInputs,
    parse_json,
    read_body,
    read_generation_json,
    read_multipart,
)
from retouch.api.idempotency import Idempotency
from retouch.api.responses import PiecesResponse
from retouch.api.sse import EventStreamResponse
from retouch.config import Settings
from retouch.errors import ClientLeft, InvalidRequest, PayloadTooLarge
from retouch.integers import ascii_int
from retouch.service.admission import Admission
from retouch.service.form import EditForm
from retouch.service.params import Mode

if TYPE_CHECKING:  # annotations only: the HTTP layer does not import the service's machinery
    from retouch.bootstrap import Services
    from retouch.service.edits import EditService, PreparedEdit
    from retouch.service.relay import PreparedRelay

log = logging.getLogger(__name__)


async def create_edit(request: Request) -> Response:
    return await _create_images(request, "edit")


async def create_generation(request: Request) -> Response:
    return await _create_images(request, "generate")


async def _create_images(request: Request, mode: Mode) -> Response:
    services: Services = request.app.state.services
    edits = services.edits
    request_id: str = request.state.request_id
    principal = await authenticate(request)
    idem = Idempotency(services.gate, principal, request.headers.get("idempotency-key"))
    with edits.admission() as admission:
        try:
            urls = UrlInputs(services.fetcher, services.settings.fetch)
            form = await read_form(request, services.settings, admission, mode, urls)
            stored = await idem.replay(form)
            if stored is not None:
                return Response(stored.body, status_code=stored.status, media_type=stored.content_type,
                                headers={"idempotent-replayed": "true"})  # fmt: skip
            try:
                prepared = await until_disconnect(
                    request.receive, edits.prepare(form, principal, request_id, admission, mode)
                )
                del form  # its uploads are decoded; let them go
                request.state.extra_headers = prepared.headers
                if prepared.params.stream:  # streams are not kept for replay
                    await idem.release()
                    return await _stream(request, edits, prepared)
                response = await until_disconnect(
                    request.receive, edits.respond(prepared, str(request.base_url))
                )
                _name_replica(prepared)
                pieces = render.images_response(response)
                await idem.remember(pieces)
                return PiecesResponse(pieces, headers=prepared.headers)
            finally:
                await idem.release()  # a no-op unless the key is still held (failure)
        except ClientLeft:
            await edits.abandoned(admission, principal, request_id)
            raise
        finally:
            if admission.route is not None:  # the metrics' model label, refusals included
                request.state.model = admission.route.model.name


async def _stream(
    request: Request, edits: EditService, prepared: PreparedEdit | PreparedRelay
) -> Response:
    # Waits until the backend has taken the job (at once locally): the headers name the
    # replica, and a cluster that is full answers 429 before the 200 goes out.
    events = await until_disconnect(request.receive, edits.begin_stream(prepared))
    _name_replica(prepared)
    return EventStreamResponse(events, lambda: edits.abandon(prepared), headers=prepared.headers)


def _name_replica(prepared: PreparedEdit | PreparedRelay) -> None:
    replica = getattr(prepared, "replica", None)  # a relay has no replica of ours
    if replica:
        prepared.headers["x-retouch-replica"] = replica


async def read_form(
    request: Request,
    settings: Settings,
    admission: Admission,
    mode: Mode = "edit",
    urls: UrlInputs | None = None,
) -> EditForm:
    """The body as an ``EditForm``, with every cap enforced as it streams in and the queue
    ticket taken as soon as the model is known. A client that hangs up is ``ClientLeft``.
    http(s) ``image_url``s of a JSON body are fetched after the receipt deadline (it is the
    client's time to send, not ours to download), unless ``fetch.image_urls`` is off."""
    limits = settings.limits
    length = ascii_int(request.headers.get("content-length"))
    if length is not None and length > limits.max_body_bytes:
        raise PayloadTooLarge(
            f"The request body ({length:,} bytes) is larger than the "
            f"{limits.max_body_bytes:,} bytes allowed."
        )
    content_type = request.headers.get("content-type", "")
    media = content_type.split(";", 1)[0].strip().lower()
    try:
        async with asyncio.timeout(limits.receipt_timeout_s):
            if mode == "generate":
                if media != "application/json":  # OpenAI's generations take JSON only
                    raise InvalidRequest(
                        "Invalid Content-Type: image generations take a JSON body "
                        "(application/json).",
                        code="unsupported_content_type",
                    )
                return await read_generation_json(request.stream(), limits, admission)
            if media == "multipart/form-data":
                return await read_multipart(request.stream(), content_type, limits, admission)
            if media != "application/json":
                raise InvalidRequest(
                    "Invalid Content-Type: send multipart/form-data (or application/json with "
                    "'images' as image URLs).",
                    code="unsupported_content_type",
                )
            body = await read_body(request.stream(), limits, admission)
    except TimeoutError:
        raise RequestTimeout(
            f"The request body was not received within {limits.receipt_timeout_s:.0f} s."
        ) from None
    except ClientDisconnect:
        raise ClientLeft() from None
    return await parse_json(body, limits, admission, urls if settings.fetch.image_urls else None)
