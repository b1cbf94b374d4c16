"""The accounting seam the HTTP side talks to: who is calling, may they, and what they used.

``OpenGate`` serves without keys (loopback only, or ``--insecure``); the database-backed gate
implements the same protocol.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True)
class Principal:
    key_id: str | None
    """None when serving open (no keys configured)."""
    name: str
    models: frozenset[str] | None = None
    """Model names the key may use; None = all."""


@dataclass(frozen=True)
class UsageRecord:
    request_id: str
    key_id: str | None
    model: str
    status: int
    """HTTP status sent, or 499 when the client went away."""
    input_images: int
    output_images: int
    text_tokens: int
    image_tokens: int
    output_tokens: int
    latency_ms: int
    user: str | None = None

    @property
    def total_tokens(self) -> int:
        return self.text_tokens + self.image_tokens + self.output_tokens


@dataclass(frozen=True)
class StoredResponse:
    """A response kept for ``Idempotency-Key`` replays."""

    status: int
    body: bytes
    content_type: str


class Gate(Protocol):
    async def authenticate(self, authorization: str | None) -> Principal:
        """Raise ``AuthenticationFailed`` for a missing, unknown or revoked key."""
        ...

    async def admit(self, principal: Principal, *, model: str, images: int) -> dict[str, str]:
        """Check model access, rate limits and quota before work starts. Returns the
        ``x-ratelimit-*`` headers; raises ``PermissionDenied``/``NotFound``, ``RateLimited`` or
        ``QuotaExceeded``."""
        ...

    async def record(self, record: UsageRecord) -> None:
        """Write the ledger row for a request, exactly once per request id."""
        ...

    async def replay(self, principal: Principal, key: str, fingerprint: str) -> StoredResponse | None:
        """A stored response for this idempotency key and body fingerprint, if any."""
        ...

    async def remember(
        self, principal: Principal, key: str, fingerprint: str, response: StoredResponse
    ) -> None: ...

    async def close(self) -> None: ...


class OpenGate:
    """No keys: everyone is the anonymous principal; nothing is limited or billed."""

    ANONYMOUS = Principal(key_id=None, name="anonymous")

    def __init__(self) -> None:
        self.records: list[UsageRecord] = []
        self._idempotent: dict[tuple[str, str], StoredResponse] = {}

    async def authenticate(self, authorization: str | None) -> Principal:
        return self.ANONYMOUS

    async def admit(self, principal: Principal, *, model: str, images: int) -> dict[str, str]:
        return {}

    async def record(self, record: UsageRecord) -> None:
        self.records.append(record)
        del self.records[:-1000]  # a bounded trail for tests and debugging

    async def replay(self, principal: Principal, key: str, fingerprint: str) -> StoredResponse | None:
        return self._idempotent.get((key, fingerprint))

    async def remember(
        self, principal: Principal, key: str, fingerprint: str, response: StoredResponse
    ) -> None:
        self._idempotent[(key, fingerprint)] = response
        while len(self._idempotent) > 256:  # open mode keeps only recent replays, in memory
            del self._idempotent[next(iter(self._idempotent))]

    async def close(self) -> None:
        return None
