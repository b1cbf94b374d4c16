"""Worker threads that give way to the event loop: ``background_pool``.

The event loop thread answers every request, refusal and probe; the pixel work (decoding
uploads, encoding results) is throughput work that can wait a few milliseconds. When both want
the same CPU, the kernel's scheduler shares it fairly, so a decode thread in the middle of a
2-megapixel PNG could hold the loop off for a whole time slice (several ms) per wake-up; under
overload, with one core for the server, that was most of ``/healthz``'s tail
(``bench/saturation.py``). Threads of these pools run at a lower priority (a higher nice
value, set per thread: Linux schedules threads as tasks), so the loop wins the CPU when it
wakes and the pixel work takes what the loop leaves. Nothing changes when CPUs are free.
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
from concurrent.futures import ThreadPoolExecutor

BACKGROUND_NICE = 5
"""Added to the process's nice value for pool threads (CFS weight about a third of the loop's)."""


def _lower_priority(increment: int) -> None:
    """Initializer of a pool thread: lower this thread's priority only. Linux only, where a
    thread id is a schedulable task id; elsewhere ``setpriority`` would name a process."""
    if not sys.platform.startswith("linux") or increment <= 0:
        return
    tid = threading.get_native_id()
    with contextlib.suppress(OSError):  # a sandbox may forbid it; the pool works all the same
        os.setpriority(os.PRIO_PROCESS, tid, os.getpriority(os.PRIO_PROCESS, tid) + increment)


def background_pool(
    max_workers: int | None, name: str, increment: int = BACKGROUND_NICE
) -> ThreadPoolExecutor:
    """A thread pool whose threads run ``increment`` nice levels below the loop."""
    return ThreadPoolExecutor(
        max_workers, thread_name_prefix=name, initializer=_lower_priority, initargs=(increment,)
    )
