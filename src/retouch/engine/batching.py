"""Cross-request batching inside an engine: concurrent jobs that can share one pipeline call.

The scheduler gives a batching model ``workers >= batch_max_size`` slots, so up to that many
``Engine.run`` calls arrive on their own threads at once. ``Coalescer.submit`` groups them by a
*batch key* (the family decides what must be equal for one denoising run: path, generation
size, steps, strength, guidance, ``n``):

* the first job of a key opens a group and becomes its *leader*; it waits up to the window
  (``batch_window_ms``) for more jobs, or until the group is full (``batch_max_size``);
* the group then runs as one pipeline call (``run_group``) on the coalescer's own thread,
  which hands every member its own result or error;
* every member, the leader included, waits for its result on its own worker thread; if its
  request is cancelled meanwhile it returns at once (``Cancelled``), freeing its slot, and the
  group carries on without it — its row of the batch is computed and dropped, nothing else
  changes. Only when every member is cancelled does the group's step hook stop the pipeline.
  (Running the call on the leader's thread instead would keep a cancelled leader's slot, and
  the scheduler's "ignored cancellation" alarm, busy until the whole batch ended.)

Nothing here imports torch: it is plain threads, testable on its own.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Hashable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from retouch.engine.types import EditJob, EditOutput, Progress
from retouch.errors import Cancelled

log = logging.getLogger(__name__)

POLL_S = 0.02
"""How often a waiting member looks at its own cancel flag."""


@dataclass
class Member:
    job: EditJob
    progress: Progress
    done: threading.Event = field(default_factory=threading.Event)
    output: EditOutput | None = None
    error: BaseException | None = None

    def finish(self, output: EditOutput | None = None, error: BaseException | None = None) -> None:
        self.output, self.error = output, error
        self.done.set()


@dataclass
class Group:
    key: Hashable
    members: list[Member] = field(default_factory=list)
    full: threading.Event = field(default_factory=threading.Event)


class Coalescer:
    """Groups concurrent ``submit`` calls with equal keys into one ``run_group`` call."""

    def __init__(self, max_size: int, window_s: float, run_group: Callable[[list[Member]], None]) -> None:
        self.max_size = max_size
        self.window_s = window_s
        self.run_group = run_group
        self._lock = threading.Lock()
        self._open: dict[Hashable, Group] = {}
        self._runner = ThreadPoolExecutor(1, thread_name_prefix="batch")
        self.sizes: list[int] = []
        """Size of every group run so far (tests and the benchmark)."""

    def submit(self, key: Hashable, job: EditJob, progress: Progress) -> EditOutput:
        member = Member(job, progress)
        with self._lock:
            group = self._open.get(key)
            leader = group is None
            if group is None:
                group = self._open[key] = Group(key)
            group.members.append(member)
            if len(group.members) >= self.max_size:
                del self._open[key]  # full: the next job of this key opens a new group
                group.full.set()
        if leader:
            self._lead(group)
        self._wait(member)
        if member.error is not None:
            raise member.error
        assert member.output is not None
        return member.output

    def _lead(self, group: Group) -> None:
        deadline = time.monotonic() + self.window_s
        while not group.full.is_set() and not group.members[0].progress.cancelled:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            group.full.wait(min(remaining, POLL_S))
        with self._lock:
            if self._open.get(group.key) is group:
                del self._open[group.key]
        members = list(group.members)  # closed: no one joins from here on
        self.sizes.append(len(members))
        self._runner.submit(self._run, members)

    def _run(self, members: list[Member]) -> None:
        try:
            self.run_group(members)
        except BaseException as exc:  # the group's failure is every member's failure
            if not isinstance(exc, Cancelled):
                log.exception("a batch of %d jobs failed", len(members))
            for m in members:
                if not m.done.is_set():
                    m.finish(error=exc)
            return
        for m in members:
            if not m.done.is_set():
                m.finish(error=RuntimeError("the batch returned no result for this job"))

    def close(self) -> None:
        self._runner.shutdown(wait=False, cancel_futures=True)

    @staticmethod
    def _wait(member: Member) -> None:
        while not member.done.wait(POLL_S):
            if member.progress.cancelled:
                raise Cancelled()  # leave the group; it carries on for the others


class GroupProgress:
    """The ``Progress`` of a whole group's pipeline call: cancelled only once every member is
    (one request leaving must not stop the others' denoising)."""

    def __init__(self, members: list[Member]) -> None:
        self.members = members

    @property
    def cancelled(self) -> bool:
        return all(m.progress.cancelled for m in self.members)

    def check(self) -> None:
        if self.cancelled:
            raise Cancelled()

    def partial(self, image: object, *, output_index: int = 0) -> None:
        return None  # partials go to each member's own progress (DenoiseTap ``outputs``)
