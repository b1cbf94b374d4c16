"""``BodyDrain``: the rest of a request body received and dropped in the kernel.

A request answered before its body arrived (a 429 at the ``model`` field, a 413, the 408
receipt deadline) still has its body coming: every HTTP/1.1 client writes its whole upload
before it reads the answer, and a socket closed with bytes unread makes the kernel send a reset
that destroys the answer in the client's buffer. So the bytes must be received. Read through
the transport, each 256 KiB of them becomes a Python ``bytes`` object passed to
``data_received`` only to be dropped: for a refused 2.3 MB upload, that was 1.9 ms of the
3.4 ms the refusal cost the event loop (``bench/refusal_cost.py``), and refusals are what a
server at capacity spends its loop on.

Here the transport stops reading and a duplicate of its socket is read by the loop's reader
callback with ``MSG_TRUNC``: Linux frees the queued bytes without copying them out (tcp(7)),
everything queued in one call. On other systems the flag is not used and the bytes are read
into a reused buffer. The drain ends at ``limit`` bytes (the unread rest of a body whose
length is known: the connection then serves its next request), or when the client closes.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import sys
from collections.abc import Callable

_LINUX = sys.platform.startswith("linux")
_CHUNK = 1 << 22 if _LINUX else 1 << 18
"""Most bytes one read drops: with MSG_TRUNC nothing is copied, so one call takes all queued."""


class BodyDrain:
    """Drop what ``transport``'s client sends, up to ``limit`` bytes (``None``: until it
    closes). ``on_read()`` after every read that dropped bytes (for idle timers);
    ``on_end(closed)`` once: ``closed`` True when the client closed or reset the connection,
    False when ``limit`` bytes were dropped (the transport reads again: what follows is the
    client's next request). ``stop()`` ends it early without a callback."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        transport: asyncio.Transport,
        sock: socket.socket | None,
        limit: int | None,
        on_read: Callable[[], None],
        on_end: Callable[[bool], None],
    ) -> None:
        self._loop = loop
        self._transport = transport
        self._sock = sock
        self.left = limit
        self._on_read = on_read
        self._on_end = on_end
        self._buffer = None if _LINUX else bytearray(_CHUNK)
        self._active = True

    @classmethod
    def start(
        cls,
        loop: asyncio.AbstractEventLoop,
        transport: asyncio.Transport,
        limit: int | None,
        on_read: Callable[[], None],
        on_end: Callable[[bool], None],
    ) -> BodyDrain:
        """Pause ``transport`` and drain its socket. Where this transport or loop cannot (no
        socket, no reader callbacks), the transport keeps reading and the protocol passes
        what it reads to ``take``."""
        drain = cls(loop, transport, None, limit, on_read, on_end)
        raw = transport.get_extra_info("socket")
        if raw is None:
            return drain
        try:
            sock = socket.socket(fileno=os.dup(raw.fileno()))
        except (OSError, ValueError):
            return drain
        sock.setblocking(False)
        transport.pause_reading()
        try:
            loop.add_reader(sock.fileno(), drain._readable)
        except (NotImplementedError, RuntimeError, OSError):
            sock.close()
            transport.resume_reading()
            return drain
        drain._sock = sock
        return drain

    def _readable(self) -> None:
        dropped = False
        sock = self._sock
        while self._active and sock is not None:
            want = _CHUNK if self.left is None else min(_CHUNK, self.left)
            try:
                if self._buffer is None:
                    got = len(sock.recv(want, socket.MSG_TRUNC))
                else:
                    got = sock.recv_into(self._buffer, want)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:  # reset by the client
                self._finish(closed=True)
                return
            if got == 0:
                self._finish(closed=True)
                return
            dropped = True
            if self.left is not None:
                self.left -= got
                if self.left <= 0:
                    self._finish(closed=False)
                    return
            if got < want:  # the queue is empty for now; the reader callback comes again
                break
        if dropped:
            self._on_read()

    def take(self, data: bytes) -> bytes:
        """Bytes the transport read (it could not be paused, or someone resumed it): drop what
        belongs to the body and return the rest (the client's next request)."""
        if not self._active:
            return data
        self._on_read()
        if self.left is None:
            return b""
        used = min(self.left, len(data))
        self.left -= used
        rest = data[used:]
        if self.left <= 0:
            self._finish(closed=False)
        return rest

    def _finish(self, *, closed: bool) -> None:
        paused = self._sock is not None
        self.stop()
        if paused and not closed:
            self._transport.resume_reading()
        self._on_end(closed)

    def stop(self) -> None:
        if not self._active:
            return
        self._active = False
        if self._sock is not None:
            with contextlib.suppress(Exception):  # the loop may be closing
                self._loop.remove_reader(self._sock.fileno())
            self._sock.close()

    @property
    def active(self) -> bool:
        return self._active
