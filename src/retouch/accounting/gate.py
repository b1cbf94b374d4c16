"""The accounting seam the HTTP side talks to: who is calling, may they, and what they used.

``OpenGate`` serves without keys and keeps nothing (tests, embedding); ``DatabaseGate``
(``retouch.accounting.database_gate``) implements the same protocol over SQLite or PostgreSQL.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from retouch.config import Settings
from retouch.errors import NotFound

BucketWidth = Literal["1m", "1h", "1d"]
GroupField = Literal["api_key_id", "model", "user_id"]


@dataclass(frozen=True)
class Principal:
    key_id: str | None
    """None when serving open (no keys configured)."""
    name: str
    models: frozenset[str] | None = None
    """Model names the key may use; None = all."""
    headers: Mapping[str, str] = field(default_factory=dict, compare=False)
    """``x-ratelimit-*`` headers as of authentication, for responses that are not admitted
    (errors, model listings); ``admit`` returns fresh ones for the edit itself."""


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


@dataclass(frozen=True)
class UsageQuery:
    """``GET /v1/organization/usage/images`` parameters (the subset of OpenAI's that applies)."""

    start_time: int
    end_time: int | None = None
    bucket_width: BucketWidth = "1d"
    group_by: tuple[GroupField, ...] = ()
    limit: int | None = None
    page: str | None = None
    models: tuple[str, ...] = ()
    user_ids: tuple[str, ...] = ()
    api_key_ids: tuple[str, ...] = ()


class ServingRefused(RuntimeError):
    """A server without API keys was asked to listen beyond loopback without ``insecure``."""


def serving_check(settings: Settings, has_keys: bool) -> None:
    """The open-mode rule, whatever the gate: without keys, serve only on a loopback address
    unless the operator said ``--insecure``."""
    if has_keys or settings.is_loopback or settings.insecure:
        return
    raise ServingRefused(
        f"refusing to serve on {settings.host} without API keys: anyone who can reach that "
        "address could use this server. Create a key first with\n"
        "    retouch keys create --name NAME\n"
        "(with the same --data-dir / --database-url as serve), or pass --insecure to serve "
        "without keys anyway."
    )


class Gate(Protocol):
    open_mode: bool
    """No key is needed (anyone who reaches the server may use it)."""

    async def authenticate(self, authorization: str | None) -> Principal:
        """Raise ``AuthenticationFailed`` for a missing, unknown or revoked key."""
        ...

    async def admit(
        self, principal: Principal, *, model: str, images: int, served_model: str | None = None
    ) -> dict[str, str]:
        """Check model access, rate limits and quota before work starts, and count the request.
        ``model`` is the name the client sent, ``served_model`` the configured model it routes
        to (a key may be allowed either). Returns the ``x-ratelimit-*`` headers; raises
        ``NotFound`` (model not allowed), ``RateLimited`` or ``QuotaExceeded``."""
        ...

    async def record(self, record: UsageRecord) -> None:
        """Write the ledger row for a request, exactly once per request id."""
        ...

    async def replay(self, principal: Principal, key: str, fingerprint: str) -> StoredResponse | None:
        """The stored response for this idempotency key and body fingerprint, if any. ``None``
        means the caller now holds the key and must end with ``remember`` or ``release``.
        A gate may raise ``Conflict`` (the key is held by a running request) or
        ``Unprocessable`` (the key was used for a different request)."""
        ...

    async def remember(
        self, principal: Principal, key: str, fingerprint: str, response: StoredResponse
    ) -> None: ...

    async def release(self, principal: Principal, key: str) -> None:
        """Give up a key taken by ``replay`` without a response to keep (the request failed
        or streamed), so that a retry runs again."""
        ...

    async def usage(self, principal: Principal, query: UsageQuery) -> dict[str, Any]:
        """The caller's own usage as OpenAI's images usage page (``object: page``)."""
        ...

    async def close(self) -> None: ...


class OpenGate:
    """No keys: everyone is the anonymous principal; nothing is limited or billed."""

    ANONYMOUS = Principal(key_id=None, name="anonymous")

    def __init__(self) -> None:
        self.open_mode = True
        self.records: list[UsageRecord] = []
        self._idempotent: dict[tuple[str, str], StoredResponse] = {}

    async def authenticate(self, authorization: str | None) -> Principal:
        return self.ANONYMOUS

    async def admit(
        self, principal: Principal, *, model: str, images: int, served_model: str | None = None
    ) -> dict[str, str]:
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

    async def release(self, principal: Principal, key: str) -> None:
        return None

    async def usage(self, principal: Principal, query: UsageQuery) -> dict[str, Any]:
        raise NotFound(
            "Usage is recorded only with the accounts database (retouch serve uses it).",
            code="usage_unavailable",
        )

    async def close(self) -> None:
        return None
