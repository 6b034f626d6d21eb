"""The queue-depth policy (deployments/autoscaling.py) on hand-built AutoscalingContexts."""

import time
from pathlib import Path

import pytest
import yaml
from ray.serve._private.autoscaling_state import _resolve_policy_callable
from ray.serve._private.common import DeploymentID, ReplicaID
from ray.serve.autoscaling_policy import _apply_app_level_autoscaling_config
from ray.serve.config import AutoscalingConfig, AutoscalingContext, AutoscalingPolicy
from ray.serve.schema import ServeDeploySchema

from infergraph.deployments.autoscaling import QueueDepthPolicy, queue_depth_policy

APP = "infergraph"
A, B = "all-MiniLM-L6-v2", "multilingual-e5-small"
ROOT = Path(__file__).resolve().parents[2]


def context(
    name: str,
    *,
    replicas: int = 1,
    ongoing: float = 0.0,
    metrics: dict[str, float] | None = None,
    min_replicas: int = 1,
    max_replicas: int = 4,
    target_ongoing_requests: float = 128,
    upscale_delay_s: float = 0,
) -> AutoscalingContext:
    """What Serve hands the policy for one deployment; `metrics` are its replicas' custom metrics
    (record_autoscaling_stats), split over its replicas as Serve aggregates them per replica."""
    dep = DeploymentID(name=name, app_name=APP)
    running = [ReplicaID(unique_id=f"{name}-{i}", deployment_id=dep) for i in range(replicas)]
    per_replica = {key: {r: value / replicas for r in running} for key, value in (metrics or {}).items()}
    config = AutoscalingConfig(
        min_replicas=min_replicas,
        max_replicas=max_replicas,
        target_ongoing_requests=target_ongoing_requests,
        upscale_delay_s=upscale_delay_s,
        downscale_delay_s=0,
    )
    return AutoscalingContext(
        deployment_id=dep,
        deployment_name=name,
        app_name=APP,
        current_num_replicas=replicas,
        target_num_replicas=replicas,
        running_replicas=running,
        total_num_requests=ongoing,
        total_queued_requests=0.0,
        aggregated_metrics=per_replica,
        raw_metrics={},
        capacity_adjusted_min_replicas=min_replicas,
        capacity_adjusted_max_replicas=max_replicas,
        policy_state={},
        last_scale_up_time=None,
        last_scale_down_time=None,
        current_time=time.time(),
        config=config,
    )


def router(**metrics: float) -> AutoscalingContext:
    """The Router's context: its queue metrics, min = max = 1 (keyword `queued_A` -> `queued:<A>`)."""
    names = {"A": A, "B": B}
    named = {f"{key.rsplit('_', 1)[0]}:{names[key.rsplit('_', 1)[1]]}": v for key, v in metrics.items()}
    return context("Router", max_replicas=1, target_ongoing_requests=2, metrics=named)


def decide(*contexts: AutoscalingContext, policy=queue_depth_policy) -> dict[str, int]:
    decisions, states = policy({c.deployment_id: c for c in contexts})
    assert set(states) == set(decisions)
    return {dep.name: n for dep, n in decisions.items()}


def test_deep_router_queue_asks_for_more_replicas():
    # A at its in-flight cap (128 sentences in 4 calls) with 40 requests held back in the router.
    got = decide(router(queued_A=40, in_flight_A=128), context(A, ongoing=4))
    assert got[A] == 2  # (40 + 128) / 128
    # Counted in sentences when the router reports them: 640 queued is 6 replicas, capped at 4.
    got = decide(router(queued_A=40, queued_units_A=640, in_flight_A=128), context(A, ongoing=4))
    assert got[A] == 4


def test_router_queue_over_several_router_replicas_is_summed():
    two_routers = context(
        "Router", replicas=2, max_replicas=2, metrics={f"queued:{A}": 300, f"in_flight:{A}": 256}
    )
    assert (
        decide(two_routers, context(A, replicas=2, ongoing=8))[A] == 4
    )  # (300 + 256) / 128 -> 5, capped at 4


def test_idle_deployment_asks_for_the_minimum():
    assert decide(router(queued_A=0, in_flight_A=0), context(A, replicas=3))[A] == 1
    assert decide(router(queued_A=0, in_flight_A=0), context(A, replicas=3, min_replicas=2))[A] == 2
    # Before the router's first report there is no metric at all: same answer.
    assert decide(router(), context(A, replicas=2))[A] == 1


def test_router_queue_for_one_model_does_not_scale_another():
    got = decide(
        router(queued_A=500, in_flight_A=128, queued_B=0, in_flight_B=0),
        context(A, ongoing=4),
        context(B, replicas=2, ongoing=0),
    )
    assert got[A] == 4
    assert got[B] == 1


def test_in_flight_work_is_not_counted_twice():
    # The router's 100 sentences in flight are the deployment's 4 ongoing calls: 100, not 104.
    got = decide(router(queued_A=0, in_flight_A=100), context(A, ongoing=4, target_ongoing_requests=100))
    assert got[A] == 1
    # Callers that bypass the router show only in Serve's count, which then decides.
    assert decide(router(), context(A, ongoing=300))[A] == 3


def test_router_itself_keeps_serves_default_rule():
    policy = QueueDepthPolicy(target_units_per_replica=64)
    busy_router = context("Router", ongoing=6, target_ongoing_requests=2, metrics={f"in_flight:{A}": 128})
    got = decide(busy_router, context(A, ongoing=2), policy=policy)
    assert got["Router"] == 3  # 6 ongoing / 2 per replica, as Serve's default policy would
    assert got[A] == 2  # 128 / 64: the policy_kwargs target wins over target_ongoing_requests


def test_serve_loads_the_policy_with_kwargs_and_applies_delays():
    spec = AutoscalingPolicy(
        policy_function="infergraph.deployments.autoscaling:QueueDepthPolicy",
        policy_kwargs={"target_units_per_replica": 64},
    )
    wrapped = _apply_app_level_autoscaling_config(_resolve_policy_callable(spec))
    for delay, expected in ((0, 3), (30, 1)):  # (64 + 128) / 64 now, or nothing until the delay passes
        contexts = [router(queued_A=64, in_flight_A=128), context(A, ongoing=4, upscale_delay_s=delay)]
        decisions, _ = wrapped({c.deployment_id: c for c in contexts})
        assert decisions[DeploymentID(name=A, app_name=APP)] == expected
    with pytest.raises(ValueError):
        QueueDepthPolicy(target_units_per_replica=0)


def test_integration_config_is_a_valid_serve_config():
    config = yaml.safe_load((ROOT / "tests" / "integration" / "serve-autoscaling.yaml").read_text())
    (app,) = ServeDeploySchema.model_validate(config).applications
    assert app.autoscaling_policy == {
        "policy_function": "infergraph.deployments.autoscaling:queue_depth_policy"
    }
    # Serve only gives the policy contexts of deployments with an autoscaling_config: the Router needs one.
    assert all(dep.autoscaling_config for dep in app.deployments)
