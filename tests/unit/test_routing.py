"""Least-connections routing: the counting and ranking a deployment relies on, without a cluster.

The router itself is driven through Serve's own RequestRouter machinery with stand-in replicas, so
the tests also cover how Serve consumes the ranking (the first replica that still accepts wins).
"""

import asyncio

from ray.serve._private.common import DeploymentHandleSource, DeploymentID, ReplicaID, RequestMetadata
from ray.serve.request_router import PendingRequest

from infergraph.deployments.routing import LeastConnectionsRouter, OutstandingRequests, rank_by_expected_wait

DEPLOYMENT = DeploymentID(name="d", app_name="a")
A, B, C = (ReplicaID(unique_id=u, deployment_id=DEPLOYMENT) for u in "abc")


class StandInReplica:
    """What the router reads from a replica: its id, its capacity, and its queue length when probed."""

    def __init__(self, replica_id: ReplicaID, queue_len: int = 0, max_ongoing_requests: int = 4):
        self.replica_id = replica_id
        self.queue_len = queue_len
        self.max_ongoing_requests = max_ongoing_requests

    async def get_queue_len(self, *, deadline_s: float) -> int:
        return self.queue_len


def make_router() -> LeastConnectionsRouter:
    return LeastConnectionsRouter(deployment_id=DEPLOYMENT, handle_source=DeploymentHandleSource.UNKNOWN)


def request(request_id: str) -> PendingRequest:
    """A pending request (needs a running loop for its future)."""
    return PendingRequest(
        args=[], kwargs={}, metadata=RequestMetadata(request_id=request_id, internal_request_id=request_id)
    )


def routed(router: LeastConnectionsRouter, request_id: str, replica_id: ReplicaID) -> None:
    """What Serve calls once a replica has accepted a request."""
    router.on_request_routed(request(request_id), replica_id, result=None)  # type: ignore[arg-type]


def test_fewer_outstanding_ranked_first():
    out = OutstandingRequests()
    for i in range(3):
        out.sent(A, f"a{i}")
    out.sent(C, "c0")
    assert out.rank([A, B, C]) == [[B], [C], [A]]
    assert [out.count(r) for r in (A, B, C)] == [3, 0, 1]


def test_ties_share_a_rank():
    out = OutstandingRequests()
    out.sent(C, "c0")
    ranked = out.rank([A, B, C])
    assert sorted(ranked[0], key=lambda r: r.unique_id) == [A, B]
    assert ranked[1] == [C]


def test_completing_requests_frees_a_replica():
    out = OutstandingRequests()
    out.sent(A, "r1")
    out.sent(A, "r2")
    out.sent(B, "r3")
    assert out.rank([A, B])[0] == [B]
    out.completed(A, "r1")
    out.completed(A, "r2")
    assert out.count(A) == 0
    assert out.rank([A, B])[0] == [A]


def test_completion_of_an_uncounted_send_changes_nothing():
    """A rejected attempt on A completes after its retry (same request id) was counted on B."""
    out = OutstandingRequests()
    out.sent(B, "r1")
    out.completed(A, "r1")
    out.completed(C, "never-sent")
    assert (out.count(A), out.count(B)) == (0, 1)
    out.completed(B, "r1")
    out.completed(B, "r1")  # a duplicate completion does not go negative
    assert out.count(B) == 0


def test_same_request_id_twice_on_one_replica_counts_twice():
    """Fan-out calls from inside one request share its internal id."""
    out = OutstandingRequests()
    out.sent(A, "parent")
    out.sent(A, "parent")
    out.completed(A, "parent")
    assert out.count(A) == 1


def test_removed_replica_counts_disappear():
    out = OutstandingRequests()
    out.sent(A, "r1")
    out.sent(B, "r2")
    out.keep_only([B])
    assert out.count(A) == 0
    out.completed(A, "r1")  # a late completion for the departed replica is ignored
    assert out.count(A) == 0
    out.forget(B)
    assert out.count(B) == 0


def test_router_counts_through_serve_hooks_and_drops_departed_replicas():
    async def scenario() -> None:
        router = make_router()
        router.update_replicas([StandInReplica(A), StandInReplica(B)])  # type: ignore[list-item]
        routed(router, "r1", A)
        routed(router, "r2", A)
        routed(router, "r3", B)
        ranked = await router.choose_replicas(list(router.curr_replicas.values()))
        assert [[r.replica_id for r in group] for group in ranked] == [[B], [A]]

        router.on_request_completed(A, "r1")
        router.on_request_completed(A, "r2")
        ranked = await router.choose_replicas(list(router.curr_replicas.values()))
        assert [[r.replica_id for r in group] for group in ranked] == [[A], [B]]

        router.update_replicas([StandInReplica(A)])  # type: ignore[list-item]
        assert router.outstanding.count(B) == 0
        routed(router, "r4", A)
        router.on_replica_actor_died(A)
        assert router.outstanding.count(A) == 0
        assert router.curr_replicas == {}

    asyncio.run(scenario())


def test_serve_picks_the_least_loaded_replica_that_accepts():
    """Through the base class's routing loop: least outstanding wins, unless its queue is full."""

    async def scenario() -> None:
        router = make_router()
        a, b, c = StandInReplica(A), StandInReplica(B), StandInReplica(C)
        router.update_replicas([a, b, c])  # type: ignore[list-item]
        for i in range(2):
            routed(router, f"a{i}", A)
            routed(router, f"b{i}", B)
        routed(router, "c0", C)

        chosen = await asyncio.wait_for(router._choose_replica_for_request(request("x")), 10)
        assert chosen.replica_id == C

        c.queue_len = c.max_ongoing_requests  # C is full (e.g. other handles' requests)
        chosen = await asyncio.wait_for(router._choose_replica_for_request(request("y")), 10)
        assert chosen.replica_id in (A, B)

    asyncio.run(scenario())


def test_expected_wait_weighs_counts_by_replica_speed():
    fast, slow = A, B
    times = {fast: 0.02, slow: 0.06}
    assert rank_by_expected_wait({fast: 0, slow: 0}, times)[0] == fast
    # an idle slow replica (1 x 60 ms) still loses to a fast one with one request out (2 x 20 ms) ...
    assert rank_by_expected_wait({fast: 1, slow: 0}, times)[0] == fast
    # ... but not to one with three out (4 x 20 ms)
    assert rank_by_expected_wait({fast: 3, slow: 0}, times)[0] == slow
    # a replica not measured yet is assumed as fast as the fastest, so it gets tried
    assert rank_by_expected_wait({fast: 1, C: 0}, {fast: 0.02})[0] == C
