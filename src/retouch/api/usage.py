"""``GET /v1/organization/usage/images``: the calling key's own usage, in the shape of OpenAI's
images usage API, so ``client.admin.organization.usage.images(...)`` of the official SDK works
against it (with the key as ``admin_api_key``).

Supported: ``start_time`` (required), ``end_time``, ``bucket_width`` (1m/1h/1d), ``group_by``
(``api_key_id``, ``model``, ``user_id``), ``limit``, ``page``, and the filters ``models``,
``user_ids``, ``api_key_ids``. List parameters may be repeated or spelled with ``[]`` (the SDK
sends ``group_by[]=model``). OpenAI's project, size and source parameters are refused.
"""

from __future__ import annotations

from typing import cast, get_args

import orjson
from starlette.requests import Request
from starlette.responses import Response

from retouch.accounting.gate import BucketWidth, Gate, GroupField, UsageQuery
from retouch.api.auth import authenticate
from retouch.errors import InvalidValue, MissingParameter, UnknownParameter
from retouch.integers import ascii_int

_LISTS = ("group_by", "models", "user_ids", "api_key_ids")
_SCALARS = ("start_time", "end_time", "bucket_width", "limit", "page")


def _int(raw: str, name: str) -> int:
    value = ascii_int(raw, signed=True)
    if value is None:
        raise InvalidValue(f"Invalid '{name}': expected an integer, got '{raw[:40]}'.", param=name)
    return value


def parse_query(request: Request) -> UsageQuery:
    params = request.query_params
    lists: dict[str, list[str]] = {name: [] for name in _LISTS}
    for raw_name, value in params.multi_items():
        name = raw_name.removesuffix("[]")
        if name in lists:
            lists[name] += [v for v in value.split(",") if v]
        elif name not in _SCALARS:
            raise UnknownParameter(raw_name, "This server supports: " + ", ".join(_SCALARS + _LISTS) + ".")
    start = params.get("start_time")
    if not start:
        raise MissingParameter("start_time")
    width = params.get("bucket_width", "1d")
    if width not in get_args(BucketWidth):
        raise InvalidValue(
            f"Invalid value: '{width[:20]}'. Supported values are: '1m', '1h', and '1d'.",
            param="bucket_width",
        )
    groups = lists["group_by"]
    for g in groups:
        if g not in get_args(GroupField):
            raise InvalidValue(
                f"Invalid value: '{g[:40]}' for 'group_by'. This server groups by 'api_key_id', "
                "'model' and 'user_id'.",
                param="group_by",
            )
    end = params.get("end_time")
    limit = params.get("limit")
    return UsageQuery(
        start_time=_int(start, "start_time"),
        end_time=_int(end, "end_time") if end else None,
        bucket_width=cast(BucketWidth, width),
        group_by=tuple(dict.fromkeys(cast(list[GroupField], groups))),
        limit=_int(limit, "limit") if limit else None,
        page=params.get("page") or None,
        models=tuple(lists["models"]),
        user_ids=tuple(lists["user_ids"]),
        api_key_ids=tuple(lists["api_key_ids"]),
    )


async def images_usage(request: Request) -> Response:
    principal = await authenticate(request)
    query = parse_query(request)
    gate: Gate = request.app.state.services.gate
    page = await gate.usage(principal, query)
    return Response(orjson.dumps(page), media_type="application/json")
