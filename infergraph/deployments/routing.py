"""Least-connections request routing for Ray Serve deployments.

Serve's default router (power of two choices) samples two replicas at random and sends the request
to the one with the shorter queue, as probed from the replicas (or cached from recent probes). It
never looks at the other replicas, so it can pick a replica with a backlog when an idle one exists.

`LeastConnectionsRouter` looks at every replica and ranks them by the exact number of requests this
router (one per DeploymentHandle) has sent to each and not yet seen complete, counted from Serve's
`on_request_routed` / `on_request_completed` hooks rather than probed. Serve then takes the first
replica in that ranking that still accepts (below `max_ongoing_requests`).

`LeastTimeRouter` also weighs each count by the replica's measured time per request, so a replica
that is 3x slower gets about a third of a fast one's share instead of an equal share of requests.

Use either from serve.yaml:

    deployments:
      - name: ...
        request_router_config:
          request_router_class: infergraph.deployments.routing:LeastConnectionsRouter   # or LeastTimeRouter
"""

from __future__ import annotations

import random
import time
from collections import Counter, defaultdict
from collections.abc import Iterable

from ray.serve.request_router import (
    FIFOMixin,
    PendingRequest,
    ReplicaID,
    ReplicaResult,
    RequestRouter,
    RunningReplica,
)


class OutstandingRequests:
    """Per replica, the requests sent and not yet completed, keyed by internal request id.

    A multiset per replica rather than a total: Serve reports completions by (replica, request id),
    including for sends that were never counted (a rejected attempt, whose retry keeps the same id
    but may land elsewhere; broadcasts), and those must not decrement anything.
    """

    def __init__(self) -> None:
        self._by_replica: dict[ReplicaID, Counter[str]] = {}

    def sent(self, replica_id: ReplicaID, request_id: str) -> None:
        self._by_replica.setdefault(replica_id, Counter())[request_id] += 1

    def completed(self, replica_id: ReplicaID, request_id: str) -> None:
        ids = self._by_replica.get(replica_id)
        if not ids or not ids[request_id]:
            return  # never counted here
        ids[request_id] -= 1
        if not ids[request_id]:
            del ids[request_id]

    def count(self, replica_id: ReplicaID) -> int:
        return sum(self._by_replica.get(replica_id, Counter()).values())

    def forget(self, replica_id: ReplicaID) -> None:
        """Drop a replica that left; completions that still arrive for it are then ignored."""
        self._by_replica.pop(replica_id, None)

    def keep_only(self, replica_ids: Iterable[ReplicaID]) -> None:
        keep = set(replica_ids)
        for replica_id in list(self._by_replica):
            if replica_id not in keep:
                del self._by_replica[replica_id]

    def rank(self, replica_ids: Iterable[ReplicaID]) -> list[list[ReplicaID]]:
        """Groups of replicas with equal counts, fewest outstanding first; each group shuffled so ties
        do not always go to the same replica (Serve picks the lowest cached queue length in a group,
        the first one when those are equal)."""
        groups: defaultdict[int, list[ReplicaID]] = defaultdict(list)
        for replica_id in replica_ids:
            groups[self.count(replica_id)].append(replica_id)
        ranked = [groups[n] for n in sorted(groups)]
        for group in ranked:
            random.shuffle(group)
        return ranked


class LeastConnectionsRouter(FIFOMixin, RequestRouter):
    """Route each request to the replica with the fewest requests outstanding from this handle.

    FIFOMixin: a replica found free goes to the oldest waiting request, as in the default router.
    No locality or model-multiplexing preferences. A request counts from the moment its replica
    accepts it, so requests routed in the same instant (a burst) all see the same counts.
    """

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.outstanding = OutstandingRequests()

    async def choose_replicas(
        self,
        candidate_replicas: list[RunningReplica],
        pending_request: PendingRequest | None = None,
    ) -> list[list[RunningReplica]]:
        by_id = {r.replica_id: r for r in candidate_replicas}
        return [[by_id[i] for i in group] for group in self.outstanding.rank(by_id)]

    def on_request_routed(
        self, pending_request: PendingRequest, replica_id: ReplicaID, result: ReplicaResult
    ) -> None:
        self.outstanding.sent(replica_id, pending_request.metadata.internal_request_id)

    def on_request_completed(self, replica_id: ReplicaID, internal_request_id: str) -> None:
        self.outstanding.completed(replica_id, internal_request_id)

    def update_replicas(self, replicas: list[RunningReplica]) -> None:
        super().update_replicas(replicas)
        self.outstanding.keep_only(r.replica_id for r in replicas)

    def on_replica_actor_died(self, replica_id: ReplicaID) -> None:
        super().on_replica_actor_died(replica_id)
        self.outstanding.forget(replica_id)


def rank_by_expected_wait(
    counts: dict[ReplicaID, int], seconds_per_request: dict[ReplicaID, float]
) -> list[ReplicaID]:
    """Replicas by (outstanding + 1) x time per request, shortest expected wait first. A replica
    not yet measured is assumed as fast as the fastest known one, so it gets tried."""
    known = [t for r, t in seconds_per_request.items() if r in counts]
    default = min(known) if known else 1.0
    order = list(counts)
    random.shuffle(order)  # ties go to a random replica
    return sorted(order, key=lambda r: (counts[r] + 1) * seconds_per_request.get(r, default))


class LeastTimeRouter(LeastConnectionsRouter):
    """Least expected wait: outstanding requests weighted by each replica's time per request.

    Time per request is an EWMA of latency / (requests it had outstanding when sent + 1), which is
    the service time for a replica that works through its requests one batch after another.
    """

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.sent_at: dict[tuple[ReplicaID, str], tuple[float, int]] = {}
        self.seconds_per_request: dict[ReplicaID, float] = {}

    async def choose_replicas(
        self,
        candidate_replicas: list[RunningReplica],
        pending_request: PendingRequest | None = None,
    ) -> list[list[RunningReplica]]:
        by_id = {r.replica_id: r for r in candidate_replicas}
        counts = {i: self.outstanding.count(i) for i in by_id}
        return [[by_id[i]] for i in rank_by_expected_wait(counts, self.seconds_per_request)]

    def on_request_routed(
        self, pending_request: PendingRequest, replica_id: ReplicaID, result: ReplicaResult
    ) -> None:
        ahead = self.outstanding.count(replica_id)
        super().on_request_routed(pending_request, replica_id, result)
        key = (replica_id, pending_request.metadata.internal_request_id)
        self.sent_at[key] = (time.monotonic(), ahead)

    def on_request_completed(self, replica_id: ReplicaID, internal_request_id: str) -> None:
        super().on_request_completed(replica_id, internal_request_id)
        sent = self.sent_at.pop((replica_id, internal_request_id), None)
        if sent is None:
            return
        sample = (time.monotonic() - sent[0]) / (sent[1] + 1)
        old = self.seconds_per_request.get(replica_id)
        self.seconds_per_request[replica_id] = sample if old is None else old + 0.2 * (sample - old)

    def update_replicas(self, replicas: list[RunningReplica]) -> None:
        super().update_replicas(replicas)
        live = {r.replica_id for r in replicas}
        self.seconds_per_request = {r: t for r, t in self.seconds_per_request.items() if r in live}
        self.sent_at = {k: v for k, v in self.sent_at.items() if k[0] in live}
