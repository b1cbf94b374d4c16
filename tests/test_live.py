"""Behaviour that needs a real socket: streaming order and timing, disconnects, admission."""

from __future__ import annotations

import threading
from collections.abc import Callable

import httpx
import openai
import pytest

from retouch.config import Settings
from retouch.engine.echo import EchoEngine
from tests.conftest import echo_models, encode_image, gradient
from tests.live import LiveServer
from tests.waiting import wait_until

pytestmark = pytest.mark.live

SRC = encode_image(gradient((64, 64)))


def test_stream_partials_arrive_before_completion(make_settings: Callable[..., Settings]) -> None:
    engine = EchoEngine("echo", {"delay_s": 0.8, "steps": 4})
    with LiveServer(make_settings(models=echo_models()), engines={"echo": engine}) as server:
        seen: list[tuple[str, int]] = []
        worker = server.services.workers["echo"]
        with server.sdk() as client:
            stream = client.images.edit(
                model="echo", image=("a.png", SRC, "image/png"), prompt="x", stream=True,
                partial_images=3,
            )  # fmt: skip
            for event in stream:
                seen.append((event.type, worker.running))
    types = [t for t, _ in seen]
    assert types == ["image_edit.partial_image"] * 3 + ["image_edit.completed"]
    # The first partial reached the client while the engine was still working on later steps.
    assert seen[0][1] == 1


def test_disconnect_cancels_the_engine(make_settings: Callable[..., Settings]) -> None:
    engine = EchoEngine("echo", {"delay_s": 3.0, "steps": 30})
    with LiveServer(make_settings(models=echo_models()), engines={"echo": engine}) as server:
        with httpx.Client(timeout=10) as http, http.stream(
            "POST", f"{server.url}/v1/images/edits",
            files={"image": ("a.png", SRC, "image/png")},
            data={"model": "echo", "prompt": "x", "stream": "true", "partial_images": "3"},
        ) as response:  # fmt: skip
            assert response.status_code == 200
            for line in response.iter_lines():
                if line.startswith("data:"):
                    break  # first partial arrived; hang up
        worker = server.services.workers["echo"]
        wait_until(lambda: engine.cancelled_runs and not worker.running, timeout=5)
        assert engine.cancelled_runs == 1
        assert worker.running == 0
        assert worker.admitted == 0
        records = server.services.gate.records
        assert [r.status for r in records] == [499]


def test_disconnect_cancels_non_streaming_edit(make_settings: Callable[..., Settings]) -> None:
    engine = EchoEngine("echo", {"delay_s": 3.0, "steps": 30})
    with LiveServer(make_settings(models=echo_models()), engines={"echo": engine}) as server:
        with httpx.Client(timeout=0.5) as http, pytest.raises(httpx.ReadTimeout):
            http.post(
                f"{server.url}/v1/images/edits",
                files={"image": ("a.png", SRC, "image/png")},
                data={"model": "echo", "prompt": "x"},
            )
        wait_until(lambda: engine.cancelled_runs, timeout=5)
        assert engine.cancelled_runs == 1


def test_health_answers_while_edits_run_and_queue_full_is_429(
    make_settings: Callable[..., Settings],
) -> None:
    engine = EchoEngine("echo", {"delay_s": 1.5, "steps": 10})
    settings = make_settings(models=echo_models(), queue={"max_queue": 1})
    with LiveServer(settings, engines={"echo": engine}) as server, server.sdk() as client:
        results: list[object] = []

        def edit() -> None:
            try:
                results.append(client.images.edit(model="echo", image=("a.png", SRC, "image/png"), prompt="x"))
            except openai.APIError as exc:
                results.append(exc)

        threads = [threading.Thread(target=edit) for _ in range(2)]
        for t in threads:
            t.start()
        worker = server.services.workers["echo"]
        wait_until(lambda: worker.admitted >= 2 and worker.running == 1, timeout=10)
        with httpx.Client() as http:
            assert http.get(f"{server.url}/healthz").status_code == 200
            # answered while the engine still works: the event loop does not wait for it
            busy_after_health = worker.running
            ready = http.get(f"{server.url}/readyz")
        with pytest.raises(openai.RateLimitError) as info:
            client.images.edit(model="echo", image=("a.png", SRC, "image/png"), prompt="x")
        for t in threads:
            t.join()
    assert ready.status_code == 503
    assert busy_after_health == 1  # the event loop is free while the engine works
    assert info.value.code == "queue_full"
    assert int(info.value.response.headers["retry-after"]) >= 1
    assert all(not isinstance(r, Exception) for r in results)


def test_queue_deadline_is_504_without_touching_the_engine(
    make_settings: Callable[..., Settings],
) -> None:
    engine = EchoEngine("echo", {"delay_s": 1.5, "steps": 10})
    settings = make_settings(models=echo_models(), queue={"max_queue": 4, "deadline_s": 0.3})
    with LiveServer(settings, engines={"echo": engine}) as server, server.sdk() as client:
        first = threading.Thread(
            target=lambda: client.images.edit(model="echo", image=("a.png", SRC, "image/png"), prompt="x")
        )
        first.start()
        wait_until(lambda: server.services.workers["echo"].running >= 1, timeout=10)
        with pytest.raises(openai.APIStatusError) as info:
            client.images.edit(model="echo", image=("a.png", SRC, "image/png"), prompt="x")
        first.join()
    assert info.value.status_code == 504
    assert engine.runs == 1
