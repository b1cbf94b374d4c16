"""Bearer keys on every /v1 route, through the official SDK, on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import openai
import pytest
from sqlalchemy import text

from retouch.accounting import keys
from retouch.accounting.database_gate import DatabaseGate, ServingRefused
from retouch.config import ModelSettings
from retouch.errors import AuthenticationFailed
from tests.accounts.conftest import Accounts, sdk_for
from tests.conftest import Harness, encode_image, gradient
from tests.waiting import async_wait_until

pytestmark = pytest.mark.anyio

SRC = encode_image(gradient((32, 32)))


async def _edit(sdk: openai.AsyncOpenAI, model: str = "echo", **kw: Any) -> Any:
    return await sdk.images.edit(model=model, image=("a.png", SRC, "image/png"), prompt="x", **kw)


async def test_missing_wrong_and_revoked_keys_get_401(
    accounts: Accounts, harness_factory: Callable[..., Any]
) -> None:
    key, secret = accounts.create_key()
    other, other_secret = accounts.create_key("bob")
    h: Harness = await harness_factory(accounts.settings(), gate_factory=accounts.gate)

    raw = await h.http.get("/v1/models")
    assert raw.status_code == 401
    assert raw.json()["error"]["code"] == "invalid_api_key"
    assert raw.headers["www-authenticate"].startswith("Bearer")
    raw = await h.http.get("/v1/models", headers={"Authorization": f"Basic {secret}"})
    assert raw.status_code == 401

    for wrong in ("sk-test", secret[:-1] + ("A" if secret[-1] != "A" else "B")):
        with pytest.raises(openai.AuthenticationError) as err:
            await sdk_for(h, wrong).models.list()
        assert err.value.code == "invalid_api_key"
        assert wrong not in err.value.message  # the secret is never echoed whole

    with pytest.raises(openai.AuthenticationError):
        await _edit(sdk_for(h, "sk-test"))
    assert accounts.rows() == []  # refused before admission: nothing billed

    assert (await _edit(sdk_for(h, secret))).data
    accounts.revoke(key.id)  # as `retouch keys revoke` would, from outside the server
    with pytest.raises(openai.AuthenticationError) as err:
        await _edit(sdk_for(h, secret))
    assert "revoked" in err.value.message
    assert (await _edit(sdk_for(h, other_secret))).data  # other keys are untouched
    assert [r["key_id"] for r in accounts.rows()] == [key.id, other.id]


async def test_revocation_reaches_every_server_at_once(
    accounts: Accounts, harness_factory: Callable[..., Any]
) -> None:
    key, secret = accounts.create_key()
    first: Harness = await harness_factory(accounts.settings(), gate_factory=accounts.gate)
    second: Harness = await harness_factory(accounts.settings(), gate_factory=accounts.gate)
    for h in (first, second):
        await sdk_for(h, secret).models.list()
    accounts.revoke(key.id)
    for h in (first, second):
        with pytest.raises(openai.AuthenticationError):
            await sdk_for(h, secret).models.list()


async def test_key_limited_to_some_models(
    accounts: Accounts, harness_factory: Callable[..., Any]
) -> None:
    models = [ModelSettings(name="echo", engine="echo"), ModelSettings(name="echo2", engine="echo")]
    _, secret = accounts.create_key(models=["echo"])
    h: Harness = await harness_factory(
        accounts.settings(models=models, default_model="echo"), gate_factory=accounts.gate
    )
    sdk = sdk_for(h, secret)
    with pytest.raises(openai.NotFoundError) as err:
        await _edit(sdk, "echo2")
    assert err.value.code == "model_not_found"
    assert (await _edit(sdk, "echo")).data
    # OpenAI's names route to the default model, which this key may use.
    assert (await _edit(sdk, "gpt-image-1")).data
    listed = {m.id for m in (await sdk.models.list()).data}
    assert "echo" in listed
    assert "echo2" not in listed
    with pytest.raises(openai.NotFoundError):
        await sdk.models.retrieve("echo2")
    assert (await sdk.models.retrieve("echo")).id == "echo"


async def test_open_until_the_first_key_exists(
    accounts: Accounts, harness_factory: Callable[..., Any]
) -> None:
    settings = accounts.settings(accounts={"open_recheck_s": 0.2})
    h: Harness = await harness_factory(settings, gate_factory=accounts.gate)
    assert (await _edit(sdk_for(h, "anything"))).data  # no key in the database: open
    assert [r["key_id"] for r in accounts.rows()] == [None]  # still in the ledger

    key, secret = accounts.create_key()  # as `retouch keys create` in another process would

    async def closed() -> bool:
        try:
            await _edit(sdk_for(h, "anything"))
        except openai.AuthenticationError:
            return True
        return False

    await async_wait_until(closed, timeout=10)  # within open_recheck_s
    assert (await _edit(sdk_for(h, secret))).data
    accounts.revoke(key.id)
    with pytest.raises(openai.AuthenticationError):  # revoking every key does not reopen
        await _edit(sdk_for(h, "anything"))


async def test_serving_open_asks_the_database_once_per_recheck_interval(
    accounts: Accounts, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Serving open, concurrent requests share one "does a key exist?" query, and the answer
    is kept for ``open_recheck_s``; after that the next request asks again and sees a key."""
    asked: list[int] = []
    any_key = keys.any_key

    def counted(conn: Any) -> bool:
        asked.append(1)
        return any_key(conn)

    gate = await DatabaseGate.start(accounts.settings(accounts={"open_recheck_s": 0.3}))
    try:
        monkeypatch.setattr(keys, "any_key", counted)
        principals = await asyncio.gather(*(gate.authenticate(None) for _ in range(20)))
        assert {p.key_id for p in principals} == {None}
        assert len(asked) == 1
        accounts.create_key()
        assert (await gate.authenticate(None)).key_id is None  # the kept answer: still open
        assert len(asked) == 1

        async def asks_again() -> bool:
            try:
                await gate.authenticate(None)
            except AuthenticationFailed:
                return True
            return False

        await async_wait_until(asks_again, timeout=10)
        assert len(asked) == 2
        assert not gate.open_mode
    finally:
        await gate.close()


async def test_no_keys_off_loopback_needs_insecure(accounts: Accounts) -> None:
    with pytest.raises(ServingRefused, match="retouch keys create"):
        await DatabaseGate.start(accounts.settings(host="0.0.0.0"))
    gate = await DatabaseGate.start(accounts.settings(host="0.0.0.0", insecure=True))
    assert gate.open_mode
    await gate.close()
    accounts.create_key()
    gate = await DatabaseGate.start(accounts.settings(host="0.0.0.0"))
    assert not gate.open_mode
    await gate.close()


async def test_signed_blob_links_need_no_bearer(
    accounts: Accounts, harness_factory: Callable[..., Any]
) -> None:
    _, secret = accounts.create_key()
    settings = accounts.settings(storage={"allow_url_for_gpt_models": True})
    h: Harness = await harness_factory(settings, gate_factory=accounts.gate)
    result = await _edit(sdk_for(h, secret), response_format="url")
    url = result.data[0].url
    assert url is not None
    blob = await h.http.get(url)  # no Authorization header: the signature is the credential
    assert blob.status_code == 200
    assert blob.headers["content-type"] == "image/png"
    tampered = await h.http.get(url.replace("sig=", "sig=x"))
    assert tampered.status_code == 403


async def test_database_outage_is_a_retryable_503(
    accounts: Accounts, harness_factory: Callable[..., Any]
) -> None:
    _, secret = accounts.create_key()
    h: Harness = await harness_factory(accounts.settings(), gate_factory=accounts.gate)
    accounts.db.write_sync(lambda conn: conn.execute(text("DROP TABLE rate_windows")))
    with pytest.raises(openai.InternalServerError) as err:
        await sdk_for(h, secret).models.list()
    assert err.value.status_code == 503
    assert err.value.code == "accounts_unavailable"
    assert err.value.response.headers["retry-after"] == "2"
