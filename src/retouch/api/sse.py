"""Server-sent events: the stream response that always ends its edit."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping

from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from retouch.api import render
from retouch.service.edits import KeepAlive, StreamItem


class EventStreamResponse(StreamingResponse):
    """``text/event-stream`` of typed stream items, rendered here.

    ``on_close`` runs after the response ended however it ended, also when the client left
    before the first event (then the item generator never started, and its own ``finally``
    would never run): it is where the edit's ticket and ledger row are settled.
    """

    def __init__(
        self,
        items: AsyncIterator[StreamItem],
        on_close: Callable[[], Awaitable[None]],
        headers: Mapping[str, str] | None = None,
    ) -> None:
        self._items = items
        self._on_close = on_close
        super().__init__(
            self._frames(),
            media_type="text/event-stream",
            headers={**(headers or {}), "cache-control": "no-cache", "x-accel-buffering": "no"},
        )

    async def _frames(self) -> AsyncIterator[bytes]:
        async for item in self._items:
            yield render.KEEPALIVE if isinstance(item, KeepAlive) else render.sse_event(item)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            await asyncio.shield(self._close())

    async def _close(self) -> None:
        aclose = getattr(self._items, "aclose", None)
        if aclose is not None:
            await aclose()
        await self._on_close()
