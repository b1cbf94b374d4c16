"""Keys, limits and the ledger in front of an ``upstream`` relay: the upstream's usage is
recorded for the retouch key that made the request, and retouch's own rate limits and quotas
refuse before anything goes upstream."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any

import openai
import pytest

from retouch.config import ModelSettings, UpstreamSettings
from tests.accounts.conftest import Accounts, sdk_for
from tests.conftest import Harness, png_bytes
from tests.gateway.hosts import FakeUpstream, ThreadedServer

pytestmark = pytest.mark.anyio
USAGE = {"input_tokens": 61, "input_tokens_details": {"image_tokens": 48, "text_tokens": 13},
         "output_tokens": 1056, "total_tokens": 1117}  # fmt: skip
OK = json.dumps({"created": 1, "data": [{"b64_json": "AAAA"}], "usage": USAGE}).encode()


@pytest.fixture
def fake() -> Iterator[tuple[FakeUpstream, ThreadedServer]]:
    upstream = FakeUpstream()
    upstream.answer((200, {}, OK))
    with ThreadedServer(upstream.app) as server:
        yield upstream, server


async def start(accounts: Accounts, harness_factory: Callable[..., Any], url: str) -> Harness:
    relay = ModelSettings(
        name="relay", engine="upstream", upstream=UpstreamSettings(base_url=f"{url}/v1")
    )
    harness: Harness = await harness_factory(
        accounts.settings(models=[relay]), gate_factory=accounts.gate
    )
    return harness


async def test_upstream_usage_is_recorded_for_the_calling_key(
    accounts: Accounts, harness_factory: Callable[..., Any],
    fake: tuple[FakeUpstream, ThreadedServer],
) -> None:  # fmt: skip
    alice, secret = accounts.create_key("alice")
    accounts.create_key("bob")
    harness = await start(accounts, harness_factory, fake[1].url)
    result = await sdk_for(harness, secret).images.edit(
        model="relay", image=("a.png", png_bytes(), "image/png"), prompt="x", user="u-9"
    )
    assert result.usage is not None
    assert result.usage.total_tokens == 1117
    row = accounts.rows()[-1]
    assert row["key_id"] == alice.id
    assert (row["text_tokens"], row["image_tokens"], row["output_tokens"]) == (13, 48, 1056)
    assert row["total_tokens"] == 1117
    assert (row["status"], row["model"], row["end_user"]) == (200, "relay", "u-9")
    assert "authorization" not in fake[0].received[-1]["headers"]  # no upstream key configured


async def test_rate_limits_and_quotas_refuse_before_the_upstream(
    accounts: Accounts, harness_factory: Callable[..., Any],
    fake: tuple[FakeUpstream, ThreadedServer],
) -> None:  # fmt: skip
    _, limited = accounts.create_key("limited", images_per_minute=2)
    _, metered = accounts.create_key("metered", token_quota=1000)
    harness = await start(accounts, harness_factory, fake[1].url)
    image = ("a.png", png_bytes(), "image/png")
    sdk = sdk_for(harness, limited)
    await sdk.images.edit(model="relay", image=image, prompt="x")
    await sdk.images.edit(model="relay", image=image, prompt="x")
    with pytest.raises(openai.RateLimitError) as info:
        await sdk.images.edit(model="relay", image=image, prompt="x")
    assert info.value.code == "rate_limit_exceeded"
    assert len(fake[0].received) == 2
    quota_sdk = sdk_for(harness, metered)
    await quota_sdk.images.edit(model="relay", image=image, prompt="x")  # 1117 tokens: now over
    with pytest.raises(openai.RateLimitError) as info:
        await quota_sdk.images.edit(model="relay", image=image, prompt="x")
    assert info.value.code == "insufficient_quota"
    assert len(fake[0].received) == 3
