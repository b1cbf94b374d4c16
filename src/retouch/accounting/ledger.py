"""The usage ledger: one row per admitted request, and the reports built from it.

A row is written once per request id: the insert is ``ON CONFLICT (request_id) DO NOTHING``,
and the key's quota counter grows in the same transaction only when the row was new. Writing
the same record twice (a retried write after a lost connection) therefore changes nothing.
"""

from __future__ import annotations

import datetime as dt
import math
from dataclasses import asdict, dataclass
from typing import Any

from sqlalchemy import BigInteger, Connection, bindparam, case, func, select, update
from sqlalchemy.dialects import postgresql, sqlite

from retouch.accounting.gate import UsageQuery, UsageRecord
from retouch.accounting.tables import api_keys, usage_records
from retouch.errors import InvalidValue
from retouch.integers import ascii_int

BUCKET_SECONDS = {"1m": 60, "1h": 3600, "1d": 86400}
# OpenAI's limits on the number of buckets per page: (default, max).
BUCKET_LIMITS = {"1m": (60, 1440), "1h": (24, 168), "1d": (7, 31)}


def _insert(dialect: str) -> Any:
    insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    return (
        insert(usage_records)
        .on_conflict_do_nothing(index_elements=[usage_records.c.request_id])
        .returning(usage_records.c.id)
    )


# Built once; the row's values are passed as parameters on each call.
_INSERT = {name: _insert(name) for name in ("postgresql", "sqlite")}
_CHARGE = (
    update(api_keys)
    .where(api_keys.c.id == bindparam("charged_key"))
    .values(tokens_used=api_keys.c.tokens_used + bindparam("tokens", type_=BigInteger))
)


def record(conn: Connection, rec: UsageRecord, *, now: int) -> bool:
    """Insert the row for ``rec`` unless one exists; True if this call wrote it."""
    row = {
        "request_id": rec.request_id,
        "key_id": rec.key_id,
        "model": rec.model[:200],
        "status": rec.status,
        "input_images": rec.input_images,
        "output_images": rec.output_images,
        "text_tokens": rec.text_tokens,
        "image_tokens": rec.image_tokens,
        "output_tokens": rec.output_tokens,
        "total_tokens": rec.total_tokens,
        "latency_ms": rec.latency_ms,
        "end_user": rec.user[:200] if rec.user else None,
        "created_at": now,
    }
    inserted = conn.execute(_INSERT[conn.dialect.name], row).first() is not None
    if inserted and rec.key_id is not None and rec.total_tokens:
        conn.execute(_CHARGE, {"charged_key": rec.key_id, "tokens": rec.total_tokens})
    return inserted


# -- retouch usage: per key and day ----------------------------------------------------------


@dataclass(frozen=True)
class DailyUsage:
    day: str
    """UTC date, YYYY-MM-DD."""
    key_id: str | None
    key_name: str | None
    requests: int
    succeeded: int
    input_images: int
    output_images: int
    input_tokens: int
    output_tokens: int
    total_tokens: int

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def daily_usage(conn: Connection, *, since: int, key_id: str | None = None) -> list[DailyUsage]:
    day = (usage_records.c.created_at // 86400).label("day")
    query = (
        select(
            day,
            usage_records.c.key_id,
            api_keys.c.name,
            func.count().label("requests"),
            func.sum(case((usage_records.c.status == 200, 1), else_=0)).label("succeeded"),
            func.sum(usage_records.c.input_images).label("input_images"),
            func.sum(usage_records.c.output_images).label("output_images"),
            func.sum(usage_records.c.text_tokens + usage_records.c.image_tokens).label("input_tokens"),
            func.sum(usage_records.c.output_tokens).label("output_tokens"),
            func.sum(usage_records.c.total_tokens).label("total_tokens"),
        )
        .select_from(usage_records.outerjoin(api_keys, api_keys.c.id == usage_records.c.key_id))
        .where(usage_records.c.created_at >= since)
        .group_by(day, usage_records.c.key_id, api_keys.c.name)
        .order_by(day, api_keys.c.name, usage_records.c.key_id)
    )
    if key_id is not None:
        query = query.where(usage_records.c.key_id == key_id)
    return [
        DailyUsage(
            day=dt.datetime.fromtimestamp(int(r.day) * 86400, dt.UTC).date().isoformat(),
            key_id=r.key_id,
            key_name=r.name,
            requests=int(r.requests),
            succeeded=int(r.succeeded or 0),
            input_images=int(r.input_images or 0),
            output_images=int(r.output_images or 0),
            input_tokens=int(r.input_tokens or 0),
            output_tokens=int(r.output_tokens or 0),
            total_tokens=int(r.total_tokens or 0),
        )
        for r in conn.execute(query)
    ]


# -- GET /v1/organization/usage/images -------------------------------------------------------

_GROUP_COLUMNS = {
    "api_key_id": usage_records.c.key_id,
    "model": usage_records.c.model,
    "user_id": usage_records.c.end_user,
}


def _page_window(query: UsageQuery, now: int) -> tuple[int, int, int, bool]:
    """(first bucket start, bucket width, number of buckets on this page, has_more)."""
    width = BUCKET_SECONDS[query.bucket_width]
    default_limit, max_limit = BUCKET_LIMITS[query.bucket_width]
    limit = query.limit if query.limit is not None else default_limit
    if not 1 <= limit <= max_limit:
        raise InvalidValue(
            f"Invalid 'limit': {limit}; with bucket_width={query.bucket_width} it must be "
            f"between 1 and {max_limit}.",
            param="limit",
        )
    end = query.end_time if query.end_time is not None else now
    if end <= query.start_time:
        raise InvalidValue("'end_time' must be after 'start_time'.", param="end_time")
    first = query.start_time
    if query.page is not None:
        cursor = ascii_int(query.page)
        if cursor is None or cursor < query.start_time:
            raise InvalidValue("Invalid 'page' cursor.", param="page")
        first = cursor
        first = query.start_time + (first - query.start_time) // width * width
    total = math.ceil((end - first) / width)
    count = max(0, min(limit, total))
    return first, width, count, total > count


def images_usage(
    conn: Connection, key_id: str | None, query: UsageQuery, *, now: int
) -> dict[str, Any]:
    """OpenAI's images usage page for one key (``key_id`` None: the open server's rows)."""
    first, width, count, has_more = _page_window(query, now)
    end = first + count * width
    if query.end_time is not None:
        end = min(end, query.end_time)
    bucket = ((usage_records.c.created_at - first) // width).label("bucket")
    groups = [_GROUP_COLUMNS[g].label(g) for g in query.group_by]
    ok = usage_records.c.status == 200
    stmt = (
        select(
            bucket,
            *groups,
            func.sum(case((ok, 1), else_=0)).label("num_model_requests"),
            func.sum(usage_records.c.output_images).label("images"),
            func.sum(usage_records.c.text_tokens + usage_records.c.image_tokens).label("input_tokens"),
            func.sum(usage_records.c.output_tokens).label("output_tokens"),
        )
        .where(
            usage_records.c.key_id.is_(None) if key_id is None else usage_records.c.key_id == key_id,
            usage_records.c.created_at >= first,
            usage_records.c.created_at < end,
        )
        .group_by(bucket, *groups)
        .order_by(bucket, *groups)
    )
    if query.models:
        stmt = stmt.where(usage_records.c.model.in_(query.models))
    if query.user_ids:
        stmt = stmt.where(usage_records.c.end_user.in_(query.user_ids))
    if query.api_key_ids:
        stmt = stmt.where(usage_records.c.key_id.in_(query.api_key_ids))
    results: dict[int, list[dict[str, Any]]] = {i: [] for i in range(count)}
    for row in conn.execute(stmt).mappings():
        if not row["num_model_requests"]:
            continue  # only failed requests: nothing was used
        result: dict[str, Any] = {
            "object": "organization.usage.images.result",
            "images": int(row["images"] or 0),
            "num_model_requests": int(row["num_model_requests"]),
            "input_tokens": int(row["input_tokens"] or 0),
            "output_tokens": int(row["output_tokens"] or 0),
            "project_id": None,
            "user_id": None,
            "api_key_id": None,
            "model": None,
            "size": None,
            "source": None,
        }
        for g in query.group_by:
            result[g] = row[g]
        results[int(row["bucket"])].append(result)
    data = [
        {
            "object": "bucket",
            "start_time": first + i * width,
            "end_time": first + (i + 1) * width,
            "results": results[i],
        }
        for i in range(count)
    ]
    return {
        "object": "page",
        "data": data,
        "has_more": has_more,
        "next_page": str(first + count * width) if has_more else None,
    }
