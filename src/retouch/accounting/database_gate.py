"""``DatabaseGate``: the ``Gate`` over the accounts database, and when a server may run open.

Open mode: while the database holds no key at all, requests need no ``Authorization`` and are
recorded under no key, which ``serve`` allows only on a loopback address (or with
``--insecure``). The first key created switches a running server to keys on its next request;
revoking every key does not switch it back (a revoked key still counts as "keys exist").
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Iterator
from typing import Any

from sqlalchemy import Connection
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.exc import TimeoutError as SQLAlchemyTimeout

from retouch.accounting import idempotency, keys, ledger, limits, migrate
from retouch.accounting.db import Database
from retouch.accounting.gate import (
    Principal,
    ServingRefused,
    StoredResponse,
    UsageQuery,
    UsageRecord,
    serving_check,
)
from retouch.config import Settings
from retouch.errors import (
    AuthenticationFailed,
    InvalidValue,
    NotFound,
    ServiceUnavailable,
    retry_after_headers,
)

log = logging.getLogger(__name__)

OPEN_PRINCIPAL = Principal(key_id=None, name="anonymous")
SWEEP_INTERVAL_S = 60.0
_AUTH_HEADERS = {"www-authenticate": 'Bearer realm="retouch"'}


def prepare_database(settings: Settings) -> bool:
    """Blocking: migrate the database and apply the serving check. Returns whether keys exist
    (``serve`` calls this before starting, so a refusal is a message, not a traceback)."""
    db = Database.from_settings(settings)
    try:
        migrate.upgrade(db)
        has_keys = db.read_sync(keys.any_key)
    finally:
        db.close()
    serving_check(settings, has_keys)
    return has_keys


def _bearer(authorization: str | None) -> str:
    if not authorization or not authorization.strip():
        raise AuthenticationFailed(
            "You didn't provide an API key. Send it in an Authorization header using Bearer "
            "auth (Authorization: Bearer YOUR_KEY); the server's operator creates keys with "
            "'retouch keys create'.",
            headers=_AUTH_HEADERS,
        )
    scheme, _, token = authorization.strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise AuthenticationFailed(
            "Invalid Authorization header: expected 'Bearer YOUR_KEY'.", headers=_AUTH_HEADERS
        )
    return token.strip()


@contextlib.contextmanager
def _database_errors() -> Iterator[None]:
    """A database that cannot be reached is a 503 the SDK retries after a pause, not a 500."""
    try:
        yield
    except (DBAPIError, SQLAlchemyTimeout) as exc:
        log.error("accounts database error: %s", exc)
        raise ServiceUnavailable(
            "The accounts database is unavailable; retry shortly.",
            code="accounts_unavailable",
            headers=retry_after_headers(2.0),
        ) from None


class DatabaseGate:
    def __init__(
        self,
        db: Database,
        settings: Settings,
        *,
        open_mode: bool,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.db = db
        self.settings = settings
        self.open_mode = open_mode
        self._clock = clock
        self._sweeper: asyncio.Task[None] | None = None
        self._open_recheck_s = settings.accounts.open_recheck_s
        self._open_check: asyncio.Future[bool] | None = None
        self._open_checked_at = 0.0

    @classmethod
    async def start(
        cls, settings: Settings, *, clock: Callable[[], float] = time.time
    ) -> DatabaseGate:
        """Open and migrate the database, apply the serving check, start the sweeper."""
        db = Database.from_settings(settings)
        try:
            await asyncio.to_thread(migrate.upgrade, db)
            has_keys = await db.read(keys.any_key)
            serving_check(settings, has_keys)
        except BaseException:
            await db.aclose()
            raise
        gate = cls(db, settings, open_mode=not has_keys, clock=clock)
        gate._sweeper = asyncio.create_task(gate._sweep_forever())
        log.info(
            "accounts: %s database%s",
            db.backend,
            "; no API keys yet, serving open" if not has_keys else "",
        )
        return gate

    # -- Gate -----------------------------------------------------------------------------------

    async def authenticate(self, authorization: str | None) -> Principal:
        with _database_errors():
            if self.open_mode:
                if not await self._keys_exist():
                    return OPEN_PRINCIPAL
                self.open_mode = False
                log.warning("an API key exists now: every /v1 request needs one from here on")
            secret = _bearer(authorization)
            now = self._clock()
            found = await self.db.read(keys.verify, secret, limits.window_start(now))
        if found is None:
            raise AuthenticationFailed(
                f"Incorrect API key provided: {keys.redact(secret)}.", headers=_AUTH_HEADERS
            )
        key = found.key
        if not key.active:
            raise AuthenticationFailed("This API key has been revoked.", headers=_AUTH_HEADERS)
        return Principal(
            key_id=key.id,
            name=key.name,
            models=key.limits.models,
            headers=limits.rate_headers(
                key.limits,
                requests=found.window_requests,
                images=found.window_images,
                tokens_used=key.tokens_used,
                now=now,
            ),
        )

    async def _keys_exist(self) -> bool:
        """Whether a key exists now, asked of the database at most once per
        ``open_recheck_s`` (concurrent requests share one query): serving open, every
        request would otherwise cost a database round trip only to learn "still none"."""
        now = time.monotonic()
        if self._open_check is None or (
            self._open_check.done() and now - self._open_checked_at >= self._open_recheck_s
        ):
            self._open_checked_at = now
            self._open_check = asyncio.ensure_future(self.db.read(keys.any_key))
        check = self._open_check
        try:
            return await asyncio.shield(check)  # a caller that leaves does not cancel the others'
        except BaseException:
            if check.done() and not check.cancelled() and check.exception() is not None:
                self._open_check = None  # a failed query is asked again by the next request
            raise

    async def admit(
        self, principal: Principal, *, model: str, images: int, served_model: str | None = None
    ) -> dict[str, str]:
        allowed = principal.models
        if allowed is not None and model not in allowed and served_model not in allowed:
            # OpenAI's answer for a model a key may not use: it does not exist for that key.
            raise NotFound(
                f"The model '{model}' does not exist or you do not have access to it.",
                code="model_not_found",
            )
        if principal.key_id is None:
            return {}
        with _database_errors():
            return await self.db.write(
                limits.admit, principal.key_id, images=images, now=self._clock()
            )

    async def record(self, record: UsageRecord) -> None:
        # The insert is idempotent by request id, so a write that failed on a lost connection
        # can simply be tried again.
        for attempt in range(3):
            try:
                await self.db.write(ledger.record, record, now=int(self._clock()))
                return
            except (OperationalError, DBAPIError) as exc:
                if attempt == 2 or not (
                    isinstance(exc, OperationalError) or exc.connection_invalidated
                ):
                    raise
                log.warning("ledger write for %s failed (%s); retrying", record.request_id, exc)
                await asyncio.sleep(0.2 * 2**attempt)

    async def replay(self, principal: Principal, key: str, fingerprint: str) -> StoredResponse | None:
        if len(key) > idempotency.MAX_KEY_LENGTH:
            raise InvalidValue(
                f"Invalid Idempotency-Key: at most {idempotency.MAX_KEY_LENGTH} characters.",
                code="invalid_idempotency_key",
            )
        with _database_errors():
            return await self.db.write(
                idempotency.claim, principal.key_id or "", key, fingerprint,
                now=int(self._clock()), ttl_s=self.settings.accounts.idempotency_ttl_s,
            )  # fmt: skip

    async def remember(
        self, principal: Principal, key: str, fingerprint: str, response: StoredResponse
    ) -> None:
        if len(response.body) > self.settings.accounts.idempotency_max_body_bytes:
            log.info("response of %d bytes is too large to keep for Idempotency-Key replays",
                     len(response.body))  # fmt: skip
            await self.release(principal, key)
            return
        await self.db.write(
            idempotency.complete, principal.key_id or "", key, fingerprint, response,
            now=int(self._clock()), ttl_s=self.settings.accounts.idempotency_ttl_s,
        )  # fmt: skip

    async def release(self, principal: Principal, key: str) -> None:
        await self.db.write(idempotency.release, principal.key_id or "", key)

    async def usage(self, principal: Principal, query: UsageQuery) -> dict[str, Any]:
        with _database_errors():
            return await self.db.read(
                ledger.images_usage, principal.key_id, query, now=int(self._clock())
            )

    async def close(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
        await self.db.aclose()

    # -- housekeeping ---------------------------------------------------------------------------

    async def sweep(self) -> int:
        now = self._clock()

        def run(conn: Connection) -> int:
            return idempotency.sweep(conn, now=int(now)) + limits.prune(conn, now=now)

        return await self.db.write(run)

    async def _sweep_forever(self) -> None:
        while True:
            await asyncio.sleep(SWEEP_INTERVAL_S)
            try:
                gone = await self.sweep()
                if gone:
                    log.debug("accounts sweep deleted %d rows", gone)
            except Exception:
                log.exception("accounts sweep failed")


async def database_gate(settings: Settings) -> DatabaseGate:
    """The ``gate_factory`` that ``retouch serve`` hands to ``build_app``."""
    return await DatabaseGate.start(settings)


__all__ = ["DatabaseGate", "ServingRefused", "database_gate", "prepare_database", "serving_check"]
