"""Queue-depth autoscaling for the model deployments: an application-level Ray Serve policy.

Why: Serve's default policy sizes a deployment from the requests running at its replicas and queued
at its handles, against `target_ongoing_requests` per replica. In infergraph that is not where work
waits: the Router holds requests in its own per-model queues (deployments/admission.py) and lets
each replica have only `max_in_flight_per_replica` units at once, so however deep the router's
queue grows, Serve sees a deployment that is merely full. The Router reports its queues through
`record_autoscaling_stats()`; an application-level policy gets every deployment's context, so it
reads them off the Router's context while it decides for each model deployment.

Per deployment D, counted in units (what the router meters work in: sentences for encoders,
document pairs for re-rankers):

    backlog(D)  = queued(D) + max(in_flight(D), ongoing(D))
    replicas(D) = ceil(backlog(D) / target(D)), within D's min_replicas..max_replicas

- queued(D): waiting for D in the router's queues, summed over Router replicas: the metric
  `queued_units:D` if the router reports it, else `queued:D` (requests, each counted as one
  unit: a lower bound, still > 0 whenever the router holds work back).
- in_flight(D): units the router has sent to D and not yet had answered (`in_flight:D`).
- ongoing(D): Serve's count of requests running at D or queued at its handles
  (`ctx.total_num_requests`). The router's calls are among them, so the larger of the two views
  is taken, not the sum; ongoing only wins for callers that bypass the router.
- target(D): `target_units_per_replica` from `policy_kwargs` for the deployments the router
  queues for, else D's own `target_ongoing_requests` (so set that in units: 64, one batch).

A deployment the router does not queue for (the Router itself) has queued = in_flight = 0, which
leaves Serve's default rule, ongoing / target_ongoing_requests. Serve then applies, per deployment,
the scaling factors and upscale/downscale delays of its autoscaling_config, and the bounds.

Each metric is Serve's aggregate over the reporting deployment's `look_back_period_s` (mean by
default); `metrics_interval_s` sets how often replicas and handles report it. Serve builds contexts
only for deployments with an `autoscaling_config`, so the Router needs one too (it may keep
min_replicas = max_replicas = 1), or its metrics never reach this policy. The module imports only
the standard library and Ray: Serve pickles it by value into the controller.
"""

from __future__ import annotations

import logging
import math
from collections import defaultdict
from collections.abc import Iterable
from typing import Any

from ray.serve._private.common import DeploymentID
from ray.serve.config import AutoscalingConfig, AutoscalingContext

log = logging.getLogger("ray.serve")

ROUTER_METRICS = ("queued", "queued_units", "in_flight")


def router_queues(contexts: Iterable[AutoscalingContext]) -> dict[str, dict[str, float]]:
    """`{"queued": {model: n}, ...}` from the custom metrics of every deployment, summed over replicas."""
    totals: dict[str, dict[str, float]] = {kind: defaultdict(float) for kind in ROUTER_METRICS}
    for ctx in contexts:
        for key, per_replica in (ctx.aggregated_metrics or {}).items():
            kind, _, model = key.partition(":")
            if model and kind in totals:
                totals[kind][model] += sum(per_replica.values())
    return totals


class QueueDepthPolicy:
    """Application-level policy: `policy_function: infergraph.deployments.autoscaling:QueueDepthPolicy`
    (Serve passes `policy_kwargs` to a class), or the ready instance `queue_depth_policy`."""

    def __init__(self, target_units_per_replica: float | None = None) -> None:
        if target_units_per_replica is not None and not target_units_per_replica > 0:
            raise ValueError("target_units_per_replica must be positive")
        self.target_units_per_replica = target_units_per_replica

    def __call__(
        self, contexts: dict[DeploymentID, AutoscalingContext]
    ) -> tuple[dict[DeploymentID, int], dict[DeploymentID, dict[str, Any]]]:
        router = router_queues(contexts.values())
        decisions: dict[DeploymentID, int] = {}
        states: dict[DeploymentID, dict[str, Any]] = {}
        for dep_id, ctx in contexts.items():
            name = ctx.deployment_name
            fed = any(name in router[kind] for kind in ROUTER_METRICS)
            queued = router["queued_units"].get(name, router["queued"].get(name, 0.0))
            in_flight = router["in_flight"].get(name, 0.0)
            backlog = queued + max(in_flight, ctx.total_num_requests)
            target = self.target_units_per_replica if fed else None
            target = target or (ctx.config or AutoscalingConfig()).get_target_ongoing_requests()
            wanted = math.ceil(backlog / target - 1e-9)
            desired = max(ctx.capacity_adjusted_min_replicas, min(wanted, ctx.capacity_adjusted_max_replicas))
            if desired != ctx.policy_state.get("desired", ctx.target_num_replicas):
                log.info(
                    "queue-depth autoscaling: %s wants %d replicas (has %d): backlog %.0f = queued %.0f"
                    " + max(in flight %.0f, ongoing %.1f), target %.0f per replica",
                    name,
                    desired,
                    ctx.target_num_replicas,
                    backlog,
                    queued,
                    in_flight,
                    ctx.total_num_requests,
                    target,
                )
            decisions[dep_id] = desired
            states[dep_id] = {"desired": desired, "backlog": backlog}
        return decisions, states


queue_depth_policy = QueueDepthPolicy()
