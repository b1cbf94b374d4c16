"""Admission before work: a request's queue ticket and its share of the upload memory.

A request takes its ticket as soon as its model is known: while the multipart body streams in,
when the ``model`` field arrives (fields usually come before files), and otherwise once the body
is in, but always before a single image is decoded. A full queue therefore costs a 429 and the
bytes read so far, never a decode. A refusal is answered at once, the rest of the body unread:
the HTTP server's lingering close (``api.server``) discards what the client still sends, so it
reads its 429 instead of a connection reset.

``UploadBudget`` bounds the raw bytes held across all requests at once (``max_buffered_bytes``):
every part's bytes are counted as they arrive and given back once the images are decoded.
"""

from __future__ import annotations

import logging
from types import TracebackType

from retouch.config import ModelSettings
from retouch.errors import QueueFull, RetouchError, ServiceUnavailable, retry_after_headers
from retouch.scheduler.base import Backend, Ticket
from retouch.service.models import ModelRoutes, Route

log = logging.getLogger(__name__)


def admit_in_order(backends: dict[str, Backend], model: ModelSettings) -> Ticket:
    """A ticket from the model's own backend, else from the first of its ``overflow`` models
    with room (a full local queue overflows to a relay); when all are full, the model's own
    429. The ticket names the backend that issued it."""
    try:
        return backends[model.name].admit()
    except QueueFull:
        for name in model.overflow:
            try:
                ticket = backends[name].admit()
            except QueueFull:
                continue
            log.info("model %s is full; overflowing to %s", model.name, name)
            return ticket
        raise


class UploadBudget:
    """Upload bytes in memory across all requests (event-loop only, so no lock)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0
        self.peak = 0

    def take(self, n: int) -> None:
        if self.used + n > self.limit:
            raise ServiceUnavailable(
                f"The server is holding {self.used:,} bytes of uploads (at most "
                f"{self.limit:,}); retry shortly.",
                code="server_busy",
                headers=retry_after_headers(1.0),
            )
        self.used += n
        self.peak = max(self.peak, self.used)

    def give(self, n: int) -> None:
        self.used -= n


class Admission:
    """One request's route, ticket and buffered bytes; a context manager that gives back
    whatever it still holds (the ticket moves to the prepared edit with ``hand_over``)."""

    def __init__(
        self, routes: ModelRoutes, backends: dict[str, Backend], budget: UploadBudget
    ) -> None:
        self._routes = routes
        self._backends = backends
        self._budget = budget
        self.route: Route | None = None
        self.ticket: Ticket | None = None
        self.held_bytes = 0
        self.refusal: RetouchError | None = None
        """Set when the request was refused while its body was still arriving."""
        self.recorded = False
        """Its ledger row is written (by ``EditService.prepare`` when it failed)."""

    # -- hooks for the body reader --------------------------------------------------------------

    def on_model(self, requested: str | None) -> None:
        """Route the request and take its ticket; raises 400 (unknown model) or 429 now."""
        if self.ticket is not None:
            return
        route = self._routes.resolve(requested)
        self.route = route  # known even when admit refuses (the metrics' model label)
        self.ticket = admit_in_order(self._backends, route.model)

    def take_bytes(self, n: int) -> None:
        self._budget.take(n)
        self.held_bytes += n

    def give_bytes(self) -> None:
        self._budget.give(self.held_bytes)
        self.held_bytes = 0

    # -- ownership ------------------------------------------------------------------------------

    def hand_over(self) -> Ticket:
        """The ticket, now owned by the caller (who must release it)."""
        assert self.ticket is not None, "on_model() was not called"
        ticket, self.ticket = self.ticket, None
        return ticket

    def release(self) -> None:
        self.give_bytes()
        if self.ticket is not None:
            self.ticket.release()
            self.ticket = None

    def __enter__(self) -> Admission:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()
