"""Per-key rate limits (requests and images per minute) and the token quota.

Rates are counted in fixed one-minute windows, one row per key and minute in ``rate_windows``.
Admission is a single statement, ``INSERT … ON CONFLICT DO UPDATE SET n = n + 1 … RETURNING``:
the database increments atomically and hands back the new counts, and in PostgreSQL the
conflicting row stays locked until the transaction ends, so any number of processes sharing
the database count every request exactly once. A request over a limit raises inside that
transaction, which rolls the increment back: refused requests do not use up the window.

The quota is a running total of tokens (``api_keys.tokens_used``, added to in the same
transaction as each ledger row). A request is admitted while the total is below the quota;
its tokens are known only when it finishes, so the last admitted requests may overshoot it.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Connection, RowMapping, bindparam, delete, select
from sqlalchemy.dialects import postgresql, sqlite

from retouch.accounting.keys import KeyLimits
from retouch.accounting.tables import api_keys, rate_windows
from retouch.errors import AuthenticationFailed, QuotaExceeded, RateLimited, retry_after_headers

WINDOW_S = 60


def window_start(now: float) -> int:
    return int(now // WINDOW_S) * WINDOW_S


def go_duration(seconds: float) -> str:
    """A duration the way Go prints ``time.Duration`` (and OpenAI its reset headers), to the
    millisecond: ``0s``, ``250ms``, ``1s``, ``41.5s``, ``6m0s``, ``1h2m3s``."""
    ms = max(0, round(seconds * 1000))
    if ms == 0:
        return "0s"
    if ms < 1000:
        return f"{ms}ms"
    hours, rest = divmod(ms, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    whole, frac = divmod(rest, 1000)
    secs = f"{whole}.{frac:03d}".rstrip("0") if frac else str(whole)
    if hours:
        return f"{hours}h{minutes}m{secs}s"
    if minutes:
        return f"{minutes}m{secs}s"
    return f"{secs}s"


def rate_headers(
    limits: KeyLimits, *, requests: int, images: int, tokens_used: int, now: float
) -> dict[str, str]:
    """OpenAI's ``x-ratelimit-*`` headers for the limits a key has (none for unlimited ones).

    ``reset`` is the time until the window's counts are back to zero: the end of the current
    minute once anything was counted in it, ``0s`` before. The token quota has a limit and a
    remainder but no reset: it does not renew by itself.
    """
    reset_in = window_start(now) + WINDOW_S - now
    headers: dict[str, str] = {}
    for name, limit, used in (
        ("requests", limits.requests_per_minute, requests),
        ("images", limits.images_per_minute, images),
    ):
        if limit is None:
            continue
        headers[f"x-ratelimit-limit-{name}"] = str(limit)
        headers[f"x-ratelimit-remaining-{name}"] = str(max(0, limit - used))
        headers[f"x-ratelimit-reset-{name}"] = go_duration(reset_in) if used else "0s"
    if limits.token_quota is not None:
        headers["x-ratelimit-limit-tokens"] = str(limits.token_quota)
        headers["x-ratelimit-remaining-tokens"] = str(max(0, limits.token_quota - tokens_used))
    return headers


def _upsert(dialect: str) -> Any:
    insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    values = insert(rate_windows).values(
        key_id=bindparam("key_id"),
        window_start=bindparam("window_start"),
        requests=1,
        images=bindparam("images"),
    )
    return values.on_conflict_do_update(
        index_elements=[rate_windows.c.key_id, rate_windows.c.window_start],
        set_={
            "requests": rate_windows.c.requests + 1,
            "images": rate_windows.c.images + values.excluded.images,
        },
    ).returning(rate_windows.c.requests, rate_windows.c.images)


# Built once with bind parameters: per call, SQLAlchemy only looks the compiled form up.
_UPSERT = {name: _upsert(name) for name in ("postgresql", "sqlite")}
_WINDOW = select(rate_windows.c.requests, rate_windows.c.images).where(
    rate_windows.c.key_id == bindparam("key_id"),
    rate_windows.c.window_start == bindparam("window_start"),
)
_KEY_LIMITS = select(
    api_keys.c.name,
    api_keys.c.requests_per_minute,
    api_keys.c.images_per_minute,
    api_keys.c.token_quota,
    api_keys.c.tokens_used,
    api_keys.c.revoked_at,
).where(api_keys.c.id == bindparam("key_id"))


def _count(conn: Connection, key_id: str, start: int, images: int) -> tuple[int, int]:
    params = {"key_id": key_id, "window_start": start, "images": images}
    row = conn.execute(_UPSERT[conn.dialect.name], params).one()
    return int(row[0]), int(row[1])


def _window(conn: Connection, key_id: str, start: int) -> tuple[int, int]:
    row = conn.execute(_WINDOW, {"key_id": key_id, "window_start": start}).first()
    return (int(row[0]), int(row[1])) if row is not None else (0, 0)


def _limits(row: RowMapping) -> KeyLimits:
    return KeyLimits(
        requests_per_minute=row["requests_per_minute"],
        images_per_minute=row["images_per_minute"],
        token_quota=row["token_quota"],
    )


def admit(conn: Connection, key_id: str, *, images: int, now: float) -> dict[str, str]:
    """Count one request of ``images`` output images against the key; run in a write
    transaction. Returns the ``x-ratelimit-*`` headers, or raises (and so rolls back)."""
    row = conn.execute(_KEY_LIMITS, {"key_id": key_id}).mappings().first()
    if row is None or row["revoked_at"] is not None:  # revoked between authenticate and now
        raise AuthenticationFailed("This API key has been revoked.")
    limits = _limits(row)
    tokens_used = int(row["tokens_used"])
    start = window_start(now)
    reset_in = start + WINDOW_S - now
    who = f"key {key_id} ({row['name']})"

    if limits.token_quota is not None and tokens_used >= limits.token_quota:
        requests_now, images_now = _window(conn, key_id, start)
        raise QuotaExceeded(
            f"You exceeded your current quota: {who} has used {tokens_used:,} of its "
            f"{limits.token_quota:,} tokens. Ask the operator of this server to raise it.",
            headers=rate_headers(
                limits, requests=requests_now, images=images_now, tokens_used=tokens_used, now=now
            ),
        )
    ipm = limits.images_per_minute
    if ipm is not None and images > ipm:
        requests_now, images_now = _window(conn, key_id, start)
        exc = RateLimited(
            f"Request too large for {who} on images per min (IPM): Limit {ipm}, Requested "
            f"{images}. Ask for at most {ipm} images per request.",
            headers={
                **rate_headers(
                    limits, requests=requests_now, images=images_now, tokens_used=tokens_used,
                    now=now,
                ),
                "x-should-retry": "false",  # waiting cannot help
            },
        )  # fmt: skip
        exc.type = "images"
        raise exc
    if limits.requests_per_minute is None and ipm is None:
        return rate_headers(limits, requests=0, images=0, tokens_used=tokens_used, now=now)

    requests_now, images_now = _count(conn, key_id, start, images)
    over: tuple[str, str, int, int, int] | None = None
    rpm = limits.requests_per_minute
    if rpm is not None and requests_now > rpm:
        over = ("requests", "requests per min (RPM)", rpm, requests_now - 1, 1)
    elif ipm is not None and images_now > ipm:
        over = ("images", "images per min (IPM)", ipm, images_now - images, images)
    if over is None:
        return rate_headers(
            limits, requests=requests_now, images=images_now, tokens_used=tokens_used, now=now
        )
    kind, label, limit, used, requested = over
    exc = RateLimited(
        f"Rate limit reached for {who} on {label}: Limit {limit}, Used {used}, Requested "
        f"{requested}. Please try again in {go_duration(reset_in)}.",
        headers={
            **rate_headers(
                limits,
                requests=requests_now - 1,
                images=images_now - images,
                tokens_used=tokens_used,
                now=now,
            ),
            **retry_after_headers(reset_in),
        },
    )
    exc.type = kind
    raise exc


def prune(conn: Connection, *, now: float) -> int:
    """Delete the windows of past minutes (only the current one is ever read)."""
    stale = delete(rate_windows).where(rate_windows.c.window_start < window_start(now))
    return int(conn.execute(stale).rowcount)
