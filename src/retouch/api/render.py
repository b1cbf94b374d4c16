"""Protocol models -> response bytes: JSON bodies in pieces and SSE frames.

The fast path: base64 image data never goes through a JSON encoder (it needs no escaping, and
scanning megabytes of it costs more than the base64 itself). Everything else of a model is
dumped by pydantic and orjson, and the base64 is spliced in as separate pieces.
"""

from __future__ import annotations

from typing import Any

import orjson

from retouch.protocol import ErrorEvent, ErrorObject, ImagesResponse
from retouch.protocol.images import _ImageEvent

KEEPALIVE = b": ping\n\n"
"""An SSE comment: keeps proxies from closing an idle stream; clients ignore it."""

_B64 = {"b64_json"}


def images_response(response: ImagesResponse) -> list[bytes]:
    """The ``ImagesResponse`` JSON body as pieces (``PiecesResponse`` sends them in turn)."""
    head = orjson.dumps(response.model_dump(exclude={"data"}, exclude_none=True))
    pieces = [head[:-1], b',"data":[' if len(head) > 2 else b'"data":[']
    for i, image in enumerate(response.data):
        if i:
            pieces.append(b",")
        if image.b64_json is not None:
            pieces += _with_b64({}, image.b64_json)
        else:
            pieces.append(orjson.dumps({"url": image.url}))
    pieces.append(b"]}")
    return pieces


def sse_event(event: _ImageEvent | ErrorEvent) -> bytes:
    """One ``event: <type>`` / ``data: <json>`` frame."""
    if isinstance(event, ErrorEvent):
        payload = [orjson.dumps(event.model_dump())]
    else:
        rest = event.model_dump(exclude=_B64, exclude_none=True)
        payload = _with_b64({"type": rest.pop("type"), **rest}, event.b64_json)
    return b"".join([b"event: ", event.type.encode(), b"\ndata: ", *payload, b"\n\n"])


def error_frame(error: ErrorObject) -> bytes:
    return sse_event(ErrorEvent(error=error))


def _with_b64(doc: dict[str, Any], b64: bytes) -> list[bytes]:
    """``doc`` as JSON pieces with ``"b64_json"`` first, spliced in as raw bytes."""
    rest = orjson.dumps(doc)
    return [b'{"b64_json":"', b64, b'"' + (b"," if len(rest) > 2 else b"") + rest[1:]]
