"""API keys: created with a secret shown once, stored as a hash, looked up by prefix.

A secret is ``sk-rt-`` + 40 base62 characters (~238 bits). The first ``PREFIX_LEN`` of those
characters are stored in clear to find the row; the sha256 of the whole secret is compared
with ``hmac.compare_digest``. A fast hash is enough here because the secret is random, not a
password: nobody can run a dictionary against 238 bits. Nothing is cached, so a revoke is seen
by every process on its next request.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import string
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import cast

from sqlalchemy import Connection, RowMapping, bindparam, exists, func, select, update

from retouch.accounting.tables import api_keys, rate_windows

SECRET_PREFIX = "sk-rt-"
PREFIX_LEN = 12
_ALPHABET = string.ascii_letters + string.digits
_BODY_LEN = 40
_DUMMY_HASH = hashlib.sha256(b"no such key").hexdigest()


@dataclass(frozen=True)
class KeyLimits:
    requests_per_minute: int | None = None
    images_per_minute: int | None = None
    token_quota: int | None = None
    models: frozenset[str] | None = None
    """Model names the key may use; None = all."""


@dataclass(frozen=True)
class KeyInfo:
    id: str
    name: str
    limits: KeyLimits
    tokens_used: int
    created_at: int
    revoked_at: int | None

    @property
    def active(self) -> bool:
        return self.revoked_at is None


@dataclass(frozen=True)
class KeyLookup:
    """A verified key with its rate counters for the current minute."""

    key: KeyInfo
    window_requests: int
    window_images: int


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def new_secret() -> str:
    return SECRET_PREFIX + "".join(secrets.choice(_ALPHABET) for _ in range(_BODY_LEN))


def lookup_prefix(secret: str) -> str | None:
    """The stored lookup part of a well-formed secret, else None."""
    if not secret.startswith(SECRET_PREFIX) or len(secret) != len(SECRET_PREFIX) + _BODY_LEN:
        return None
    return secret[len(SECRET_PREFIX) : len(SECRET_PREFIX) + PREFIX_LEN]


def redact(secret: str) -> str:
    """For messages: enough to tell keys apart, far too little to use."""
    if len(secret) <= 10:
        return "*" * len(secret)
    return f"{secret[:8]}***{secret[-4:]}"


def _models_column(models: frozenset[str] | None) -> str | None:
    return ",".join(sorted(models)) if models is not None else None


def _info(row: RowMapping) -> KeyInfo:
    models = row["models"]
    return KeyInfo(
        id=row["id"],
        name=row["name"],
        limits=KeyLimits(
            requests_per_minute=row["requests_per_minute"],
            images_per_minute=row["images_per_minute"],
            token_quota=row["token_quota"],
            models=frozenset(m for m in models.split(",") if m) if models is not None else None,
        ),
        tokens_used=int(row["tokens_used"]),
        created_at=int(row["created_at"]),
        revoked_at=row["revoked_at"],
    )


def create_key(conn: Connection, name: str, limits: KeyLimits) -> tuple[KeyInfo, str]:
    """Insert a key; returns it with its secret (the only time the secret exists in clear)."""
    while True:
        secret = new_secret()
        prefix = lookup_prefix(secret)
        assert prefix is not None
        # 71 bits of prefix: a collision is astronomically rare, but cheap to rule out.
        if not conn.scalar(select(exists().where(api_keys.c.prefix == prefix))):
            break
    key_id = f"key_{secrets.token_hex(8)}"
    now = int(time.time())
    conn.execute(
        api_keys.insert().values(
            id=key_id,
            name=name,
            prefix=prefix,
            secret_hash=hash_secret(secret),
            models=_models_column(limits.models),
            requests_per_minute=limits.requests_per_minute,
            images_per_minute=limits.images_per_minute,
            token_quota=limits.token_quota,
            tokens_used=0,
            created_at=now,
        )
    )
    return KeyInfo(key_id, name, limits, 0, now, None), secret


# Built once: the statements of the per-request path take bind parameters instead of being
# rebuilt with literal values, which keeps SQLAlchemy's per-call work to a cache lookup.
_VERIFY = (
    select(
        api_keys,
        rate_windows.c.requests.label("window_requests"),
        rate_windows.c.images.label("window_images"),
    )
    .select_from(
        api_keys.outerjoin(
            rate_windows,
            (rate_windows.c.key_id == api_keys.c.id)
            & (rate_windows.c.window_start == bindparam("window_start")),
        )
    )
    .where(api_keys.c.prefix == bindparam("prefix"))
)


def verify(conn: Connection, secret: str, window_start: int) -> KeyLookup | None:
    """The key this secret belongs to (revoked or not), with the current minute's counters;
    None for an unknown or malformed secret."""
    prefix = lookup_prefix(secret)
    row = None
    if prefix is not None:
        params = {"prefix": prefix, "window_start": window_start}
        row = conn.execute(_VERIFY, params).mappings().first()
    # Compare even when nothing matched, so timing does not tell a known prefix apart.
    stored = row["secret_hash"] if row is not None else _DUMMY_HASH
    if not hmac.compare_digest(hash_secret(secret), stored) or row is None:
        return None
    return KeyLookup(_info(row), row["window_requests"] or 0, row["window_images"] or 0)


_ANY_KEY = select(exists().where(api_keys.c.id.is_not(None)))


def any_key(conn: Connection) -> bool:
    """Whether a key was ever created (revoked ones count: revoking every key must not turn
    a server open)."""
    return bool(conn.scalar(_ANY_KEY))


def active_key_count(conn: Connection) -> int:
    return int(
        conn.scalar(select(func.count()).select_from(api_keys).where(api_keys.c.revoked_at.is_(None)))
        or 0
    )


def list_keys(conn: Connection) -> list[KeyInfo]:
    rows = conn.execute(select(api_keys).order_by(api_keys.c.created_at, api_keys.c.id)).mappings()
    return [_info(r) for r in rows]


def get_key(conn: Connection, key_id: str) -> KeyInfo | None:
    row = conn.execute(select(api_keys).where(api_keys.c.id == key_id)).mappings().first()
    return _info(row) if row is not None else None


def revoke_key(conn: Connection, key_id: str) -> KeyInfo | None:
    """Revoke (idempotent: the first revocation time is kept). None if there is no such key."""
    conn.execute(
        update(api_keys)
        .where(api_keys.c.id == key_id, api_keys.c.revoked_at.is_(None))
        .values(revoked_at=int(time.time()))
    )
    return get_key(conn, key_id)


EDITABLE = ("name", "requests_per_minute", "images_per_minute", "token_quota", "models")


def update_key(
    conn: Connection, key_id: str, changes: Mapping[str, object], *, reset_tokens: bool = False
) -> KeyInfo | None:
    """Change some of ``EDITABLE`` (a limit of ``None`` = unlimited; ``models`` a frozenset or
    ``None`` = all) and optionally zero the tokens counted against the quota."""
    unknown = set(changes) - set(EDITABLE)
    if unknown:
        raise ValueError(f"not editable: {', '.join(sorted(unknown))}")
    values = dict(changes)
    if "models" in values:
        values["models"] = _models_column(cast("frozenset[str] | None", values["models"]))
    if reset_tokens:
        values["tokens_used"] = 0
    if values:
        conn.execute(update(api_keys).where(api_keys.c.id == key_id).values(**values))
    return get_key(conn, key_id)
