"""The gateway relay: a backend that forwards requests to an OpenAI-compatible upstream.

It computes no pixels, so it is a scheduler backend beside the local engine workers, not an
engine: ``client`` speaks HTTP to the upstream, ``backend`` admits and bounds what is in
flight. The request path around it lives in ``retouch.service.relay``.
"""

from retouch.upstream.backend import Ticket, UpstreamBackend
from retouch.upstream.client import RelayEvent, RelayRequest, UpstreamClient

__all__ = ["RelayEvent", "RelayRequest", "Ticket", "UpstreamBackend", "UpstreamClient"]
