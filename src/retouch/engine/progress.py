"""The ``Progress`` an engine sees while it runs a job, for every backend that runs engines in
a thread (the local workers and the Ray replicas)."""

from __future__ import annotations

import threading
from collections.abc import Callable

from retouch.engine.types import Pixels
from retouch.errors import Cancelled


class JobProgress:
    """A cancel flag and a partial-image outlet. ``sink`` is called on the engine's thread
    with ``(image, output_index)``, at most ``limit`` times and never after a cancel; it must
    hand the image on thread-safely (the local backend posts it to the event loop)."""

    def __init__(self, sink: Callable[[Pixels, int], None] | None, limit: int) -> None:
        self._sink = sink
        self._limit = limit
        self._sent = 0
        self._cancel = threading.Event()

    @property
    def cancelled(self) -> bool:
        return self._cancel.is_set()

    def cancel(self) -> None:
        self._cancel.set()

    def check(self) -> None:
        if self._cancel.is_set():
            raise Cancelled()

    def partial(self, image: Pixels, *, output_index: int = 0) -> None:
        if self._sink is None or self._sent >= self._limit or self._cancel.is_set():
            return
        self._sent += 1
        self._sink(image, output_index)
