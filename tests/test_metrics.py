"""``GET /metrics`` (Prometheus text, parsed with prometheus_client's own parser) and JSON logs
that carry the request id."""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
from collections.abc import Callable
from typing import Any

import openai
import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families

from retouch.accounting.gate import OpenGate, UsageRecord
from retouch.config import ModelSettings, Settings
from retouch.logs import JsonFormatter, RequestIdFilter
from tests.conftest import Harness, echo_models
from tests.test_contract_edits import PROMPT, RED, png_file
from tests.waiting import async_wait_until

pytestmark = pytest.mark.anyio


async def scrape(h: Harness) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    reply = await h.http.get("/metrics")
    assert reply.status_code == 200
    assert reply.headers["content-type"].startswith("text/plain; version=0.0.4")
    samples = {}
    for family in text_string_to_metric_families(reply.text):
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return samples


def value(samples: dict[Any, float], name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


async def test_an_edit_is_counted_and_timed_by_stage(echo: Harness) -> None:
    before = await scrape(echo)
    await echo.sdk.images.edit(model="echo", image=png_file(RED), prompt=PROMPT)
    after = await scrape(echo)
    key = {"route": "/v1/images/edits", "model": "echo", "status": "200"}
    assert value(after, "retouch_http_requests_total", **key) == value(before, "retouch_http_requests_total", **key) + 1
    for name in ("retouch_queue_wait_seconds_count", "retouch_engine_seconds_count"):
        assert value(after, name, model="echo") == value(before, name, model="echo") + 1
    assert value(after, "retouch_encode_seconds_count", model="echo", format="png") >= 1
    assert value(after, "retouch_edit_results_total", model="echo", status="200") >= 1
    assert value(after, "retouch_queue_depth", model="echo") == 0
    assert value(after, "retouch_running_jobs", model="echo") == 0


async def test_unknown_paths_share_one_label(echo: Harness) -> None:
    for path in ("/a", "/b/c", "/v1/nope"):
        assert (await echo.http.get(path)).status_code == 404
    samples = await scrape(echo)
    routes = {dict(labels)["route"] for (name, labels) in samples if name == "retouch_http_requests_total"}
    assert "other" in routes
    assert not routes & {"/a", "/b/c", "/v1/nope"}


async def test_partials_overload_and_running_jobs(
    harness_factory: Callable[..., Any], make_settings: Callable[..., Settings]
) -> None:
    h: Harness = await harness_factory(
        make_settings(models=echo_models(delay_s=1.0, steps=20), queue={"max_queue": 0})
    )
    worker = h.services.workers["echo"]
    first = asyncio.ensure_future(h.sdk.images.edit(model="echo", image=png_file(RED), prompt=PROMPT))
    for _ in range(500):
        if worker.running:
            break
        await asyncio.sleep(0.01)
    busy = await scrape(h)
    with pytest.raises(openai.RateLimitError):
        await h.sdk.images.edit(model="echo", image=png_file(RED), prompt=PROMPT)
    await first
    assert value(busy, "retouch_running_jobs", model="echo") == 1
    stream = await h.sdk.images.edit(
        model="echo", image=png_file(RED), prompt=PROMPT, stream=True, partial_images=2
    )
    assert [e.type async for e in stream][-1] == "image_edit.completed"
    after = await scrape(h)
    assert value(after, "retouch_partial_images_total", model="echo") == 2
    assert value(after, "retouch_rejected_requests_total", model="echo", status="429") == 1
    assert value(after, "retouch_http_requests_total", route="/v1/images/edits", model="echo",
                 status="429") == 1  # fmt: skip


async def test_deadline_is_counted_as_504(
    harness_factory: Callable[..., Any], make_settings: Callable[..., Settings]
) -> None:
    h: Harness = await harness_factory(
        make_settings(models=echo_models(delay_s=1.0, steps=20), queue={"max_queue": 4, "deadline_s": 0.2})
    )
    first = asyncio.ensure_future(h.sdk.images.edit(model="echo", image=png_file(RED), prompt=PROMPT))
    await asyncio.sleep(0.05)
    with pytest.raises(openai.APIStatusError) as err:
        await h.sdk.images.edit(model="echo", image=png_file(RED), prompt=PROMPT)
    assert err.value.status_code == 504
    first.cancel()
    with contextlib.suppress(asyncio.CancelledError, openai.APIError):
        await first
    samples = await scrape(h)
    assert value(samples, "retouch_rejected_requests_total", model="echo", status="504") >= 1


async def test_a_run_past_its_deadline_is_a_504_and_frees_the_model(
    harness_factory: Callable[..., Any], make_settings: Callable[..., Settings]
) -> None:
    """A job still running at the model's run deadline is cancelled at its next step: the
    client gets 504 ``run_timeout``, the metric counts it, and the model takes the next job
    (on the Ray backend the replica enforces the deadline; tests/cluster runs this there)."""
    model = ModelSettings(name="echo", engine="echo", family="native", run_deadline_s=0.5,
                          options={"delay_s": 5.0, "steps": 100})  # fmt: skip
    h: Harness = await harness_factory(make_settings(models=[model]))
    with pytest.raises(openai.APIStatusError) as err:
        await h.sdk.images.edit(model="echo", image=png_file(RED), prompt=PROMPT)
    assert err.value.status_code == 504
    assert err.value.code == "run_timeout"
    samples = await scrape(h)
    assert value(samples, "retouch_rejected_requests_total", model="echo", status="504") >= 1

    async def freed() -> bool:  # the engine stops at its next step (50 ms here)
        ready = await h.http.get("/readyz")
        return ready.status_code == 200 and ready.json()["models"]["echo"]["running"] == 0

    await async_wait_until(freed, timeout=10)


class FailingLedger(OpenGate):
    async def record(self, record: UsageRecord) -> None:
        raise RuntimeError("database is down")


async def test_ledger_failures_are_counted_and_the_edit_still_succeeds(
    harness_factory: Callable[..., Any], make_settings: Callable[..., Settings]
) -> None:
    async def gate(settings: Settings) -> OpenGate:
        return FailingLedger()

    h: Harness = await harness_factory(make_settings(models=echo_models()), gate_factory=gate)
    result = await h.sdk.images.edit(model="echo", image=png_file(RED), prompt=PROMPT)
    assert result.data[0].b64_json
    assert value(await scrape(h), "retouch_ledger_write_failures_total") == 1


async def test_a_broken_metrics_hook_never_fails_a_request(echo: Harness) -> None:
    metrics = echo.services.metrics

    def broken(*args: Any) -> Any:
        raise RuntimeError("metrics backend exploded")

    metrics._requests.labels = broken
    metrics._encode.labels = broken
    metrics._results.labels = broken
    result = await echo.sdk.images.edit(model="echo", image=png_file(RED), prompt=PROMPT)
    assert result.data[0].b64_json


async def test_json_logs_carry_the_request_id(echo: Harness) -> None:
    buffer = io.StringIO()
    handler = logging.StreamHandler(buffer)
    handler.addFilter(RequestIdFilter())
    handler.setFormatter(JsonFormatter())
    access = logging.getLogger("retouch.access")
    access.addHandler(handler)
    old_level = access.level
    access.setLevel(logging.INFO)
    try:
        reply = await echo.http.get("/v1/models")
    finally:
        access.removeHandler(handler)
        access.setLevel(old_level)
    lines = [orjson.loads(line) for line in buffer.getvalue().splitlines()]
    assert len(lines) == 1
    line = lines[0]
    assert line["request_id"] == reply.headers["x-request-id"]
    assert (line["route"], line["status"], line["level"]) == ("/v1/models", 200, "info")
    assert isinstance(line["duration_ms"], float)
    assert line["ts"].endswith("Z")


def test_json_formatter_outside_requests_and_with_exceptions() -> None:
    formatter = JsonFormatter()
    try:
        raise ValueError("boom")
    except ValueError:
        import sys

        record = logging.LogRecord("x", logging.ERROR, __file__, 1, "failed %s", ("a",), sys.exc_info())
    RequestIdFilter().filter(record)
    doc = orjson.loads(formatter.format(record))
    assert doc["message"] == "failed a"
    assert doc["request_id"] is None
    assert "ValueError: boom" in doc["exc_info"]
