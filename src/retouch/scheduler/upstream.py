"""``UpstreamBackend``: the gateway relay behind the ``Backend`` seam.

It computes no pixels: it forwards the request as the client sent it to an OpenAI-compatible
upstream (``retouch.upstream.client``), so it is a backend, not an engine. Admission is shaped
like ``LocalBackend``'s: a counter checked on the event loop (beyond ``concurrency +
max_queue`` tickets, 429 at once with a ``Retry-After`` from recent durations) and a semaphore
of ``concurrency`` requests in flight upstream; a request that waits past its queue deadline
gets a 504 without being sent.

The service runs a relay's requests through ``slot()`` and the client (``service.relay``), not
through ``run()``: ``run`` takes a decoded ``EditJob``, and relaying pixels would mean encoding
them again, which a relay exists to avoid.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator

from retouch.config import UpstreamSettings
from retouch.engine.types import EditJob, EditOutput, EngineInfo
from retouch.scheduler.base import BackendStats, BoundedQueue, PartialSink, StartSink, Ticket
from retouch.upstream.client import UpstreamClient


class UpstreamBackend(BoundedQueue):
    def __init__(
        self, name: str, settings: UpstreamSettings, *, max_queue: int,
        client: UpstreamClient | None = None,
    ) -> None:  # fmt: skip
        self.name = name
        self.settings = settings
        self.client = client or UpstreamClient(name, settings)
        # The upstream decides what it can do: every newest option is passed on to it.
        self.info = EngineInfo(
            name=name,
            description=f"Relay to {settings.base_url}",
            output_formats=frozenset({"png", "jpeg", "webp", "gif", "svg"}),
            complexity="passed on to the upstream",
            markup="hint",
            text_to_image="relayed to the upstream's /images/generations",
        )
        self._init_queue(settings.concurrency, max_queue)
        self._closed = False

    # -- admission ------------------------------------------------------------------------------

    async def check(self, job: EditJob) -> None:
        return None  # the upstream judges the prompt

    def stats(self) -> BackendStats:
        return BackendStats(
            running=self.running,
            waiting=max(0, self.admitted - self.running),
            capacity=self.capacity,
            ready=not self._closed,
            reason="closed" if self._closed else None,
        )

    # -- execution ------------------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def slot(self, deadline: float) -> AsyncIterator[None]:
        """Hold one of the ``concurrency`` upstream slots, waited for until ``deadline``."""
        await self._take_slot(deadline, "the upstream")
        started = time.monotonic()
        self.running += 1
        try:
            yield
        finally:
            self.running -= 1
            self._slots.release()
            self._ran(time.monotonic() - started)

    async def run(
        self,
        job: EditJob,
        ticket: Ticket,
        *,
        deadline: float,
        on_partial: PartialSink | None = None,
        on_start: StartSink | None = None,
    ) -> EditOutput:
        raise TypeError(
            f"'{self.name}' relays requests as they were sent (service.relay); it takes no "
            "decoded jobs"
        )

    async def close(self) -> None:
        self._closed = True
        await self.client.close()
