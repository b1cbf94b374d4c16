"""The HTTP server: uvicorn with a guarded h11 protocol, configured in one place.

``server_config`` builds the ``uvicorn.Config`` that ``retouch serve`` runs and that the tests
start (``tests/live.py``), so the hostile-client tests exercise the production configuration.

uvicorn alone leaves three gaps that a public server must close (see README, "The HTTP
server"); ``GuardedH11Protocol`` closes them in the protocol, below the ASGI app, where a
client that never finishes its request head can be seen at all:

* **Header deadline.** uvicorn's keep-alive timer is reset by every byte, and there is no
  timer while a request head trickles in, so a slow-loris client holds a connection forever.
  Here a connection must deliver a complete request head within ``header_timeout_s`` of
  opening (or of its previous response ending); otherwise it gets a 408 and is closed.
* **An unread body after an early answer.** The app may answer before the request body is
  in: a 429 as soon as the ``model`` field is read (so a refusal costs no upload parsing),
  413 on ``Content-Length``, the 408 receipt deadline. uvicorn then keeps the connection and
  feeds every further body byte through h11, so a trickling client holds it forever; closing
  at once instead makes the kernel answer the bytes still arriving with a reset, and a client
  still writing its upload (every HTTP/1.1 client library) loses the answer it was sent.
  Here the rest of the body is dropped in the kernel, uncopied and unparsed
  (``api.drain``), for at most ``linger_s``, and closed when the client falls silent for
  ``linger_idle_s``. When its length is known (``Content-Length``, at most 64 MiB) and the
  answer is not a 408 or 413, the connection then serves the client's next request: a refused
  client retries without a new connection, as nginx does after discarding a body. Otherwise
  the answer says ``connection: close``, the server half-closes (FIN after the answer) and
  drops what comes until the client closes: the lingering close of Apache and nginx.
* **Liveness ahead of queued work.** ``GET /healthz`` is answered in the protocol as its
  bytes are read (the same body and standard headers as the app's route; no access-log line
  or request metrics), like a proxy's monitor URI. Through the app, a probe would be a task
  queued behind every request the same read brought in: under a storm of refused retries,
  tens of them. ``/readyz`` stays in the app: readiness is about the engines.
* **Connection cap.** ``limit_concurrency`` is checked only when a request head is complete,
  so half-sent heads exhaust file descriptors first and then nothing (``/healthz`` included)
  is accepted. Here, at ``max_connections``, the oldest connection still sending its head is
  dropped to make room; when every connection is busy with a request, the newcomer gets a 503.

Errors the HTTP layer answers itself (a malformed request line, headers too large, a body
longer than declared, which reads as a bad next request) use OpenAI's envelope, like the app.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import resource
import weakref
from collections.abc import Iterable
from typing import Any, ClassVar, cast

import h11
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol
from uvicorn.server import ServerState

from retouch.api.drain import BodyDrain
from retouch.api.errors import error_bytes
from retouch.api.middleware import STANDARD_HEADERS, new_request_id
from retouch.config import ServerSettings, Settings
from retouch.errors import RetouchError, ServiceUnavailable

log = logging.getLogger(__name__)

_RESERVED_FDS = 128
"""File descriptors kept for the server itself (database, blobs, models, logs)."""
_AUTO_MAX_CONNECTIONS = 10_000


class HeadTimeout(RetouchError):
    status = 408
    type = "invalid_request_error"
    code = "request_timeout"


class BadHttpRequest(RetouchError):
    status = 400
    type = "invalid_request_error"
    code = "invalid_http_request"


class HeadTooLarge(BadHttpRequest):
    status = 431
    code = "request_header_too_large"


class TooManyConnections(ServiceUnavailable):
    code = "too_many_connections"


_REASONS = {400: b"Bad Request", 408: b"Request Timeout", 431: b"Request Header Fields Too Large",
            501: b"Not Implemented", 503: b"Service Unavailable"}  # fmt: skip


def _raw_response(exc: RetouchError) -> bytes:
    """A complete HTTP/1.1 response in the envelope, ending the connection. Written raw: the
    h11 state machine may be in ERROR, and the connection closes right after anyway."""
    body = error_bytes(exc)
    headers = [
        b"content-type: application/json",
        b"content-length: %d" % len(body),
        b"connection: close",
        b"x-request-id: " + new_request_id().encode(),
        b"x-content-type-options: nosniff",
        *(f"{k}: {v}".encode("latin-1") for k, v in exc.headers.items()),
    ]
    reason = _REASONS.get(exc.status, b"Error")
    return b"HTTP/1.1 %d %s\r\n%s\r\n\r\n%s" % (exc.status, reason, b"\r\n".join(headers), body)


_SKIP_MAX_BYTES = 64 * 1024 * 1024
"""Most unread body skipped to keep a connection after an early answer; a longer rest (the
body of a 413) lingers and closes."""
_CLOSE_AFTER = frozenset({408, 413})
"""Early answers after which the connection closes whatever the body: the client is too slow
(408) or sends too much (413)."""


def _content_length(headers: Iterable[tuple[bytes, bytes]]) -> int | None:
    """The request's body length when it is framed by ``Content-Length`` (h11 has checked it)."""
    length = None
    for name, value in headers:
        if name == b"transfer-encoding":
            return None
        if name == b"content-length":
            length = int(value)
    return length


class _Connection(h11.Connection):
    """h11's connection, keeping the last protocol error (uvicorn reports them all as one
    generic 400; the hint tells 431 from 400) and counting the request body still to come.

    An answer sent before the request body was read keeps the connection when the body's
    length is known and not too large (the protocol skips the rest, uncopied, and serves the
    client's next request: a refused SDK retries on the same connection); otherwise it says
    ``connection: close`` and the connection lingers, then closes."""

    last_error: h11.RemoteProtocolError | None = None
    body_left: int | None = None
    """Bytes of the current request's body not yet parsed, when its length is known."""
    skip_body = False
    """An early answer went out that keeps the connection: the rest of the body is skipped."""

    def next_event(self) -> Any:
        try:
            event = super().next_event()
        except h11.RemoteProtocolError as exc:
            self.last_error = exc
            raise
        if type(event) is h11.Data:
            if self.body_left is not None:
                self.body_left -= len(event.data)
        elif type(event) is h11.Request:
            self.body_left = _content_length(event.headers)
        return event

    def send(self, event: Any) -> Any:  # keeps h11's overloads for callers
        if isinstance(event, h11.Response) and self.their_state is h11.SEND_BODY:
            left = self.body_left
            self.skip_body = (
                left is not None and left <= _SKIP_MAX_BYTES
                and event.status_code not in _CLOSE_AFTER
            )  # fmt: skip
            if not self.skip_body:
                headers = [(k, v) for k, v in event.headers if k != b"connection"]
                event = h11.Response(status_code=event.status_code, reason=event.reason,
                                     headers=[*headers, (b"connection", b"close")])  # fmt: skip
        return super().send(event)


class _Transport:
    """The socket's transport as uvicorn sees it: its ``close()`` after an answer sent while
    the request body is still arriving becomes the protocol's lingering close."""

    def __init__(self, transport: asyncio.Transport, protocol: GuardedH11Protocol) -> None:
        self.raw = transport
        self._protocol = protocol

    def close(self) -> None:
        if not self._protocol.linger():
            self.raw.close()

    def is_closing(self) -> bool:
        return self._protocol.lingering or self.raw.is_closing()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.raw, name)


class GuardedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with a header deadline, close-after-unread-body and a
    connection cap (module docstring). Configure with ``protocol_class(settings)``."""

    guards: ClassVar[ServerSettings] = ServerSettings()
    max_connections: ClassVar[int] = _AUTO_MAX_CONNECTIONS
    _droppable_by_server: ClassVar[weakref.WeakKeyDictionary[ServerState, dict[GuardedH11Protocol, None]]]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._new_h11()
        self._head_timer: asyncio.TimerHandle | None = None
        self._raw: asyncio.Transport | None = None
        self._head_bytes = 0
        """Bytes received while waiting for the current request head."""
        self._lost = False
        self.lingering = False
        self._linger_timer: asyncio.TimerHandle | None = None
        self._linger_until = 0.0
        self._last_read = 0.0
        self._drain: BodyDrain | None = None
        """Dropping the rest of a body answered early (lingering, or skipped to keep alive)."""

    def _new_h11(self) -> None:
        """A fresh h11 state for the connection (at start, and after a skipped body)."""
        self._h11 = _Connection(h11.SERVER, self.config.h11_max_incomplete_event_size or 16384)
        self.conn = self._h11

    def _arm_keep_alive(self) -> None:
        """uvicorn's idle timer, as its ``on_response_complete`` arms it."""
        self.timeout_keep_alive_task = self.loop.call_later(
            self.timeout_keep_alive, self.timeout_keep_alive_handler
        )

    # -- connections that may be dropped to make room (oldest first): those still sending a
    # -- request head, and those lingering after their answer -------------------------------
    def _droppable(self) -> dict[GuardedH11Protocol, None]:
        return type(self)._droppable_by_server.setdefault(self.server_state, {})

    def _await_head(self) -> None:
        self._cancel_head_timer()
        self._head_timer = self.loop.call_later(self.guards.header_timeout_s, self._head_timed_out)
        self._droppable()[self] = None
        self._head_bytes = 0

    def _cancel_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None
        self._droppable().pop(self, None)

    def _refuse(self, exc: RetouchError) -> None:
        self._cancel_head_timer()
        raw = cast(asyncio.Transport, self._raw)
        if self.lingering or self._drain is not None:
            self._close()
        elif not raw.is_closing():
            raw.write(_raw_response(exc))
            raw.close()

    # -- lingering close (module docstring) ---------------------------------------------------
    def linger(self) -> bool:
        """Called for uvicorn's ``transport.close()``: when an answer went out while the
        request body is still arriving, half-close and discard the rest instead (True)."""
        raw = self._raw
        cycle = self.cycle
        if (self.lingering or self._lost or raw is None or raw.is_closing() or cycle is None
                or not cycle.response_complete or self.conn.their_state is not h11.SEND_BODY):  # fmt: skip
            return False
        self.lingering = True
        self._cancel_head_timer()
        self._unset_keepalive_if_required()
        if raw.can_write_eof():
            raw.write_eof()  # after the buffered answer: the client reads it, then EOF
        self._start_drain(None)
        return True

    def _skip_body(self) -> None:
        """After an early answer that keeps the connection (``_Connection.skip_body``): drop
        the rest of the body uncopied, then serve the next request on a fresh h11 state."""
        old = self._h11
        left = old.body_left or 0
        buffered = old.trailing_data[0]  # received, not yet parsed: the body's next bytes
        self._new_h11()
        super().on_response_complete()  # counts the request, arms uvicorn's keep-alive timer
        if self.transport.is_closing():
            return
        if len(buffered) >= left:  # the whole body is in: what follows it is the next request
            self._await_head()
            if len(buffered) > left:
                self.data_received(buffered[left:])
            return
        self._unset_keepalive_if_required()  # the drain's own timers bound it
        self._start_drain(left - len(buffered))

    def _start_drain(self, limit: int | None) -> None:
        raw = cast(asyncio.Transport, self._raw)
        self._cancel_head_timer()
        self._last_read = now = self.loop.time()
        self._linger_until = now + self.guards.linger_s
        self._linger_timer = self.loop.call_later(self.guards.linger_idle_s, self._linger_check)
        self._droppable()[self] = None
        self._drain = BodyDrain.start(self.loop, raw, limit, self._drained_some, self._drain_ended)

    def _drained_some(self) -> None:
        self._last_read = self.loop.time()

    def _drain_ended(self, closed: bool) -> None:
        self._drain = None
        if closed or self.lingering:
            self._close()
            return
        self._stop_draining()  # the body is skipped: an ordinary idle connection again
        self._arm_keep_alive()
        self._await_head()

    def _linger_check(self) -> None:
        end = min(self._last_read + self.guards.linger_idle_s, self._linger_until)
        if self.loop.time() >= end:
            self._linger_timer = None
            self._close()
        else:
            self._linger_timer = self.loop.call_at(end, self._linger_check)

    def _stop_draining(self) -> None:
        if self._linger_timer is not None:
            self._linger_timer.cancel()
            self._linger_timer = None
        if self._drain is not None:
            self._drain.stop()
            self._drain = None

    def _close(self) -> None:
        self._stop_draining()
        self._droppable().pop(self, None)
        if self._raw is not None:
            self._raw.close()

    def _head_timed_out(self) -> None:
        self._head_timer = None
        log.info("closing %s: no complete request head in %.0f s", self.client, self.guards.header_timeout_s)
        self._refuse(
            HeadTimeout(
                f"The request head was not received within {self.guards.header_timeout_s:.0f} s."
            )
        )

    # -- uvicorn's protocol hooks -------------------------------------------------------------
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        self._raw = transport
        super().connection_made(cast(asyncio.Transport, _Transport(transport, self)))
        if len(self.connections) > self.max_connections and not self._make_room():
            log.warning("refusing a connection: %d open (max_connections)", len(self.connections) - 1)
            self._refuse(
                TooManyConnections(
                    "The server has too many open connections; retry shortly.",
                    headers={"retry-after": "1"},
                )
            )
            return
        self._await_head()

    def _make_room(self) -> bool:
        """Drop the oldest connection still sending its request head or lingering after its
        answer; False if there is none (every open connection is busy with a request)."""
        waiting = self._droppable()
        oldest = next(iter(waiting), None)
        if oldest is None:
            return False
        state = "lingering" if oldest.lingering else "still sending its request head"
        log.info("dropping %s, %s, to make room", oldest.client, state)
        oldest._refuse(
            TooManyConnections(
                "The server has too many open connections and closed this one, which had not "
                "sent a complete request; retry shortly.",
                headers={"retry-after": "1"},
            )
        )
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost = True
        self._cancel_head_timer()
        self._stop_draining()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._drain is not None:  # read by the transport all the same: dropped, not parsed
            data = self._drain.take(data)
        if self.lingering or not data:
            return
        if self.conn.their_state is h11.IDLE:
            if self._head_too_large(data):
                self._refuse(self._head_too_large_error())
                return
            first_read = self._head_bytes == len(data)  # nothing of this head came before
            if first_read and self.conn.our_state is h11.IDLE and _is_liveness_probe(data):
                self._unset_keepalive_if_required()
                self.conn.receive_data(data)
                self._answer_liveness_probe()
                return
        super().data_received(data)

    def _answer_liveness_probe(self) -> None:
        """``GET /healthz``, answered here as its bytes are read (module docstring), then any
        request pipelined behind it the usual way."""
        try:
            request = self.conn.next_event()
            end = self.conn.next_event()
        except h11.RemoteProtocolError:
            self.send_400_response("Invalid HTTP request received.")
            return
        if not isinstance(request, h11.Request) or not isinstance(end, h11.EndOfMessage):
            self.send_400_response("Invalid HTTP request received.")  # not reached: pre-checked
            return
        self._cancel_head_timer()
        self.server_state.total_requests += 1
        headers = [
            *self.server_state.default_headers,
            (b"content-type", b"application/json"),
            (b"content-length", b"%d" % len(_LIVE)),
            (b"x-request-id", new_request_id().encode()),
            (b"openai-processing-ms", b"0"),
            *STANDARD_HEADERS,
        ]
        out = self.conn.send(h11.Response(status_code=200, headers=headers)) or b""
        out += self.conn.send(h11.Data(data=_LIVE)) or b""
        out += self.conn.send(h11.EndOfMessage()) or b""
        self.transport.write(out)
        if self.conn.our_state is not h11.DONE:  # the client asked to close (or HTTP/1.0)
            self.conn.send(h11.ConnectionClosed())
            self.transport.close()
            return
        self.conn.start_next_cycle()
        self._arm_keep_alive()
        self._await_head()
        self.handle_events()  # a request pipelined behind the probe

    def _head_too_large_error(self) -> HeadTooLarge:
        limit = self.guards.max_head_bytes
        return HeadTooLarge(f"The request head is larger than the {limit:,} bytes allowed.")

    def _head_too_large(self, data: bytes) -> bool:
        """h11 limits only a head still incomplete (``max_incomplete_event_size``): a larger
        head that arrives whole in one read would pass. Counted here while no request is open;
        only once more than ``max_head_bytes`` have come is h11's unparsed buffer searched for
        the head's end (the head may be complete, followed by its body)."""
        self._head_bytes += len(data)
        if self._head_bytes <= self.guards.max_head_bytes:
            return False
        pending = self.conn.trailing_data[0]
        received = pending + data if pending else data
        end = received.find(b"\r\n\r\n", 0, self.guards.max_head_bytes + 4)
        if end >= 0:
            return end + 4 > self.guards.max_head_bytes
        return len(received) > self.guards.max_head_bytes

    def handle_events(self) -> None:
        super().handle_events()
        if self._head_timer is not None and self.conn.their_state is not h11.IDLE:
            self._cancel_head_timer()  # the request head is complete

    def send_400_response(self, msg: str) -> None:
        error = self._h11.last_error
        hint = error.error_status_hint if error is not None else 400
        detail = str(error) if error is not None and str(error) else "malformed request"
        refusal: RetouchError
        if hint == 431:
            refusal = self._head_too_large_error()
        else:
            refusal = BadHttpRequest(f"Invalid HTTP request: {detail}.")
            refusal.status = hint if hint in _REASONS else 400
        self._refuse(refusal)

    def on_response_complete(self) -> None:
        if self.conn.their_state is h11.SEND_BODY and not self.transport.is_closing():
            # answered before the body arrived (429, 413, 408): the rest is only discarded
            if self._h11.skip_body and self.conn.our_state is h11.DONE:
                self._skip_body()  # and the connection serves the client's next request
                return
            with contextlib.suppress(h11.LocalProtocolError):
                self.conn.send(h11.ConnectionClosed())
            self.transport.close()  # -> linger()
        super().on_response_complete()
        if not self.transport.is_closing() and self.conn.their_state is h11.IDLE:
            self._await_head()

    def shutdown(self) -> None:
        self._cancel_head_timer()
        if self.lingering or self._drain is not None:
            self._close()
            return
        super().shutdown()


GuardedH11Protocol._droppable_by_server = weakref.WeakKeyDictionary()

_LIVE = b'{"status":"ok"}'
_PROBE_LINE = b"GET /healthz HTTP/1."


def _is_liveness_probe(data: bytes) -> bool:
    """A complete ``GET /healthz`` head without a body in the first read of a request (what
    follows it is parsed as usual): no query, no ``Content-Length`` or ``Transfer-Encoding``,
    no upgrade."""
    if not data.startswith(_PROBE_LINE):
        return False
    end = data.find(b"\r\n\r\n")
    if end < 0:
        return False
    head = data[:end].lower()
    return b"content-length:" not in head and b"transfer-encoding:" not in head and b"upgrade:" not in head


def raise_open_files_limit() -> int:
    """Raise the soft RLIMIT_NOFILE to the hard limit; returns the soft limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
    if target > soft:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError) as exc:
            log.warning("could not raise the open-files limit from %d: %s", soft, exc)
    return soft


def connection_cap(server: ServerSettings, open_files: int) -> int:
    if server.max_connections:
        return server.max_connections
    return max(32, min(_AUTO_MAX_CONNECTIONS, open_files - _RESERVED_FDS))


def protocol_class(server: ServerSettings, open_files: int) -> type[GuardedH11Protocol]:
    """``GuardedH11Protocol`` bound to these settings (uvicorn instantiates the class)."""
    attrs = {"guards": server, "max_connections": connection_cap(server, open_files)}
    return type("RetouchH11Protocol", (GuardedH11Protocol,), attrs)


def server_config(app: Any, settings: Settings, **overrides: Any) -> uvicorn.Config:
    """The uvicorn configuration of ``retouch serve`` (tests pass ``port=0`` and log level)."""
    server = settings.server
    if server.raise_open_files_limit:
        open_files = raise_open_files_limit()
    else:
        open_files = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    options: dict[str, Any] = {
        "host": settings.host,
        "port": settings.port,
        "log_level": settings.log_level,
        "http": protocol_class(server, open_files),
        "h11_max_incomplete_event_size": server.max_head_bytes,
        "timeout_keep_alive": server.keep_alive_s,
        "lifespan": "on",
        "ws": "none",  # no WebSocket routes: an upgrade request is an ordinary request
        # uvicorn's loggers go through ours (retouch.logs); retouch.access replaces its access
        # log (same line, plus the request id, route and duration)
        "log_config": None,
        "access_log": False,
    }
    options.update(overrides)
    return uvicorn.Config(app, **options)
