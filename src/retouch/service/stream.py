"""What ``EditService.stream`` yields: typed events, or a keep-alive (an SSE comment).

A module of its own so that the HTTP layer can render the stream without importing the
service's imaging and engine machinery."""

from __future__ import annotations

from retouch.protocol import (
    ErrorEvent,
    ImageEditCompletedEvent,
    ImageEditPartialImageEvent,
    ImageGenCompletedEvent,
    ImageGenPartialImageEvent,
)
from retouch.upstream import RelayEvent


class KeepAlive:
    """Yielded by ``stream`` when nothing happened for ``keepalive_s`` (an SSE comment)."""


KEEPALIVE = KeepAlive()
StreamItem = (
    ImageEditPartialImageEvent | ImageEditCompletedEvent | ImageGenPartialImageEvent
    | ImageGenCompletedEvent | ErrorEvent | KeepAlive | RelayEvent
)  # fmt: skip
"""Edits stream ``image_edit.*`` events, generations ``image_generation.*``; ``RelayEvent``: an
upstream's frame, relayed unchanged (``service.relay``)."""

__all__ = ["KEEPALIVE", "KeepAlive", "StreamItem"]
