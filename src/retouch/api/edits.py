"""``POST /v1/images/edits``: read the body under admission, then one service call, JSON or SSE.

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
from retouch.api.forms import RequestTimeout, read_json, read_multipart
from retouch.api.idempotency import Idempotency
from retouch.api.responses import PiecesResponse
from retouch.api.sse import EventStreamResponse
from retouch.config import Settings
from retouch.errors import ClientLeft, InvalidRequest, PayloadTooLarge
from retouch.service.admission import Admission
from retouch.service.edits import EditService, PreparedEdit
from retouch.service.form import EditForm

if TYPE_CHECKING:
    from retouch.bootstrap import Services

log = logging.getLogger(__name__)


async def create_edit(request: Request) -> Response:
    services: Services = request.app.state.services
    edits = services.edits
    request_id: str = request.state.request_id
    principal = await authenticate(request)
    idem = Idempotency(services.gate, principal, request.headers.get("idempotency-key"))
    with edits.admission() as admission:
        try:
            form = await read_form(request, services.settings, admission)
            stored = await idem.replay(form)
            if stored is not None:
                return Response(stored.body, status_code=stored.status, media_type=stored.content_type,
                                headers={"idempotent-replayed": "true"})  # fmt: skip
            try:
                prepared = await until_disconnect(
                    request.receive, edits.prepare(form, principal, request_id, admission)
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


async def _stream(request: Request, edits: EditService, prepared: PreparedEdit) -> Response:
    # Waits until the backend has taken the job (at once locally): the headers name the
    # replica, and a cluster that is full answers 429 before the 200 goes out.
    events = await until_disconnect(request.receive, edits.begin_stream(prepared))
    _name_replica(prepared)
    return EventStreamResponse(events, lambda: edits.abandon(prepared), headers=prepared.headers)


def _name_replica(prepared: PreparedEdit) -> None:
    if prepared.replica:
        prepared.headers["x-retouch-replica"] = prepared.replica


async def read_form(request: Request, settings: Settings, admission: Admission) -> EditForm:
    """The body as an ``EditForm``, with every cap enforced as it streams in and the queue
    ticket taken as soon as the model is known. A client that hangs up is ``ClientLeft``."""
    limits = settings.limits
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > limits.max_body_bytes:
        raise PayloadTooLarge(
            f"The request body ({int(length):,} bytes) is larger than the "
            f"{limits.max_body_bytes:,} bytes allowed."
        )
    content_type = request.headers.get("content-type", "")
    media = content_type.split(";", 1)[0].strip().lower()
    try:
        async with asyncio.timeout(limits.receipt_timeout_s):
            if media == "multipart/form-data":
                return await read_multipart(request.stream(), content_type, limits, admission)
            if media == "application/json":
                return await read_json(request.stream(), limits, admission)
            raise InvalidRequest(
                "Invalid Content-Type: send multipart/form-data (or application/json with "
                "'images' as data URLs).",
                code="unsupported_content_type",
            )
    except TimeoutError:
        raise RequestTimeout(
            f"The request body was not received within {limits.receipt_timeout_s:.0f} s."
        ) from None
    except ClientDisconnect:
        raise ClientLeft() from None
