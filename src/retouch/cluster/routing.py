"""The request router of every engine deployment: a replica known to be free first, taken the
moment one frees, else Serve's own two random choices.

Serve's default router (power of two choices) draws two random replicas on each try and sends
the job to the less loaded of them if it has a free slot; when both are busy it probes them
(an actor call to each), sleeps (backing off up to ``cluster.router_max_backoff_s``) and draws
again. Engine jobs keep replicas full, so under load a replica that has just finished idles
until some waiting job happens to draw it (with 8 replicas a try finds it with a chance of 2 in
8), and every try costs the front and the replicas two probes.

This router starts from the same candidates (Serve's locality and multiplexing rules) and:

* when the router's cache of queue lengths knows free replicas, offers all of them (Serve
  takes the least loaded from its cache and probes none);
* when none is known free, waits up to ``PROBE_AFTER_S`` for this front's own news of a freed
  slot (a job of its own finished, a reply told a replica's queue length, the replica set
  changed), waking one waiting job per freed slot, oldest first, so the slot is taken as it
  frees;
* only when that wait passes, offers two random candidates, which Serve probes as before:
  a slot freed by another front's job is seen no later than that.

It runs in each front's handle router, on the front's loop (``deploy.front_handle``); Serve
loads it by its import path from the deployment's ``request_router_config``, so fronts and the
deployer need the same retouch.
"""

from __future__ import annotations

import asyncio
import random
from collections import deque

from ray.serve.request_router import (
    FIFOMixin,
    LocalityMixin,
    MultiplexMixin,
    PendingRequest,
    ReplicaID,
    RequestRouter,
    RunningReplica,
)

PROBE_AFTER_S = 0.1
"""How long a job waits for this front's news of a free slot before probing two replicas."""


class FreeReplicaFirstRouter(FIFOMixin, LocalityMixin, MultiplexMixin, RequestRouter):
    _retouch_waiters: deque[asyncio.Future[None]]

    async def choose_replicas(
        self,
        candidate_replicas: list[RunningReplica],
        pending_request: PendingRequest | None = None,
    ) -> list[list[RunningReplica]]:
        # Like Serve's own router, this draws from its locality and multiplexing rules rather
        # than from ``candidate_replicas`` (every replica), and re-reads the live set after a wait.
        loop = asyncio.get_running_loop()
        deadline = loop.time() + PROBE_AFTER_S
        while True:
            candidates = self._candidates(pending_request)
            if not candidates:
                return []
            free = self.select_available_replicas(candidates)
            if free:
                random.shuffle(free)  # ties go to a random one, not always to the first
                return [free]
            remaining = deadline - loop.time()
            if remaining <= 0:
                return [random.sample(candidates, min(2, len(candidates)))]
            waiter: asyncio.Future[None] = loop.create_future()
            self._waiters().append(waiter)
            try:
                await asyncio.wait({waiter}, timeout=remaining)
            finally:
                if not waiter.done():
                    waiter.cancel()
                    self._waiters().remove(waiter)

    def _candidates(self, pending_request: PendingRequest | None) -> list[RunningReplica]:
        """The replicas Serve's default router would draw from (the same rules)."""
        if pending_request is not None and pending_request.metadata.multiplexed_model_id:
            ids: set[ReplicaID] = self.apply_multiplex_routing(pending_request=pending_request)
        else:
            ids = self.apply_locality_routing(pending_request=pending_request)
        replicas = self.curr_replicas
        return [replicas[i] for i in ids if i in replicas]

    def _waiters(self) -> deque[asyncio.Future[None]]:
        # Made on first use: Serve builds the router through its own constructor chain.
        try:
            return self._retouch_waiters
        except AttributeError:
            self._retouch_waiters = deque()
            return self._retouch_waiters

    def _wake(self, count: int | None = 1) -> None:
        waiters = self._waiters()
        while waiters and (count is None or count > 0):
            waiter = waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                count = None if count is None else count - 1

    # Serve's hooks, each called on the router's loop; each keeps Serve's own behaviour.

    def on_request_completed(self, replica_id: ReplicaID, internal_request_id: str) -> None:
        super().on_request_completed(replica_id, internal_request_id)
        # Serve lowers the cached queue length in a callback queued right after this one, so
        # the woken job sees the slot free when it runs.
        self._wake()

    def on_new_queue_len_info(self, replica_id: ReplicaID, num_ongoing_requests: int) -> None:
        super().on_new_queue_len_info(replica_id, num_ongoing_requests)
        replica = self.curr_replicas.get(replica_id)
        if replica is not None and num_ongoing_requests < replica.max_ongoing_requests:
            self._wake(replica.max_ongoing_requests - num_ongoing_requests)

    def update_replicas(self, replicas: list[RunningReplica]) -> None:
        super().update_replicas(replicas)
        self._wake(None)  # new replicas, or fewer: every waiting job looks again

    def on_replica_actor_died(self, replica_id: ReplicaID) -> None:
        super().on_replica_actor_died(replica_id)
        self._wake(None)
