"""Prometheus metrics of one front (``GET /metrics``), with the official ``prometheus_client``.

Each app owns a ``Metrics`` with its own registry, so several apps in one process (tests, the
benchmark) never mix counts. Every hook is a counter/histogram update or a read at scrape time,
and every hook swallows its own errors: instrumentation can never fail a request.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from typing import Any, Protocol

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

log = logging.getLogger(__name__)

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
# Engine jobs run from tens of milliseconds (classic) to minutes (large diffusion models).
_JOB_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
_ENCODE_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5)


class QueueView(Protocol):
    """What a scheduler backend reports about one model at scrape time."""

    @property
    def running(self) -> int: ...

    @property
    def waiting(self) -> int: ...


class _Queues(Collector):
    def __init__(self, source: Callable[[], Iterable[tuple[str, QueueView]]]) -> None:
        self._source = source

    def collect(self) -> Iterable[Metric]:
        depth = GaugeMetricFamily(
            "retouch_queue_depth", "Admitted requests waiting for an engine slot.", labels=["model"]
        )
        running = GaugeMetricFamily(
            "retouch_running_jobs", "Jobs running on the engine now.", labels=["model"]
        )
        try:
            for name, view in self._source():
                depth.add_metric([name], view.waiting)
                running.add_metric([name], view.running)
        except Exception:  # a scrape must not fail because one backend could not answer
            log.exception("could not read queue state for /metrics")
        return [depth, running]


def _safe(method: Callable[..., None]) -> Callable[..., None]:
    def hook(*args: Any, **kwargs: Any) -> None:
        try:
            method(*args, **kwargs)
        except Exception:
            log.exception("metrics hook %s failed", method.__name__)

    hook.__name__ = method.__name__
    return hook


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self._requests = Counter(
            "retouch_http_requests", "HTTP requests by route, model and status.",
            ["route", "model", "status"], registry=r,
        )  # fmt: skip
        self._duration = Histogram(
            "retouch_http_request_duration_seconds", "Time to the end of the response, by route.",
            ["route"], buckets=_JOB_BUCKETS, registry=r,
        )  # fmt: skip
        self._queue_wait = Histogram(
            "retouch_queue_wait_seconds", "Time from admission to an engine slot.",
            ["model"], buckets=_JOB_BUCKETS, registry=r,
        )  # fmt: skip
        self._engine = Histogram(
            "retouch_engine_seconds", "Time the engine ran one job.",
            ["model"], buckets=_JOB_BUCKETS, registry=r,
        )  # fmt: skip
        self._encode = Histogram(
            "retouch_encode_seconds", "Time to encode one output or partial image.",
            ["model", "format"], buckets=_ENCODE_BUCKETS, registry=r,
        )  # fmt: skip
        self._partials = Counter(
            "retouch_partial_images", "Partial images sent to streaming clients.", ["model"],
            registry=r,
        )  # fmt: skip
        self._results = Counter(
            "retouch_edit_results", "Admitted edits by final status (as in the usage ledger; "
            "streams count their in-stream error status).", ["model", "status"], registry=r,
        )  # fmt: skip
        self._rejected = Counter(
            "retouch_rejected_requests", "Edit responses refused for load: 429 (queue full) "
            "and 504 (queue or run deadline passed).", ["model", "status"], registry=r,
        )  # fmt: skip
        self._ledger_failures = Counter(
            "retouch_ledger_write_failures", "Usage rows that could not be written.", registry=r
        )

    def watch_queues(self, source: Callable[[], Iterable[tuple[str, QueueView]]]) -> None:
        self.registry.register(_Queues(source))

    def render(self) -> bytes:
        return generate_latest(self.registry)

    @_safe
    def request(self, route: str, model: str, status: int, seconds: float) -> None:
        self._requests.labels(route, model, str(status)).inc()
        self._duration.labels(route).observe(seconds)
        if status in (429, 504) and route == "/v1/images/edits":
            self._rejected.labels(model, str(status)).inc()

    @_safe
    def queue_waited(self, model: str, seconds: float) -> None:
        self._queue_wait.labels(model).observe(seconds)

    @_safe
    def engine_ran(self, model: str, seconds: float) -> None:
        self._engine.labels(model).observe(seconds)

    @_safe
    def encoded(self, model: str, fmt: str, seconds: float) -> None:
        self._encode.labels(model, fmt).observe(seconds)

    @_safe
    def partial_sent(self, model: str) -> None:
        self._partials.labels(model).inc()

    @_safe
    def result(self, model: str, status: int) -> None:
        self._results.labels(model, str(status)).inc()

    @_safe
    def ledger_failure(self) -> None:
        self._ledger_failures.inc()
