"""The ledger: one row per admitted request, exactly once, also on failure, disconnect and kill."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx
import openai
import pytest

from retouch.accounting import keys
from retouch.accounting.gate import UsageRecord
from retouch.engine.echo import EchoEngine
from tests.accounts.conftest import T0, Accounts, sdk_for
from tests.conftest import Harness, echo_models, encode_image, gradient
from tests.live import LiveServer
from tests.waiting import wait_until

SRC = encode_image(gradient((32, 32)))


def _wait_rows(accounts: Accounts, count: int, timeout: float = 10) -> list[Any]:
    wait_until(lambda: len(accounts.rows()) >= count, timeout)
    return accounts.rows()


@pytest.mark.anyio
async def test_row_matches_the_response(
    accounts: Accounts, harness_factory: Callable[..., Any]
) -> None:
    key, secret = accounts.create_key()
    h: Harness = await harness_factory(accounts.settings(), gate_factory=accounts.gate)
    raw = await sdk_for(h, secret).images.with_raw_response.edit(
        model="gpt-image-1", image=[("a.png", SRC, "image/png"), ("b.png", SRC, "image/png")],
        prompt="make it blue", n=2, user="user-7",
    )  # fmt: skip
    usage = raw.parse().usage
    [row] = accounts.rows()
    assert row["request_id"] == raw.headers["x-request-id"]
    assert row["key_id"] == key.id
    assert row["model"] == "gpt-image-1"
    assert row["status"] == 200
    assert (row["input_images"], row["output_images"]) == (2, 2)
    assert row["text_tokens"] == usage.input_tokens_details.text_tokens
    assert row["image_tokens"] == usage.input_tokens_details.image_tokens
    assert row["output_tokens"] == usage.output_tokens
    assert row["total_tokens"] == usage.total_tokens
    assert row["end_user"] == "user-7"
    assert row["created_at"] == int(T0)
    assert row["latency_ms"] >= 0


@pytest.mark.anyio
async def test_engine_failure_and_bad_upload_are_recorded_once(
    accounts: Accounts, harness_factory: Callable[..., Any]
) -> None:
    _, secret = accounts.create_key()
    h: Harness = await harness_factory(
        accounts.settings(models=echo_models(fail=True)), gate_factory=accounts.gate
    )
    sdk = sdk_for(h, secret)
    with pytest.raises(openai.InternalServerError):
        await sdk.images.edit(model="echo", image=("a.png", SRC, "image/png"), prompt="x")
    # Admitted, then refused while decoding: it was counted, so it is in the ledger too.
    with pytest.raises(openai.BadRequestError):
        await sdk.images.edit(model="echo", image=("a.png", b"not a png", "image/png"), prompt="x")
    rows = accounts.rows()
    assert [(r["status"], r["output_images"], r["total_tokens"]) for r in rows] == [
        (500, 0, 0), (400, 0, 0),
    ]  # fmt: skip


@pytest.mark.anyio
async def test_recording_twice_writes_once(accounts: Accounts) -> None:
    key, _ = accounts.create_key(token_quota=10_000)
    gate = await accounts.gate(accounts.settings())
    record = UsageRecord(
        request_id="req_same", key_id=key.id, model="echo", status=200, input_images=1,
        output_images=1, text_tokens=10, image_tokens=20, output_tokens=30, latency_ms=5,
    )  # fmt: skip
    await gate.record(record)
    await gate.record(record)
    await gate.close()
    assert len(accounts.rows()) == 1
    [info] = accounts.db.read_sync(keys.list_keys)
    assert info.tokens_used == 60  # the quota counter moved once too


@pytest.mark.live
def test_disconnects_are_recorded_once(accounts: Accounts) -> None:
    _, secret = accounts.create_key()
    engine = EchoEngine("echo", {"delay_s": 3.0, "steps": 30})
    settings = accounts.settings()
    with LiveServer(settings, engines={"echo": engine}, gate_factory=accounts.gate) as server:
        headers = {"Authorization": f"Bearer {secret}"}
        files = {"image": ("a.png", SRC, "image/png")}
        # Non-streaming: the client gives up waiting.
        with pytest.raises(httpx.ReadTimeout), httpx.Client(timeout=0.4) as http:
            http.post(f"{server.url}/v1/images/edits", headers=headers, files=files,
                      data={"model": "echo", "prompt": "x"})  # fmt: skip
        rows = _wait_rows(accounts, 1)
        # Streaming: the client hangs up after the first partial image.
        with httpx.Client(timeout=10) as http, http.stream(
            "POST", f"{server.url}/v1/images/edits", headers=headers, files=files,
            data={"model": "echo", "prompt": "x", "stream": "true", "partial_images": "3"},
        ) as response:  # fmt: skip
            assert response.status_code == 200
            for line in response.iter_lines():
                if line.startswith("data:"):
                    break
        rows = _wait_rows(accounts, 2)
        worker = server.services.workers["echo"]
        wait_until(lambda: not worker.running, timeout=10)
        assert engine.cancelled_runs == 2
    rows = accounts.rows()
    assert [(r["status"], r["total_tokens"]) for r in rows] == [(499, 0), (499, 0)]
    assert len({r["request_id"] for r in rows}) == 2
