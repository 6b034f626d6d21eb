"""The router's view of model replicas: follow how many run (the in-flight caps scale with them), and
turn a replica lost mid-call into a retry or an honest 503."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

from ray import serve
from ray.exceptions import ActorUnavailableError, RayActorError
from ray.serve.exceptions import DeploymentUnavailableError, ReplicaUnavailableError
from ray.serve.schema import ReplicaState

from infergraph.deployments.admission import ModelQueue
from infergraph.deployments.tenants import Rejection

T = TypeVar("T")

log = logging.getLogger("ray.serve")


async def follow_replica_counts(queues: dict[str, ModelQueue], interval_s: float) -> None:
    """Read Serve's status every `interval_s` and tell each queue its deployment's running replicas."""
    while True:
        try:
            status = await asyncio.to_thread(serve.status)
            for app_status in status.applications.values():
                for name, dep in app_status.deployments.items():
                    if name in queues:
                        queues[name].set_replicas(dep.replica_states.get(ReplicaState.RUNNING, 0))
        except Exception as exc:  # status is best effort; the last count stays
            log.warning("could not read replica counts: %s", exc)
        await asyncio.sleep(interval_s)


# A replica that died or became unreachable while it held the call (process killed, node lost).
REPLICA_LOST: tuple[type[Exception], ...] = (
    RayActorError,
    ActorUnavailableError,
    ReplicaUnavailableError,
    DeploymentUnavailableError,
)


def replica_lost(exc: Exception) -> Rejection:
    message = f"the model replica serving this request went away ({type(exc).__name__}); retry"
    return Rejection(503, "replica_unavailable", message, 1)


async def call_with_failover(
    call: Callable[[], Awaitable[T]], deadline: float, clock: Callable[[], float] = time.time
) -> T:
    """`call()`, tried once more when its replica is lost and the deadline is still ahead (Serve routes
    the retry to a live replica); otherwise a 503 `replica_unavailable` with Retry-After, never a 500.
    The work is idempotent: a lost replica's answer is never seen."""
    try:
        return await call()
    except REPLICA_LOST as exc:
        if clock() >= deadline:
            raise replica_lost(exc) from None
        log.warning("replica lost (%s): retrying on another replica", type(exc).__name__)
    try:
        return await call()
    except REPLICA_LOST as exc:
        raise replica_lost(exc) from None
