"""LeastConnectionsRouter configured as serve.yaml configures it (a string import path), in a real Serve app.

Checks that Serve builds it for the handle, that its counts follow requests sent and completed, and
that they steer requests: four held requests sent one after another land two per replica.
"""

import asyncio
import os
import tempfile
import time
from collections import Counter

import pytest

pytestmark = pytest.mark.integration

HOLD_S = 5.0  # long enough that all four requests are outstanding together


def wait_until(condition, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            if condition():
                return
        except RuntimeError:  # read while the router's thread was updating its counts
            pass
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.01)


@pytest.fixture(scope="module")
def serve_api():
    os.environ.setdefault("RAY_TMPDIR", tempfile.mkdtemp(prefix="igt-ray-"))
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")  # workers run this venv as is
    import ray
    from ray import serve

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    serve.start(proxy_location="Disabled")
    try:
        yield serve
    finally:
        serve.shutdown()
        ray.shutdown()


def test_least_connections_from_import_path(serve_api):
    class Holder:  # defined here so that it travels to the replicas by value
        """Holds each request for the given seconds and says which replica served it."""

        def __init__(self) -> None:
            self.rank = serve_api.get_replica_context().rank.rank

        async def __call__(self, hold_s: float) -> int:
            await asyncio.sleep(hold_s)
            return self.rank

    deployment = serve_api.deployment(
        num_replicas=2,
        max_ongoing_requests=8,
        ray_actor_options={"num_cpus": 0.1},
        request_router_config={
            "request_router_class": "infergraph.deployments.routing:LeastConnectionsRouter"
        },
    )(Holder)
    handle = serve_api.run(deployment.bind(), name="least-connections", route_prefix=None)
    handle.remote(0).result()  # the handle builds its router on the first call

    router = handle._router._asyncio_router.request_router  # private: the router this handle built
    assert type(router).__name__ == "LeastConnectionsRouter"  # a copy of the class, so no isinstance

    def outstanding() -> int:
        return sum(router.outstanding.count(replica_id) for replica_id in list(router.curr_replicas))

    wait_until(lambda: outstanding() == 0)
    responses = []
    for i in range(4):
        responses.append(handle.remote(HOLD_S))
        wait_until(lambda n=i + 1: outstanding() == n)  # counted before the next one is routed
    assert sorted(Counter(r.result() for r in responses).values()) == [2, 2]
    wait_until(lambda: outstanding() == 0)
