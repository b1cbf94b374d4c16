"""A front killed (SIGKILL) mid-request loses only its own in-flight requests; the ledger, in the
PostgreSQL database both fronts share, stays exact.

The ledger rule (``retouch.service.edits``): a request's one row is written by the front that
served it, when the request *ends* (its result is built, or it failed, or its client left), never
at admission. So a front killed while a request is in flight writes no row for it: its client
sees a connection error and is not billed. The one window the rule leaves: a front killed after
the row was committed and before the response bytes went out leaves a row for a request whose
client saw a connection error (the same as a network loss after the answer); it can never leave
two rows, nor a 200 row for a request that did not finish.

Ray does not cancel the calls of a driver that died: the replica runs the dead front's job to
its end (measured here: the 8 s job of the killed front logged ``CALL stream OK 8014.8ms``),
the result goes nowhere, and the slot comes back then, at the latest at the run deadline.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import openai
import psycopg
import pytest

from tests.cluster.conftest import Cluster
from tests.cluster.test_cluster import metric, png
from tests.processes import wait_until

pytestmark = pytest.mark.cluster


def sdk(url: str) -> openai.OpenAI:
    return openai.OpenAI(api_key="sk-none", base_url=f"{url}/v1", max_retries=0, timeout=120)


def ledger(cluster: Cluster, prefix: str) -> list[tuple[str, str, int]]:
    """(end_user, request_id, status) of the rows whose end_user starts with ``prefix``."""
    url = cluster.postgres.url.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            "SELECT end_user, request_id, status FROM usage_records WHERE end_user LIKE %s",
            (prefix + "%",),
        ).fetchall()
    return [(str(u), str(r), int(s)) for u, r, s in rows]


class Load:
    """Threads that each send edits through one front, one after another, until told to stop
    or until their front goes away; every outcome is kept under its ``user`` tag."""

    def __init__(self, url: str, name: str, threads: int, model: str = "echo") -> None:
        self.client = sdk(url)
        self.name, self.model = name, model
        self.stop = threading.Event()
        self.outcomes: dict[str, object] = {}  # tag -> "ok" or the exception
        self.pool = ThreadPoolExecutor(threads)
        self.futures = [self.pool.submit(self._loop, t) for t in range(threads)]

    def _loop(self, thread: int) -> None:
        i = 0
        while not self.stop.is_set():
            tag = f"kill-{self.name}-{thread}-{i}"
            i += 1
            self.outcomes[tag] = "sent"
            try:
                result = self.client.images.edit(
                    model=self.model, image=("a.png", png(), "image/png"), prompt="x", user=tag
                )
                assert result.data[0].b64_json
                self.outcomes[tag] = "ok"
            except Exception as exc:
                self.outcomes[tag] = exc
                if isinstance(exc, openai.APIConnectionError):
                    return  # the front is gone: this thread's in-flight request was the last

    def finish(self, timeout: float = 120) -> dict[str, object]:
        self.stop.set()
        for f in self.futures:
            f.result(timeout=timeout)
        self.pool.shutdown()
        return dict(self.outcomes)


def test_a_killed_front_loses_only_its_in_flight_requests_and_the_ledger_stays_exact(
    cluster: Cluster,
) -> None:
    a, b = cluster.a, cluster.b
    survivor = Load(b.url, "b", threads=2)
    victim = Load(a.url, "a", threads=2)
    slow: dict[str, Any] = {}

    def slow_edit() -> None:  # stays on the slow replica for SLOW_DELAY_S
        try:
            sdk(a.url).images.edit(model="slow", image=("a.png", png(), "image/png"), prompt="x",
                                   user="kill-a-slow")  # fmt: skip
            slow["outcome"] = "ok"
        except Exception as exc:
            slow["outcome"] = exc

    wait_until(lambda: sum(o == "ok" for o in victim.outcomes.values()) >= 1
               and sum(o == "ok" for o in survivor.outcomes.values()) >= 1,
               timeout=60, what="both fronts to have answered", interval=0.05)  # fmt: skip
    slow_thread = threading.Thread(target=slow_edit)
    slow_thread.start()
    try:  # the slow job is surely in flight on its replica; echo jobs of a likely are too
        wait_until(lambda: metric(a.url, "retouch_running_jobs", model="slow") == 1, timeout=60,
                   what="front a's slow job to run on its replica", interval=0.05)  # fmt: skip
    except TimeoutError:
        raise AssertionError(f"slow: {slow}, a: {victim.outcomes}, a's log:\n"
                             f"{a.log.read_text()[-3000:]}") from None  # fmt: skip
    os.kill(a.proc.pid, signal.SIGKILL)
    a.proc.wait(10)
    time.sleep(2.0)  # the survivor keeps working while the cluster notices the dead driver
    slow_thread.join(30)
    lost = victim.finish()
    served = survivor.finish()

    # Every request through the surviving front succeeded.
    assert served
    assert all(o == "ok" for o in served.values()), served
    # The killed front's clients saw connection errors, and only for what was in flight.
    assert isinstance(slow["outcome"], openai.APIConnectionError), slow
    errors = {t: o for t, o in lost.items() if o != "ok"}
    assert all(isinstance(o, openai.APIConnectionError) for o in errors.values()), errors
    assert len(errors) <= 2  # at most one per client thread: the request it had in flight
    for tag in errors:  # and it was each thread's last request
        thread, index = tag.rsplit("-", 2)[-2:]
        assert not any(t.startswith(f"kill-a-{thread}-") and int(t.rsplit("-", 1)[1]) > int(index)
                       for t in lost), (tag, lost)  # fmt: skip

    # The replicas do not keep slots for the dead front's jobs: the slow replica (one slot)
    # takes a new job once the old one ran out, and both echo replicas serve at once.
    client = sdk(b.url)

    def later(i: int) -> str:
        model = "slow" if i == 0 else "echo"
        client.images.edit(model=model, image=("a.png", png(), "image/png"), prompt="x",
                           user=f"kill-b-later-{i}")  # fmt: skip
        return model

    with ThreadPoolExecutor(3) as pool:
        assert sorted(pool.map(later, range(3))) == ["echo", "echo", "slow"]
    ready = b.url + "/readyz"
    import httpx2

    body = httpx2.get(ready).json()
    assert body["status"] == "ready", body
    assert metric(b.url, "retouch_running_jobs", model="slow") == 0

    # The ledger: one row per 200 a client got, no duplicates, no 200 for what was lost.
    def rows_settled() -> bool:
        tags = [u for u, _, _ in ledger(cluster, "kill-b")]
        return len(tags) >= len(served) + 3

    wait_until(rows_settled, timeout=30, what="the survivor's ledger rows", interval=0.2)
    rows = ledger(cluster, "kill-")
    by_tag: dict[str, list[int]] = {}
    for user, _, status in rows:
        by_tag.setdefault(user, []).append(status)
    assert len({r for _, r, _ in rows}) == len(rows)  # request ids unique
    assert all(len(s) == 1 for s in by_tag.values()), by_tag  # one row per request
    ok = {t for t, o in {**served, **lost}.items() if o == "ok"} | {f"kill-b-later-{i}" for i in range(3)}
    assert {t for t in ok if by_tag.get(t) != [200]} == set()
    assert "kill-a-slow" not in by_tag  # killed mid-engine: no row at all
    # Lost in flight: no row, unless the kill fell between the row's commit and the answer.
    assert all(by_tag.get(t, [200]) == [200] for t in errors), (errors, by_tag)
    assert set(by_tag) <= ok | set(errors)

    # A new front process with the same config serves again, and writes its rows.
    restarted = cluster.start_front("a2", a.config)
    cluster.a = restarted  # later tests use front a
    result = sdk(restarted.url).images.edit(model="echo", image=("a.png", png(), "image/png"),
                                            prompt="x", user="kill-a2-0")  # fmt: skip
    assert result.data[0].b64_json
    wait_until(lambda: [s for _, _, s in ledger(cluster, "kill-a2-")] == [200], timeout=30,
               what="the restarted front's ledger row", interval=0.2)  # fmt: skip
