"""The engine deployments' request router (``retouch.cluster.routing``) on its own: which
replicas it offers Serve for a job, and when, with stand-in replicas and Serve's own queue-length
cache. The whole path (Serve sending the job, the rejection protocol) runs in tests/cluster."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

import pytest

pytest.importorskip("ray.serve")  # (its import warns about pydantic; importorskip mutes that)
from ray.serve._private.common import DeploymentHandleSource, DeploymentID, ReplicaID

from retouch.cluster import routing
from retouch.cluster.routing import FreeReplicaFirstRouter

DEPLOYMENT = DeploymentID(name="echo", app_name="echo")


@dataclass
class StandInReplica:
    """The attributes of Serve's ``RunningReplica`` that routing reads."""

    name: str
    max_ongoing_requests: int = 1
    node_id: str = "node"
    availability_zone: str | None = None
    multiplexed_model_ids: set[str] = field(default_factory=set)

    @property
    def replica_id(self) -> ReplicaID:
        return ReplicaID(unique_id=self.name, deployment_id=DEPLOYMENT)


def router(*replicas: StandInReplica) -> FreeReplicaFirstRouter:
    built = FreeReplicaFirstRouter(
        deployment_id=DEPLOYMENT, handle_source=DeploymentHandleSource.UNKNOWN,
        use_replica_queue_len_cache=True, self_node_id="node",
    )  # fmt: skip
    built.update_replicas(list(replicas))  # type: ignore[arg-type]
    return built


def names(ranks: list[list[Any]]) -> list[set[str]]:
    return [{r.name for r in rank} for rank in ranks]


def test_offers_every_replica_the_cache_knows_free_and_none_it_knows_busy() -> None:
    a, b, c = StandInReplica("a"), StandInReplica("b"), StandInReplica("c", max_ongoing_requests=2)

    async def scenario() -> list[set[str]]:
        r = router(a, b, c)
        r.on_new_queue_len_info(a.replica_id, 1)  # full
        r.on_new_queue_len_info(b.replica_id, 0)
        r.on_new_queue_len_info(c.replica_id, 1)  # one of two slots taken
        return names(await r.choose_replicas([]))

    assert asyncio.run(scenario()) == [{"b", "c"}]


def test_with_every_replica_busy_it_waits_then_offers_two_to_probe(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(routing, "PROBE_AFTER_S", 0.05)
    replicas = [StandInReplica(n) for n in "abcd"]

    async def scenario() -> tuple[list[set[str]], int]:
        r = router(*replicas)
        for replica in replicas:
            r.on_new_queue_len_info(replica.replica_id, 1)
        return names(await r.choose_replicas([])), len(r._waiters())

    [offered], left_waiting = asyncio.run(scenario())
    assert len(offered) == 2
    assert offered <= set("abcd")
    assert left_waiting == 0  # a waiter that timed out is not left behind


def test_a_waiting_job_takes_the_slot_this_front_frees_without_waiting_out_the_probe_delay(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(routing, "PROBE_AFTER_S", 60.0)  # a wait this long would fail the test
    a, b = StandInReplica("a"), StandInReplica("b")

    async def scenario() -> list[set[str]]:
        r = router(a, b)
        r.on_new_queue_len_info(a.replica_id, 1)
        r.on_new_queue_len_info(b.replica_id, 1)
        choosing = asyncio.ensure_future(r.choose_replicas([]))
        while not r._waiters():
            await asyncio.sleep(0)
        # What Serve does as a job of this front ends on b: the hook, then the cache decrement.
        r.on_request_completed(b.replica_id, "req")
        r.decrement_queue_len_cache(b.replica_id)
        async with asyncio.timeout(10):
            return names(await choosing)

    assert asyncio.run(scenario()) == [{"b"}]


def test_one_freed_slot_wakes_one_waiting_job_oldest_first_and_new_replicas_wake_all(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(routing, "PROBE_AFTER_S", 60.0)
    a = StandInReplica("a")

    async def scenario() -> tuple[list[set[str]], bool, list[list[set[str]]]]:
        r = router(a)
        r.on_new_queue_len_info(a.replica_id, 1)
        first = asyncio.ensure_future(r.choose_replicas([]))
        await asyncio.sleep(0)
        second = asyncio.ensure_future(r.choose_replicas([]))
        third = asyncio.ensure_future(r.choose_replicas([]))
        while len(r._waiters()) < 3:
            await asyncio.sleep(0)
        r.on_request_completed(a.replica_id, "req")
        r.decrement_queue_len_cache(a.replica_id)
        async with asyncio.timeout(10):
            got_first = names(await first)
        for _ in range(5):
            await asyncio.sleep(0)
        others_waiting = not second.done() and not third.done()
        r.on_send_request(a.replica_id)  # the first job went to a: busy again
        r.update_replicas([a, StandInReplica("b")])  # type: ignore[list-item]
        async with asyncio.timeout(10):
            rest = [names(await second), names(await third)]
        return got_first, others_waiting, rest

    got_first, others_waiting, rest = asyncio.run(scenario())
    assert got_first == [{"a"}]
    assert others_waiting
    assert rest == [[{"b"}], [{"b"}]]  # b is new (no queue length known yet: Serve probes it)
