"""The decode/encode threads run below the event loop's priority (``retouch.threads``)."""

from __future__ import annotations

import os
import sys
import threading

import pytest

from retouch.threads import background_pool


def _nice_of_this_thread() -> int:
    return os.getpriority(os.PRIO_PROCESS, threading.get_native_id())


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="per-thread nice is Linux's")
def test_pool_threads_run_nicer_than_the_loop_thread_and_the_process_is_unchanged() -> None:
    before = os.getpriority(os.PRIO_PROCESS, 0)
    with background_pool(2, "test-bg", 5) as pool:
        nices = {pool.submit(_nice_of_this_thread).result() for _ in range(4)}
    assert nices == {min(19, before + 5)}
    assert os.getpriority(os.PRIO_PROCESS, 0) == before  # the process (and this thread) keep theirs
    assert _nice_of_this_thread() == before
    with background_pool(1, "test-same", 0) as pool:
        assert pool.submit(_nice_of_this_thread).result() == before
