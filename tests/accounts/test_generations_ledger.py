"""Generations in the accounts layer: one ledger row per request (no input images, output
tokens by quality x size), rate-limit headers, and Idempotency-Key replays."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import openai
import pytest

from retouch.engine.echo import EchoEngine
from tests.accounts.conftest import Accounts, sdk_for
from tests.conftest import Harness, echo_models

pytestmark = pytest.mark.anyio
PROMPT = "a lighthouse at dusk"


async def test_ledger_and_idempotency(accounts: Accounts, harness_factory: Callable[..., Any]) -> None:
    _, secret = accounts.create_key(requests_per_minute=10, images_per_minute=100)
    engine = EchoEngine("echo")
    h: Harness = await harness_factory(
        accounts.settings(models=echo_models()), engines={"echo": engine}, gate_factory=accounts.gate
    )
    sdk = sdk_for(h, secret)
    headers = {"Idempotency-Key": "gen-1"}
    first = await sdk.images.with_raw_response.generate(
        prompt=PROMPT, model="gpt-image-1", quality="low", n=2, extra_headers=headers
    )
    again = await sdk.images.with_raw_response.generate(
        prompt=PROMPT, model="gpt-image-1", quality="low", n=2, extra_headers=headers
    )
    assert again.headers["idempotent-replayed"] == "true"
    assert again.http_response.content == first.http_response.content
    assert engine.runs == 1
    rows = accounts.rows()
    assert len(rows) == 1
    row = rows[0]
    assert (row["status"], row["input_images"], row["output_images"]) == (200, 0, 2)
    assert row["output_tokens"] == 2 * 272
    assert row["image_tokens"] == 0
    with pytest.raises(openai.UnprocessableEntityError) as err:  # same key, other body
        await sdk.images.generate(prompt="other", model="gpt-image-1", extra_headers=headers)
    assert err.value.code == "idempotency_key_reused"
    assert first.headers["x-ratelimit-limit-requests"] == "10"
