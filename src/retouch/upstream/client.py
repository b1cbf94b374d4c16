"""HTTP to an OpenAI-compatible upstream: the request, its retries, its errors, its events.

The request is rebuilt from what the client sent: the text fields as they came (the model name
swapped where configured) and the uploaded files' original bytes, never re-encoded.

Retries: only what the upstream cannot have processed is sent again (the edit is not
idempotent: a request the upstream saw may have been billed): connection failures before the
request went out, ``429`` rate limits (not ``insufficient_quota``, not ``x-should-retry:
false``) and ``503``, after the upstream's ``Retry-After`` when it is short enough, else an
exponential backoff with jitter (the official SDK's curve).

Errors, in OpenAI's envelope (``errors.Upstream*``): the upstream's 4xx passes through with its
message, type, param and code (a 429 with its retry hints); 401 means *our* upstream key is
wrong, not the client's, so it becomes a 502; 503 stays 503; 504 and timeouts become 504;
other 5xx, protocol errors and unreachable upstreams become 502.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import re
from collections.abc import AsyncGenerator, AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Any

import httpx
import orjson

from retouch import __version__
from retouch.config import UpstreamSettings
from retouch.errors import (
    RetouchError,
    UpstreamError,
    UpstreamRejected,
    UpstreamTimeout,
    UpstreamUnavailable,
)

log = logging.getLogger(__name__)
_RETRY_HINTS = ("retry-after", "retry-after-ms", "x-should-retry")
_ERROR_BODY_CAP = 64 * 1024
_TYPE = re.compile(rb'"type"\s*:\s*"([A-Za-z0-9_.]{1,64})"')


@dataclass(frozen=True)
class RelayRequest:
    path: str
    """Below the base URL, e.g. ``/images/edits``."""
    fields: Mapping[str, str]
    files: tuple[tuple[str, str, bytes, str], ...]
    """(multipart field name, filename, the uploaded bytes, content type) in wire order."""
    request_id: str
    json: Mapping[str, object] | None = None
    """Sent as a JSON body instead (generations, which OpenAI takes as JSON only)."""


@dataclass(frozen=True)
class RelayEvent:
    """One server-sent event from the upstream, kept as bytes so it is relayed unchanged."""

    event: str
    """The ``event:`` name; empty for comment-only frames (keep-alives)."""
    frame: bytes
    """The whole frame, ending in a blank line."""
    data: bytes
    """The ``data:`` lines, joined."""


@dataclass(frozen=True)
class RelayedBody:
    """An upstream's ``ImagesResponse`` body, to be sent as it is (links already mirrored)."""

    body: bytes


class UpstreamClient:
    def __init__(
        self, name: str, settings: UpstreamSettings, environ: Mapping[str, str] = os.environ
    ) -> None:
        self.name = name
        self.settings = settings
        key = environ.get(settings.api_key_env)
        self._headers = {"user-agent": f"retouch/{__version__}", **settings.headers}
        if key:
            self._headers["authorization"] = f"Bearer {key}"
        self._http = httpx.AsyncClient(
            timeout=httpx.Timeout(settings.timeout_s, connect=settings.connect_timeout_s),
            limits=httpx.Limits(max_connections=settings.concurrency, max_keepalive_connections=settings.concurrency),
        )  # fmt: skip

    @property
    def base_url(self) -> str:
        return self.settings.base_url

    async def post(self, request: RelayRequest) -> bytes:
        """A non-streaming request: the upstream's 200 body, as sent."""
        response = await self.open(request)
        try:
            return await read_capped(response, self.settings.max_response_bytes)
        except httpx.TimeoutException:
            raise self._timeout() from None
        except httpx.HTTPError as exc:
            raise self._broken(exc) from None
        finally:
            await response.aclose()

    async def open(self, request: RelayRequest) -> httpx.Response:
        """Send ``request`` (with retries) and return the 200 response with its body unread;
        the caller closes it. Any other status raises the mapped error."""
        retries = self.settings.max_retries
        for attempt in range(retries + 1):
            try:
                response = await self._http.send(self._build(request), stream=True)
            except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
                if attempt < retries:  # the request never left: safe to send again
                    await asyncio.sleep(backoff(attempt))
                    continue
                raise UpstreamError(
                    f"The upstream of '{self.name}' could not be reached ({type(exc).__name__}).",
                    code="upstream_unreachable",
                ) from None
            except httpx.TimeoutException:
                raise self._timeout() from None
            except httpx.HTTPError as exc:
                raise self._broken(exc) from None
            if response.status_code == 200:
                return response
            try:
                body = await read_capped(response, _ERROR_BODY_CAP, truncate=True)
            except httpx.HTTPError:
                body = b""
            finally:
                await response.aclose()
            error = error_from_response(response.status_code, response.headers, body)
            delay = self._retry_delay(response, error, attempt)
            if delay is None:
                raise error
            log.info(
                "upstream %s answered %d; retry %d in %.2f s",
                self.name, response.status_code, attempt + 1, delay,
            )  # fmt: skip
            await asyncio.sleep(delay)
        raise AssertionError("unreachable")  # the loop always returns or raises

    def _build(self, request: RelayRequest) -> httpx.Request:
        files = [(name, (filename, data, ctype)) for name, filename, data, ctype in request.files]
        headers = {**self._headers, "x-client-request-id": request.request_id}
        if request.json is not None:
            return self._http.build_request(
                "POST", self.base_url + request.path, json=dict(request.json), headers=headers
            )
        return self._http.build_request(
            "POST", self.base_url + request.path, data=dict(request.fields), files=files,
            headers=headers,
        )  # fmt: skip

    def _retry_delay(
        self, response: httpx.Response, error: RetouchError, attempt: int
    ) -> float | None:
        if attempt >= self.settings.max_retries or response.status_code not in (429, 503):
            return None
        if response.headers.get("x-should-retry", "").lower() == "false":
            return None
        if error.code == "insufficient_quota":
            return None
        hinted = retry_after_s(response.headers)
        if hinted is None:
            return backoff(attempt)
        return hinted if hinted <= self.settings.max_retry_after_s else None

    def _timeout(self) -> UpstreamTimeout:
        return UpstreamTimeout(
            f"The upstream of '{self.name}' did not answer within "
            f"{self.settings.timeout_s:g} s."
        )

    def _broken(self, exc: Exception) -> UpstreamError:
        return UpstreamError(
            f"The connection to the upstream of '{self.name}' failed ({type(exc).__name__})."
        )

    async def events(self, response: httpx.Response) -> AsyncGenerator[RelayEvent, None]:
        """The SSE frames of an open streaming response, as they arrive."""
        try:
            async for event in parse_events(response.aiter_bytes(), self.settings.max_response_bytes):
                yield event
        except httpx.TimeoutException:
            raise self._timeout() from None
        except httpx.HTTPError as exc:
            raise self._broken(exc) from None

    async def close(self) -> None:
        await self._http.aclose()


def backoff(attempt: int) -> float:
    """The official SDK's curve: 0.5 s doubling up to 8 s, minus up to 25 % jitter."""
    delay = min(0.5 * float(1 << min(attempt, 16)), 8.0)
    return delay * (1 - 0.25 * random.random())


def retry_after_s(headers: Mapping[str, str]) -> float | None:
    for name, scale in (("retry-after-ms", 0.001), ("retry-after", 1.0)):
        raw = headers.get(name, "").strip()
        try:
            value = float(raw) * scale
        except ValueError:
            continue
        if value >= 0:
            return value
    return None


def error_from_response(status: int, headers: Mapping[str, str], body: bytes) -> RetouchError:
    error = _error_object(body)
    message = str(error.get("message") or f"The upstream answered HTTP {status}.")
    hints = {k: headers[k] for k in _RETRY_HINTS if k in headers}
    if status == 401:
        return UpstreamError(
            f"The upstream refused this server's credentials: {message}",
            code="upstream_auth_failed",
        )
    if 400 <= status < 500:
        return UpstreamRejected(
            status, message, type=_str(error.get("type")), param=_str(error.get("param")),
            code=_str(error.get("code")), headers=hints,
        )  # fmt: skip
    if status == 503:
        return UpstreamUnavailable(f"The upstream is unavailable: {message}", headers=hints)
    if status == 504:
        return UpstreamTimeout(f"The upstream timed out: {message}")
    return UpstreamError(f"The upstream failed (HTTP {status}): {message}")


def _error_object(body: bytes) -> dict[str, Any]:
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError:
        return {}
    error = doc.get("error") if isinstance(doc, dict) else None
    return error if isinstance(error, dict) else {}


def _str(value: object) -> str | None:
    return None if value is None else str(value)


async def read_capped(response: httpx.Response, cap: int, *, truncate: bool = False) -> bytes:
    body = bytearray()
    async for chunk in response.aiter_bytes():
        body += chunk
        if len(body) > cap:
            if truncate:
                return bytes(body[:cap])
            raise UpstreamError(f"The upstream's response is larger than {cap:,} bytes.")
    return bytes(body)


async def parse_events(chunks: AsyncIterator[bytes], cap: int) -> AsyncIterator[RelayEvent]:
    """Split a byte stream into SSE frames (LF or CRLF line ends). A frame larger than ``cap``
    is an upstream error: it would otherwise grow without bound."""
    buffer = bytearray()
    scanned = 0
    async for chunk in chunks:
        buffer += chunk
        while True:
            end, sep = _frame_end(buffer, max(0, scanned - 3))
            if end < 0:
                scanned = len(buffer)
                if scanned > cap:
                    raise UpstreamError(f"An upstream event is larger than {cap:,} bytes.")
                break
            raw = bytes(buffer[: end + sep])
            del buffer[: end + sep]
            scanned = 0
            yield _event(raw)
    if buffer.strip():
        yield _event(bytes(buffer) + b"\n\n")


def _frame_end(buffer: bytearray, start: int) -> tuple[int, int]:
    lf = buffer.find(b"\n\n", start)
    crlf = buffer.find(b"\r\n\r\n", start)
    if crlf >= 0 and (lf < 0 or crlf < lf):
        return crlf, 4
    return lf, 2


def _event(raw: bytes) -> RelayEvent:
    name = ""
    data: list[bytes] = []
    for line in raw.splitlines():
        field, _, value = line.partition(b":")
        value = value[1:] if value.startswith(b" ") else value
        if field == b"event":
            name = value.decode("utf-8", "replace")
        elif field == b"data":
            data.append(value)
    joined = b"\n".join(data)
    if not name and joined:  # servers that send only data: lines name the event in "type"
        match = _TYPE.search(joined, 0, 512)
        name = match[1].decode("ascii", "replace") if match else ""
    return RelayEvent(name, raw, joined)
