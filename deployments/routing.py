"""Least-connections request routing for Ray Serve deployments.

Serve's default router (power of two choices) samples two replicas at random and sends the request
to the one with the shorter queue, as probed from the replicas (or cached from recent probes). It
never looks at the other replicas, so it can pick a replica with a backlog when an idle one exists.

`LeastConnectionsRouter` looks at every replica and ranks them by the exact number of requests this
router (one per DeploymentHandle) has sent to each and not yet seen complete, counted from Serve's
`on_request_routed` / `on_request_completed` hooks rather than probed. Serve then takes the first
replica in that ranking that still accepts (below `max_ongoing_requests`).

Use it from serve.yaml:

    deployments:
      - name: ...
        request_router_config:
          request_router_class: deployments.routing:LeastConnectionsRouter
"""

from __future__ import annotations

import random
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
