"""The router's own metrics (Prometheus) and per-tenant usage and cost.

Labelled by model, tier and tenant. Each router replica keeps its own registry; Prometheus sums
over replicas as it does for any multi-process service. Cost is compute-seconds (each request's
share of its batch's compute time, as the model replica measured it) times the configured price
of a replica-hour.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from infergraph.deployments.admission import ModelQueue, Ticket

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


@dataclass
class TenantUsage:
    requests: int = 0
    answered: int = 0
    rejected: int = 0
    input_tokens: int = 0
    compute_s: float = 0.0


class RouterMetrics:
    def __init__(self, price_per_replica_hour: float) -> None:
        self.price_per_replica_hour = price_per_replica_hour
        self.registry = CollectorRegistry()
        r = self.registry
        mtt, model, tenant_model = ["model", "tier", "tenant"], ["model"], ["tenant", "model"]
        self.requests = Counter("infergraph_requests", "Requests by outcome", [*mtt, "outcome"], registry=r)
        self.rejections = Counter(
            "infergraph_rejections", "Refused requests by reason", [*mtt, "reason"], registry=r
        )
        self.latency = Histogram(
            "infergraph_request_latency_seconds",
            "End-to-end latency in the router of answered requests",
            mtt,
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.queue_wait = Histogram(
            "infergraph_queue_wait_seconds",
            "Time a request waited in the router's queue",
            ["model", "tier"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.call_stages = Histogram(
            "infergraph_call_stage_seconds",
            "Where the model call of an answered request spent its time: to the replica (outbound), "
            "in its batcher (replica_wait), computing its batch (batch), the rest of the replica's "
            "handler (replica_other), back to the router (inbound)",
            ["model", "stage"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.batch_size = Histogram(
            "infergraph_batch_units",
            "Size (sentences, document pairs) of the replica batch each request was computed in",
            model,
            buckets=BATCH_BUCKETS,
            registry=r,
        )
        self.queue_depth = Gauge("infergraph_queue_depth", "Requests waiting", ["model", "tier"], registry=r)
        self.in_flight = Gauge(
            "infergraph_in_flight_units", "Units sent, not yet answered", model, registry=r
        )
        self.replicas = Gauge("infergraph_model_replicas", "Running replicas seen", model, registry=r)
        self.tokens = Counter("infergraph_tenant_input_tokens", "Prompt tokens", tenant_model, registry=r)
        self.compute = Counter(
            "infergraph_tenant_compute_seconds", "Replica compute time", tenant_model, registry=r
        )
        self.cost_per_1k = Gauge(
            "infergraph_tenant_cost_per_1k_requests",
            "Compute cost of 1,000 answered requests at the configured replica-hour price",
            ["tenant"],
            registry=r,
        )
        self.ttft = Histogram(
            "infergraph_llm_time_to_first_token_seconds",
            "From arrival at the router to the first generated text",
            ["model", "tier"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.inter_token = Histogram(
            "infergraph_llm_inter_token_seconds",
            "Gap between streamed events of one response",
            model,
            buckets=(0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2),
            registry=r,
        )
        self.output_tokens = Counter("infergraph_llm_output_tokens", "Generated tokens", model, registry=r)
        self.engine = Gauge(
            "infergraph_llm_engine",
            "LLM engine state (running, waiting, kv_blocks_used...)",
            ["model", "what"],
            registry=r,
        )
        self.usage: dict[str, TenantUsage] = defaultdict(TenantUsage)

    def rejected(self, model: str, tier: str, tenant: str, reason: str) -> None:
        self.rejections.labels(model, tier, tenant, reason).inc()
        self.requests.labels(model, tier, tenant, "rejected").inc()
        self.usage[tenant].requests += 1
        self.usage[tenant].rejected += 1

    def call_timing(self, model: str, stages: dict[str, float]) -> None:
        """Where a model call's time went (kinds whose replicas report it)."""
        for stage, seconds in stages.items():
            self.call_stages.labels(model, stage).observe(max(seconds, 0.0))

    def answered(
        self, model: str, tier: str, tenant: str, latency_s: float, tokens: int, compute_s: float, batch: int
    ) -> None:
        self.requests.labels(model, tier, tenant, "ok").inc()
        self.latency.labels(model, tier, tenant).observe(latency_s)
        self.tokens.labels(tenant, model).inc(tokens)
        self.compute.labels(tenant, model).inc(compute_s)
        if batch:
            self.batch_size.labels(model).observe(batch)
        usage = self.usage[tenant]
        usage.requests += 1
        usage.answered += 1
        usage.input_tokens += tokens
        usage.compute_s += compute_s

    def client_error(self, model: str, tier: str, tenant: str) -> None:
        self.requests.labels(model, tier, tenant, "client_error").inc()
        self.usage[tenant].requests += 1

    def watch_queue(self, model: str, queue: ModelQueue) -> None:
        """Time each dispatched request waited, and count the ones whose client went away."""

        def dispatched(t: Ticket) -> None:
            self.queue_wait.labels(model, t.tier.value).observe(t.queued_s)

        def cancelled(t: Ticket) -> None:
            self.rejections.labels(model, t.tier.value, t.tenant, "cancelled").inc()

        queue.on_dispatch, queue.on_cancelled = dispatched, cancelled

    def observe_queue(self, model: str, stats: dict[str, Any]) -> None:
        """Bring the queue gauges of one model up to date (from `ModelQueue.stats()`)."""
        for tier, depth in stats["queued"].items():
            self.queue_depth.labels(model, tier).set(depth)
        self.in_flight.labels(model).set(stats["in_flight_units"])
        self.replicas.labels(model).set(stats["replicas"])

    def observe_generation(
        self, model: str, tier: str, first_s: float, gaps: list[float], output_tokens: int
    ) -> None:
        self.ttft.labels(model, tier).observe(first_s)
        for gap in gaps:
            self.inter_token.labels(model).observe(gap)
        self.output_tokens.labels(model).inc(output_tokens)

    ENGINE_STATS = (
        "running",
        "waiting",
        "kv_blocks_used",
        "kv_blocks_total",
        "preemptions",
        "tokens_generated",
        "prefix_hit_tokens",
        "kv_blocks_cached",
    )

    def observe_engine(self, model: str, stats: dict[str, Any]) -> None:
        """An LLM engine's state (running and waiting sequences, KV blocks...) from its card."""
        for what in self.ENGINE_STATS:
            if what in stats:
                self.engine.labels(model, what).set(float(stats[what]))

    def cost(self, compute_s: float) -> float:
        return compute_s / 3600 * self.price_per_replica_hour

    def usage_report(self) -> dict[str, Any]:
        report = {}
        for tenant, u in sorted(self.usage.items()):
            cost = self.cost(u.compute_s)
            report[tenant] = {
                **u.__dict__,
                "cost": round(cost, 8),
                "cost_per_1k_requests": round(1000 * cost / u.answered, 8) if u.answered else None,
            }
        return report

    def exposition(self) -> bytes:
        """Prometheus text format, with the per-tenant cost gauges brought up to date."""
        for tenant, u in self.usage.items():
            if u.answered:
                self.cost_per_1k.labels(tenant).set(1000 * self.cost(u.compute_s) / u.answered)
        return generate_latest(self.registry)
