"""``GET /v1/organization/usage/images`` through the official SDK's admin usage client."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import openai
import pytest

from tests.accounts.conftest import T0, Accounts
from tests.conftest import Harness, encode_image, gradient

pytestmark = pytest.mark.anyio

SRC = encode_image(gradient((32, 32)))
DAY = 86400


def _admin(h: Harness, secret: str) -> openai.AsyncOpenAI:
    return h.sdk.with_options(api_key=secret, admin_api_key=secret, max_retries=0)


async def _edit(h: Harness, secret: str, n: int = 1, **kw: Any) -> None:
    await h.sdk.with_options(api_key=secret, max_retries=0).images.edit(
        model="echo", image=("a.png", SRC, "image/png"), prompt="x", n=n, **kw
    )


async def test_daily_buckets_of_the_callers_own_usage(
    accounts: Accounts, harness_factory: Callable[..., Any]
) -> None:
    key, secret = accounts.create_key("alice")
    _, bob = accounts.create_key("bob")
    h: Harness = await harness_factory(accounts.settings(), gate_factory=accounts.gate)
    start = int(T0) - int(T0) % DAY  # midnight UTC of the test day

    await _edit(h, secret, n=2, user="u1")
    await _edit(h, secret, n=1, user="u2")
    await _edit(h, bob, n=3)  # someone else's: never shown to alice
    accounts.clock.advance(DAY)
    await _edit(h, secret, n=1, user="u1")

    page = await _admin(h, secret).admin.organization.usage.images(
        start_time=start, end_time=start + 3 * DAY
    )
    assert page.object == "page"
    assert not page.has_more
    assert [(b.start_time, b.end_time) for b in page.data] == [
        (start + i * DAY, start + (i + 1) * DAY) for i in range(3)
    ]
    totals = [[(r.images, r.num_model_requests) for r in b.results] for b in page.data]
    assert totals == [[(3, 2)], [(1, 1)], []]
    assert page.data[0].results[0].object == "organization.usage.images.result"

    by_user = await _admin(h, secret).admin.organization.usage.images(
        start_time=start, end_time=start + DAY, group_by=["user_id", "api_key_id"]
    )
    assert sorted((r.user_id, r.api_key_id, r.images) for r in by_user.data[0].results) == [
        ("u1", key.id, 2), ("u2", key.id, 1),
    ]  # fmt: skip

    paged = await _admin(h, secret).admin.organization.usage.images(
        start_time=start, end_time=start + 3 * DAY, limit=2
    )
    assert paged.has_more
    assert len(paged.data) == 2
    rest = await _admin(h, secret).admin.organization.usage.images(
        start_time=start, end_time=start + 3 * DAY, limit=2, page=paged.next_page
    )
    assert not rest.has_more
    assert [b.start_time for b in rest.data] == [start + 2 * DAY]


async def test_usage_parameters_are_checked(
    accounts: Accounts, harness_factory: Callable[..., Any]
) -> None:
    _, secret = accounts.create_key(requests_per_minute=5)
    h: Harness = await harness_factory(accounts.settings(), gate_factory=accounts.gate)
    admin = _admin(h, secret).admin.organization.usage
    with pytest.raises(openai.BadRequestError) as err:
        await admin.images(start_time=0, group_by=["project_id"])
    assert err.value.param == "group_by"
    with pytest.raises(openai.BadRequestError):
        await admin.images(start_time=0, bucket_width="1d", limit=32)
    with pytest.raises(openai.BadRequestError):
        await admin.images(start_time=0, sources=["image.edit"])
    raw = await h.http.get("/v1/organization/usage/images")
    assert raw.status_code == 401  # authenticated like every /v1 route
    ok = await admin.with_raw_response.images(start_time=int(T0) - 60, bucket_width="1m")
    assert ok.headers["x-ratelimit-limit-requests"] == "5"
