"""``Idempotency-Key``: a retry with the same key and body is answered, not run and billed again."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

import openai
import pytest
from sqlalchemy.exc import OperationalError

from retouch.api import idempotency
from retouch.engine.echo import EchoEngine
from tests.accounts.conftest import Accounts, sdk_for
from tests.conftest import Harness, echo_models, encode_image, gradient
from tests.waiting import async_wait_until

pytestmark = pytest.mark.anyio

SRC = encode_image(gradient((32, 32)))
OTHER = encode_image(gradient((40, 32)))


def _edit_raw(sdk: openai.AsyncOpenAI, key: str | None, image: bytes = SRC, **kw: Any) -> Any:
    headers = {"Idempotency-Key": key} if key else {}
    return sdk.images.with_raw_response.edit(
        model="echo", image=("a.png", image, "image/png"), prompt="x", extra_headers=headers, **kw
    )


async def test_retry_gets_the_first_result(
    accounts: Accounts, harness_factory: Callable[..., Any]
) -> None:
    _, secret = accounts.create_key(requests_per_minute=10)
    engine = EchoEngine("echo")
    h: Harness = await harness_factory(
        accounts.settings(), engines={"echo": engine}, gate_factory=accounts.gate
    )
    sdk = sdk_for(h, secret)

    first = await _edit_raw(sdk, "retry-1")
    second = await _edit_raw(sdk, "retry-1")
    assert second.http_response.content == first.http_response.content
    assert second.headers["idempotent-replayed"] == "true"
    assert "idempotent-replayed" not in first.headers
    assert engine.runs == 1
    assert len(accounts.rows()) == 1  # billed once
    # A replay is not a new request for the rate limit either.
    assert second.headers["x-ratelimit-remaining-requests"] == "9"

    # Without the header, or with a fresh key, the same upload runs again.
    await _edit_raw(sdk, None)
    await _edit_raw(sdk, "retry-2")
    assert engine.runs == 3
    assert len(accounts.rows()) == 3


async def test_keys_are_per_api_key_and_bound_to_the_body(
    accounts: Accounts, harness_factory: Callable[..., Any]
) -> None:
    _, alice = accounts.create_key("alice")
    _, bob = accounts.create_key("bob")
    engine = EchoEngine("echo")
    h: Harness = await harness_factory(
        accounts.settings(), engines={"echo": engine}, gate_factory=accounts.gate
    )
    await _edit_raw(sdk_for(h, alice), "k")
    with pytest.raises(openai.UnprocessableEntityError) as err:
        await _edit_raw(sdk_for(h, alice), "k", OTHER)
    assert err.value.code == "idempotency_key_reused"
    with pytest.raises(openai.UnprocessableEntityError):  # text fields count too
        await _edit_raw(sdk_for(h, alice), "k", quality="low")
    # Bob's "k" is his own: it runs.
    replayed = await _edit_raw(sdk_for(h, bob), "k")
    assert "idempotent-replayed" not in replayed.headers
    assert engine.runs == 2


async def test_failed_request_frees_its_key(
    accounts: Accounts, harness_factory: Callable[..., Any]
) -> None:
    _, secret = accounts.create_key()
    engine = EchoEngine("echo", {"fail": True})
    h: Harness = await harness_factory(
        accounts.settings(models=echo_models(fail=True)), engines={"echo": engine},
        gate_factory=accounts.gate,
    )  # fmt: skip
    sdk = sdk_for(h, secret)
    for _ in range(2):
        with pytest.raises(openai.InternalServerError):
            await _edit_raw(sdk, "flaky")
    assert engine.runs == 2  # the retry ran: a failure is not kept
    assert [r["status"] for r in accounts.rows()] == [500, 500]

    with pytest.raises(openai.BadRequestError):  # a 4xx is not kept either
        await _edit_raw(sdk, "bad", quality="ultra")
    with pytest.raises(openai.BadRequestError):
        await _edit_raw(sdk, "bad", quality="ultra")


async def test_in_flight_duplicate_gets_409_then_the_result(
    accounts: Accounts, harness_factory: Callable[..., Any]
) -> None:
    _, secret = accounts.create_key()
    engine = EchoEngine("echo", {"delay_s": 0.6})
    h: Harness = await harness_factory(
        accounts.settings(), engines={"echo": engine}, gate_factory=accounts.gate
    )
    sdk = sdk_for(h, secret)
    first = asyncio.ensure_future(_edit_raw(sdk, "slow"))
    await async_wait_until(lambda: engine.runs, timeout=10)
    with pytest.raises(openai.ConflictError) as err:
        await _edit_raw(sdk, "slow")
    assert err.value.code == "idempotency_key_in_use"
    assert "retry-after" in err.value.response.headers
    done = await first
    later = await _edit_raw(sdk, "slow")
    assert later.http_response.content == done.http_response.content
    assert engine.runs == 1


async def test_kept_responses_expire(
    accounts: Accounts, harness_factory: Callable[..., Any]
) -> None:
    _, secret = accounts.create_key()
    engine = EchoEngine("echo")
    settings = accounts.settings(accounts={"idempotency_ttl_s": 600})
    h: Harness = await harness_factory(settings, engines={"echo": engine}, gate_factory=accounts.gate)
    sdk = sdk_for(h, secret)
    await _edit_raw(sdk, "ttl")
    accounts.clock.advance(599)
    await _edit_raw(sdk, "ttl")
    assert engine.runs == 1
    accounts.clock.advance(2)
    assert await accounts.gates[-1].sweep() >= 1  # the sweeper deletes what expired
    await _edit_raw(sdk, "ttl")
    assert engine.runs == 2


async def test_streams_are_not_kept(accounts: Accounts, harness_factory: Callable[..., Any]) -> None:
    _, secret = accounts.create_key()
    engine = EchoEngine("echo")
    h: Harness = await harness_factory(
        accounts.settings(), engines={"echo": engine}, gate_factory=accounts.gate
    )
    for _ in range(2):
        stream = await sdk_for(h, secret).images.edit(
            model="echo", image=("a.png", SRC, "image/png"), prompt="x", stream=True,
            extra_headers={"Idempotency-Key": "streamed"},
        )  # fmt: skip
        assert [e.type async for e in stream][-1] == "image_edit.completed"
    assert engine.runs == 2  # the key was released, not held until its lease ran out
    assert [r["status"] for r in accounts.rows()] == [200, 200]


async def test_a_completed_edit_is_delivered_and_billed_once_when_storing_it_fails(
    accounts: Accounts, harness_factory: Callable[..., Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    _, secret = accounts.create_key()
    engine = EchoEngine("echo")
    h: Harness = await harness_factory(
        accounts.settings(), engines={"echo": engine}, gate_factory=accounts.gate
    )
    gate = accounts.gates[-1]
    real = gate.remember
    failures = 4  # three quick attempts fail, then the first background retry fails too

    async def flaky(*args: Any, **kwargs: Any) -> None:
        nonlocal failures
        if failures:
            failures -= 1
            raise OperationalError("INSERT", {}, Exception("database is locked"))
        await real(*args, **kwargs)

    monkeypatch.setattr(gate, "remember", flaky)
    sdk = sdk_for(h, secret)
    first = await _edit_raw(sdk, "billed")
    assert first.http_response.status_code == 200  # the edit is delivered regardless
    assert first.parse().data[0].b64_json
    # The SDK's retry meanwhile must not run (and bill) the edit again.
    with pytest.raises(openai.ConflictError):
        await _edit_raw(sdk, "billed")
    async def stored() -> bool:  # the background retry stores it
        return failures == 0 and await _stored(gate, secret)

    await async_wait_until(stored, timeout=10)
    replayed = await _edit_raw(sdk, "billed")
    assert replayed.headers["idempotent-replayed"] == "true"
    assert replayed.http_response.content == first.http_response.content
    assert engine.runs == 1
    assert [r["status"] for r in accounts.rows()] == [200]


async def _stored(gate: Any, secret: str) -> bool:
    from sqlalchemy import select

    from retouch.accounting.tables import idempotency_keys

    def read(conn: Any) -> bool:
        row = conn.execute(
            select(idempotency_keys.c.status).where(idempotency_keys.c.idempotency_key == "billed")
        ).first()
        return row is not None and row[0] is not None

    return bool(await gate.db.read(read))


async def test_a_replay_never_hands_back_expired_links(
    accounts: Accounts, harness_factory: Callable[..., Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    _, secret = accounts.create_key()
    engine = EchoEngine("echo")
    settings = accounts.settings(storage={"allow_url_for_gpt_models": True, "url_ttl_s": 60})
    h: Harness = await harness_factory(settings, engines={"echo": engine}, gate_factory=accounts.gate)
    sdk = sdk_for(h, secret)
    first = await _edit_raw(sdk, "links", response_format="url")
    assert first.parse().data[0].url
    fresh = await _edit_raw(sdk, "links", response_format="url")
    assert fresh.headers["idempotent-replayed"] == "true"  # links still valid: replayed
    # The replay check's clock, 61 s on: the links' expiry is past (no sleep, so a slow run
    # cannot reach the expiry before the second request either).
    later = SimpleNamespace(time=lambda: time.time() + 61, monotonic=time.monotonic)
    monkeypatch.setattr(idempotency, "time", later)
    with pytest.raises(openai.UnprocessableEntityError) as err:
        await _edit_raw(sdk, "links", response_format="url")
    assert err.value.code == "idempotency_replay_expired"
    assert engine.runs == 1
