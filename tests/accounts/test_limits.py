"""Rate limits, quota and their headers, through the official SDK on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import openai
import pytest

from retouch.accounting import keys
from retouch.accounting.limits import go_duration
from tests.accounts.conftest import Accounts, counting_sdk, sdk_for
from tests.conftest import Harness, encode_image, gradient

pytestmark = pytest.mark.anyio

SRC = encode_image(gradient((32, 32)))


def _edit_raw(sdk: openai.AsyncOpenAI, **kw: Any) -> Any:
    kw.setdefault("model", "echo")
    return sdk.images.with_raw_response.edit(image=("a.png", SRC, "image/png"), prompt="x", **kw)


def _limits(headers: Any) -> dict[str, str]:
    return {k: v for k, v in headers.items() if k.startswith("x-ratelimit-")}


def test_go_durations() -> None:
    assert [go_duration(s) for s in (0, 0.02, 1, 41.5, 60, 360, 3723.25)] == [
        "0s", "20ms", "1s", "41.5s", "1m0s", "6m0s", "1h2m3.25s",
    ]  # fmt: skip


async def test_requests_per_minute(accounts: Accounts, harness_factory: Callable[..., Any]) -> None:
    _, secret = accounts.create_key(requests_per_minute=2)
    h: Harness = await harness_factory(accounts.settings(), gate_factory=accounts.gate)
    sdk = sdk_for(h, secret)

    first = await _edit_raw(sdk)
    assert _limits(first.headers) == {
        "x-ratelimit-limit-requests": "2",
        "x-ratelimit-remaining-requests": "1",
        "x-ratelimit-reset-requests": "50s",  # the clock is 10 s into its minute
    }
    second = await _edit_raw(sdk)
    assert second.headers["x-ratelimit-remaining-requests"] == "0"

    with pytest.raises(openai.RateLimitError) as err:
        await _edit_raw(sdk)
    assert err.value.code == "rate_limit_exceeded"
    assert err.value.type == "requests"
    headers = err.value.response.headers
    assert headers["retry-after"] == "50"
    assert headers["retry-after-ms"] == "50000"
    assert headers["x-ratelimit-remaining-requests"] == "0"
    assert "x-should-retry" not in headers  # worth retrying, after Retry-After

    # Not admitted responses carry the headers too: listings and errors before admission.
    listing = await sdk.models.with_raw_response.list()
    assert listing.headers["x-ratelimit-remaining-requests"] == "0"
    with pytest.raises(openai.BadRequestError) as bad:
        await _edit_raw(sdk, quality="ultra")
    assert bad.value.response.headers["x-ratelimit-limit-requests"] == "2"

    accounts.clock.advance(50)  # the next minute
    again = await _edit_raw(sdk)
    assert again.headers["x-ratelimit-remaining-requests"] == "1"
    assert len(accounts.rows()) == 3  # the refused request was not recorded


async def test_images_per_minute_counts_n(
    accounts: Accounts, harness_factory: Callable[..., Any]
) -> None:
    _, secret = accounts.create_key(images_per_minute=3)
    h: Harness = await harness_factory(accounts.settings(), gate_factory=accounts.gate)
    sdk = sdk_for(h, secret)

    ok = await _edit_raw(sdk, n=2)
    assert ok.headers["x-ratelimit-remaining-images"] == "1"
    with pytest.raises(openai.RateLimitError) as err:
        await _edit_raw(sdk, n=2)
    assert err.value.type == "images"
    assert "retry-after" in err.value.response.headers
    # The refused request did not use the window up: one image still fits.
    ok = await _edit_raw(sdk, n=1)
    assert ok.headers["x-ratelimit-remaining-images"] == "0"
    assert len(ok.parse().data) == 1

    accounts.clock.advance(60)
    with pytest.raises(openai.RateLimitError) as err:  # can never fit: do not retry
        await _edit_raw(sdk, n=4)
    assert err.value.response.headers["x-should-retry"] == "false"


async def test_token_quota_is_final(accounts: Accounts, harness_factory: Callable[..., Any]) -> None:
    key, secret = accounts.create_key(token_quota=100)
    h: Harness = await harness_factory(accounts.settings(), gate_factory=accounts.gate)
    sdk, sent = counting_sdk(h, secret, max_retries=2)

    first = await _edit_raw(sdk)
    used = first.parse().usage.total_tokens
    assert used > 100  # one edit of 32x32 overshoots this quota: the last request may
    assert first.headers["x-ratelimit-limit-tokens"] == "100"

    with pytest.raises(openai.RateLimitError) as err:
        await _edit_raw(sdk)
    assert err.value.code == "insufficient_quota"
    assert err.value.response.headers["x-should-retry"] == "false"
    assert err.value.response.headers["x-ratelimit-remaining-tokens"] == "0"
    assert len(sent) == 2  # the SDK honoured x-should-retry: no retries of the 429
    rows = accounts.rows()
    assert len(rows) == 1
    assert rows[0]["total_tokens"] == used

    # `retouch keys update --token-quota` raises it again; nothing is cached.
    accounts.db.write_sync(keys.update_key, key.id, {"token_quota": used + 1000})
    again = await _edit_raw(sdk)
    assert int(again.headers["x-ratelimit-remaining-tokens"]) == used + 1000 - used


async def test_concurrent_requests_are_counted_exactly(
    accounts: Accounts, harness_factory: Callable[..., Any]
) -> None:
    _, secret = accounts.create_key(requests_per_minute=5)
    h: Harness = await harness_factory(accounts.settings(), gate_factory=accounts.gate)
    sdk = sdk_for(h, secret)

    async def one() -> int:
        try:
            return (await _edit_raw(sdk)).status_code
        except openai.RateLimitError:
            return 429

    statuses = await asyncio.gather(*(one() for _ in range(12)))
    assert sorted(statuses) == [200] * 5 + [429] * 7
    assert len(accounts.rows()) == 5


async def test_unlimited_keys_send_no_limit_headers(
    accounts: Accounts, harness_factory: Callable[..., Any]
) -> None:
    _, secret = accounts.create_key()
    h: Harness = await harness_factory(accounts.settings(), gate_factory=accounts.gate)
    response = await _edit_raw(sdk_for(h, secret))
    assert _limits(response.headers) == {}
