"""Follow each model deployment's running replicas, so the router's in-flight caps scale with them."""

from __future__ import annotations

import asyncio
import logging

from ray import serve
from ray.serve.schema import ReplicaState

from infergraph.deployments.admission import ModelQueue

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
