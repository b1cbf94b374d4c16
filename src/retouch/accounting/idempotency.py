"""``Idempotency-Key``: a retried request gets the first one's response instead of a new run.

Modelled on the IETF draft (draft-ietf-httpapi-idempotency-key-header) and Stripe: a key is
scoped to the API key that sent it and bound to a fingerprint of the request (form fields and
the sha256 of every file). The first request *claims* the key with a row whose ``status`` is
NULL; when it succeeds the row gets the response, when it fails or streams the row is deleted
so a retry runs again. Meanwhile:

* the same key and fingerprint while the first still runs → 409 ``idempotency_key_in_use``
  with ``Retry-After`` (the official SDK retries 409s, and by then it may find the result);
* the same key with a different request → 422 ``idempotency_key_reused`` (never retried);
* a claim older than ``LEASE_S`` (its process died) may be taken over.

The claim is ``INSERT … ON CONFLICT DO NOTHING`` followed, when it loses, by a ``SELECT …
FOR UPDATE``: two processes racing for one key cannot both win.
"""

from __future__ import annotations

from sqlalchemy import Connection, delete, select, update
from sqlalchemy.dialects import postgresql, sqlite

from retouch.accounting.gate import StoredResponse
from retouch.accounting.tables import idempotency_keys
from retouch.errors import Conflict, Unprocessable, retry_after_headers

LEASE_S = 600
"""How long a claim holds without a result: the official SDK's default timeout."""
CONFLICT_RETRY_S = 5.0
MAX_KEY_LENGTH = 255

_t = idempotency_keys.c


def claim(
    conn: Connection, scope: str, key: str, fingerprint: str, *, now: int, ttl_s: int
) -> StoredResponse | None:
    """The stored response for (scope, key), or None after claiming the key for this request."""
    insert = postgresql.insert if conn.dialect.name == "postgresql" else sqlite.insert
    won = conn.execute(
        insert(idempotency_keys)
        .values(
            scope=scope,
            idempotency_key=key,
            fingerprint=fingerprint,
            status=None,
            locked_until=now + LEASE_S,
            expires_at=now + ttl_s,
        )
        .on_conflict_do_nothing(index_elements=[_t.scope, _t.idempotency_key])
        .returning(_t.scope)
    ).first()
    if won is not None:
        return None
    row = conn.execute(
        select(idempotency_keys)
        .where(_t.scope == scope, _t.idempotency_key == key)
        .with_for_update()
    ).mappings().one()
    expired = row["expires_at"] <= now
    stale = row["status"] is None and row["locked_until"] <= now
    if expired or stale:
        conn.execute(
            update(idempotency_keys)
            .where(_t.scope == scope, _t.idempotency_key == key)
            .values(
                fingerprint=fingerprint,
                status=None,
                content_type=None,
                body=None,
                locked_until=now + LEASE_S,
                expires_at=now + ttl_s,
            )
        )
        return None
    if row["fingerprint"] != fingerprint:
        raise Unprocessable(
            "This Idempotency-Key was already used for a different request; send a new key "
            "for a new request.",
            code="idempotency_key_reused",
        )
    if row["status"] is None:
        raise Conflict(
            "A request with this Idempotency-Key is still running; retry to get its result.",
            code="idempotency_key_in_use",
            headers=retry_after_headers(CONFLICT_RETRY_S),
        )
    return StoredResponse(int(row["status"]), bytes(row["body"] or b""), str(row["content_type"]))


def complete(
    conn: Connection, scope: str, key: str, fingerprint: str, response: StoredResponse, *, now: int,
    ttl_s: int,
) -> None:  # fmt: skip
    conn.execute(
        update(idempotency_keys)
        .where(
            _t.scope == scope,
            _t.idempotency_key == key,
            _t.fingerprint == fingerprint,
            _t.status.is_(None),
        )
        .values(
            status=response.status,
            content_type=response.content_type,
            body=response.body,
            expires_at=now + ttl_s,
        )
    )


def release(conn: Connection, scope: str, key: str) -> None:
    conn.execute(
        delete(idempotency_keys).where(
            _t.scope == scope, _t.idempotency_key == key, _t.status.is_(None)
        )
    )


def sweep(conn: Connection, *, now: int) -> int:
    """Delete expired rows (kept responses and abandoned claims)."""
    return int(conn.execute(delete(idempotency_keys).where(_t.expires_at <= now)).rowcount)
