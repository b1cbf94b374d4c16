"""Admission for a relay, shaped like the local ``EngineWorker``'s: a counter checked on the
event loop (full -> 429 at once, with a ``Retry-After`` from recent durations) and a semaphore
of ``concurrency`` requests actually in flight upstream; a request that waits past its
deadline gets a 504 without being sent."""

from __future__ import annotations

import asyncio
import time

from retouch.config import UpstreamSettings
from retouch.errors import QueueFull, QueueTimeout, retry_after_headers
from retouch.upstream.client import UpstreamClient


class Ticket:
    """One admitted request. ``start`` waits for an upstream slot; ``release`` (idempotent)
    gives back the admission and the slot, whatever happened."""

    def __init__(self, backend: UpstreamBackend) -> None:
        self._backend = backend
        self._slot = False
        self._released = False
        self._started = 0.0

    async def start(self, deadline: float) -> None:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise QueueTimeout("The request waited too long in the queue.")
        try:
            await asyncio.wait_for(self._backend._slots.acquire(), remaining)
        except TimeoutError:
            raise QueueTimeout(
                f"The request waited {remaining:.0f} s in the queue without reaching the upstream."
            ) from None
        self._slot = True
        self._started = time.monotonic()
        self._backend.running += 1

    def release(self) -> None:
        if self._released:
            return
        self._released = True
        backend = self._backend
        backend.admitted -= 1
        if self._slot:
            backend.running -= 1
            backend._slots.release()
            backend._observe(time.monotonic() - self._started)


class UpstreamBackend:
    def __init__(
        self, name: str, settings: UpstreamSettings, *, max_queue: int,
        client: UpstreamClient | None = None,
    ) -> None:  # fmt: skip
        self.name = name
        self.settings = settings
        self.client = client or UpstreamClient(name, settings)
        self.workers = settings.concurrency
        self.capacity = settings.concurrency + max_queue
        self.admitted = 0
        self.running = 0
        self._slots = asyncio.Semaphore(settings.concurrency)
        self._mean_s = 1.0

    @property
    def saturated(self) -> bool:
        return self.admitted >= self.capacity

    def retry_after_s(self) -> float:
        return max(1.0, self._mean_s * (self.admitted - self.workers + 1) / self.workers)

    def admit(self) -> Ticket:
        if self.saturated:
            raise QueueFull(
                f"The model '{self.name}' is busy ({self.admitted} requests in flight); "
                "retry later.",
                headers=retry_after_headers(self.retry_after_s()),
            )
        self.admitted += 1
        return Ticket(self)

    def _observe(self, elapsed: float) -> None:
        self._mean_s = 0.8 * self._mean_s + 0.2 * elapsed

    def close(self) -> None:
        """Nothing to stop synchronously; ``aclose`` closes the HTTP client."""

    async def aclose(self) -> None:
        await self.client.close()
