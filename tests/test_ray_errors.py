"""How the Ray backend turns a failed handle call into an OpenAI-shaped error, on either
transport, with a stand-in handle (the real cluster's faults are in tests/cluster)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import numpy as np
import pytest

from retouch.config import load_settings
from retouch.engine.types import EditJob
from retouch.errors import EngineFailed, QueueFull, RetouchError, ServiceUnavailable
from retouch.scheduler.ray import RayBackend

pytest.importorskip("ray.serve")  # (its import warns about pydantic; importorskip mutes that)
from grpc import StatusCode
from grpc.aio import AioRpcError, Metadata
from ray.exceptions import ActorUnavailableError
from ray.serve.exceptions import BackPressureError


class FailingCall:
    """What ``handle.stream.remote()`` / ``handle.run.remote()`` return, failing at once."""

    def __init__(self, error: BaseException) -> None:
        self.error = error
        self.cancelled = False

    async def __anext__(self) -> Any:
        raise self.error

    async def _to_object_ref(self) -> Any:
        raise self.error

    def cancel(self) -> None:
        self.cancelled = True


class Method:
    def __init__(self, handle: FakeHandle, name: str) -> None:
        self.handle = handle
        self.name = name

    def remote(self, *args: Any) -> FailingCall:
        call = FailingCall(self.handle.error)
        self.handle.calls.append(call)
        self.handle.methods.append(self.name)
        return call


class FakeHandle:
    def __init__(self, error: BaseException) -> None:
        self.error = error
        self.calls: list[FailingCall] = []
        self.methods: list[str] = []
        self.stream = Method(self, "stream")
        self.run = Method(self, "run")

    def options(self, **_: Any) -> FakeHandle:
        return self


def job() -> EditJob:
    pixels = np.zeros((8, 8, 3), np.uint8)
    return EditJob(prompt="x", images=(pixels,), mask=None, size=(8, 8), n=1, quality="high",
                   input_fidelity="low", background="auto", partial_images=0)  # fmt: skip


def run(error: BaseException, transport: str) -> tuple[RetouchError, FakeHandle]:
    settings = load_settings(None, cluster={"backend": "ray", "transport": transport})
    handle = FakeHandle(error)
    backend = RayBackend(settings.models[0], settings, handle, info=None)  # type: ignore[arg-type]
    ticket = backend.admit()
    with pytest.raises(RetouchError) as caught:
        asyncio.run(backend.run(job(), ticket, deadline=time.monotonic() + 30))
    return caught.value, handle


@pytest.mark.parametrize("transport", ["grpc", "actor"])
def test_a_grpc_failure_is_an_enveloped_engine_error(transport: str) -> None:
    # e.g. a message over the replica's limit: not retryable, and nothing runs to cancel.
    error = AioRpcError(StatusCode.RESOURCE_EXHAUSTED, Metadata(), Metadata(), details="too big")
    raised, handle = run(error, transport)
    assert isinstance(raised, EngineFailed)
    assert (raised.status, raised.code) == (500, "engine_error")
    assert not handle.calls[0].cancelled


@pytest.mark.parametrize("transport", ["grpc", "actor"])
def test_a_lost_replica_is_a_retryable_503(transport: str) -> None:
    raised, _ = run(ActorUnavailableError("Actor is unavailable.", b"\0" * 16), transport)
    assert isinstance(raised, ServiceUnavailable)
    assert raised.status == 503
    assert raised.headers["retry-after"] == "1"


def test_a_full_front_queue_is_a_429_with_retry_after() -> None:
    raised, _ = run(BackPressureError(num_queued_requests=2, max_queued_requests=2), "grpc")
    assert isinstance(raised, QueueFull)
    assert raised.status == 429
    assert int(raised.headers["retry-after"]) >= 1


def test_plain_jobs_stream_over_grpc_and_call_run_over_actor_calls() -> None:
    """Over gRPC a unary call hears of its replica only with the result, so a plain job
    streams too (its first item ends the queue wait); actor calls use the unary ``run``."""
    error = BackPressureError(num_queued_requests=2, max_queued_requests=2)
    assert run(error, "grpc")[1].methods == ["stream"]
    assert run(error, "actor")[1].methods == ["run"]
