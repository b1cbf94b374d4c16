"""HTTP to OpenAI-compatible upstream servers, for the relay backend
(``retouch.scheduler.upstream``) and the relay request path (``retouch.service.relay``)."""

from retouch.upstream.client import RelayedBody, RelayEvent, RelayRequest, UpstreamClient

__all__ = ["RelayEvent", "RelayRequest", "RelayedBody", "UpstreamClient"]
