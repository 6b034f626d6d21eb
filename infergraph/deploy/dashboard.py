"""The Grafana dashboard over infergraph's router metrics and Ray Serve's own, as data.

One list of panels is the source of the dashboard JSON (`k8s/base/grafana/infergraph-dashboard.json`,
written by `python -m infergraph.deploy.kuberay`, imported by hand or mounted as a ConfigMap for
Grafana's dashboard sidecar) and of the test that runs every panel's query against a real Prometheus
scraping a running service (tests/integration/test_prometheus.py).

Queries take the dashboard's `$model` and `$tenant` variables and Grafana's `$__rate_interval`;
`concrete()` turns them into plain PromQL (all models, all tenants, a one-minute window).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

RATE = "$__rate_interval"
MTT = 'model=~"$model", tenant=~"$tenant"'  # router series labelled by model, tier and tenant
M = 'model=~"$model"'


@dataclass(frozen=True)
class Panel:
    title: str
    queries: dict[str, str]  # legend -> PromQL
    unit: str = "short"
    description: str = ""
    kind: str = "timeseries"


@dataclass(frozen=True)
class Row:
    title: str
    panels: list[Panel] = field(default_factory=list)


def quantiles(metric: str, by: str, selector: str, qs: tuple[float, ...] = (0.5, 0.99)) -> dict[str, str]:
    """p50/p99 of a histogram per `by` label, as legend -> query."""
    return {
        f"p{round(q * 100)} {{{{{by}}}}}": (
            f"histogram_quantile({q}, sum by ({by}, le) (rate({metric}_bucket{{{selector}}}[{RATE}])))"
        )
        for q in qs
    }


ROWS = [
    Row(
        "Traffic and refusals (router, per tier and tenant)",
        [
            Panel(
                "Requests/s by tier",
                {"{{tier}}": f"sum by (tier) (rate(infergraph_requests_total{{{MTT}}}[{RATE}]))"},
                "reqps",
            ),
            Panel(
                "Requests/s by tenant and outcome",
                {
                    "{{tenant}} {{outcome}}": (
                        f"sum by (tenant, outcome) (rate(infergraph_requests_total{{{MTT}}}[{RATE}]))"
                    )
                },
                "reqps",
            ),
            Panel(
                "Refusals/s by reason",
                {
                    "{{reason}} ({{tier}})": (
                        f"sum by (reason, tier) (rate(infergraph_rejections_total{{{MTT}}}[{RATE}]))"
                    )
                },
                "reqps",
                "429s (rate limits, quotas, full queues) and 503s (deadlines, lost replicas); "
                "model '-' means refused before a model was chosen",
            ),
        ],
    ),
    Row(
        "Latency and queues",
        [
            Panel(
                "Latency by tier (answered requests, in the router)",
                quantiles("infergraph_request_latency_seconds", "tier", MTT),
                "s",
            ),
            Panel(
                "Latency p99 by model",
                quantiles("infergraph_request_latency_seconds", "model", MTT, (0.99,)),
                "s",
            ),
            Panel(
                "Queue wait by tier",
                quantiles("infergraph_queue_wait_seconds", "tier", M),
                "s",
                "Time from admission to dispatch to a replica",
            ),
            Panel(
                "Queue depth by model and tier",
                {"{{model}} {{tier}}": f"sum by (model, tier) (infergraph_queue_depth{{{M}}})"},
                "short",
            ),
            Panel(
                "Units in flight and replicas seen",
                {
                    "in flight {{model}}": f"sum by (model) (infergraph_in_flight_units{{{M}}})",
                    "replicas {{model}}": f"max by (model) (infergraph_model_replicas{{{M}}})",
                },
                "short",
            ),
            Panel(
                "Batch size (units per replica pass)",
                quantiles("infergraph_batch_units", "model", M),
                "short",
                "Sentences or document pairs in the replica batch each request was computed in",
            ),
        ],
    ),
    Row(
        "LLM",
        [
            Panel(
                "Time to first token by tier",
                quantiles("infergraph_llm_time_to_first_token_seconds", "tier", M),
                "s",
            ),
            Panel(
                "Output tokens/s",
                {"{{model}}": f"sum by (model) (rate(infergraph_llm_output_tokens_total{{{M}}}[{RATE}]))"},
                "short",
            ),
            Panel(
                "Inter-token gap p99",
                quantiles("infergraph_llm_inter_token_seconds", "model", M, (0.99,)),
                "s",
            ),
            Panel(
                "Engine: running and waiting sequences, KV blocks used",
                {
                    "{{model}} {{what}}": (
                        "max by (model, what) "
                        f'(infergraph_llm_engine{{{M}, what=~"running|waiting|kv_blocks_used"}})'
                    )
                },
                "short",
            ),
        ],
    ),
    Row(
        "Usage and cost (per tenant)",
        [
            Panel(
                "Cost per 1,000 answered requests",
                {"{{tenant}}": 'max by (tenant) (infergraph_tenant_cost_per_1k_requests{tenant=~"$tenant"})'},
                "currencyUSD",
                "Replica compute time at the configured price of a replica-hour",
            ),
            Panel(
                "Replica compute seconds/s by tenant",
                {
                    "{{tenant}}": (
                        f"sum by (tenant) (rate(infergraph_tenant_compute_seconds_total{{{MTT}}}[{RATE}]))"
                    )
                },
                "short",
            ),
            Panel(
                "Input tokens/s by tenant",
                {
                    "{{tenant}}": (
                        f"sum by (tenant) (rate(infergraph_tenant_input_tokens_total{{{MTT}}}[{RATE}]))"
                    )
                },
                "short",
            ),
        ],
    ),
    Row(
        "Ray Serve",
        [
            Panel(
                "Requests/s per deployment (replicas)",
                {
                    "{{deployment}}": (
                        f"sum by (deployment) (rate(ray_serve_deployment_request_counter_total[{RATE}]))"
                    )
                },
                "reqps",
            ),
            Panel(
                "Replica processing latency p99",
                quantiles("ray_serve_deployment_processing_latency_ms", "deployment", "", (0.99,)),
                "ms",
            ),
            Panel(
                "Healthy replicas per deployment",
                {"{{deployment}}": "sum by (deployment) (ray_serve_deployment_replica_healthy)"},
                "short",
            ),
            Panel(
                "Requests processing at replicas",
                {"{{deployment}}": "sum by (deployment) (ray_serve_replica_processing_queries)"},
                "short",
                "What Serve's autoscaler sees (the router also reports queue depth to it)",
            ),
        ],
    ),
]


def panels() -> list[Panel]:
    return [p for row in ROWS for p in row.panels]


def concrete(query: str, window: str = "1m") -> str:
    """A panel query as plain PromQL: every model and tenant, a fixed rate window."""
    return query.replace(RATE, window).replace("$model", ".*").replace("$tenant", ".*")


def _variable(name: str, label_query: str) -> dict[str, Any]:
    return {
        "name": name,
        "label": name,
        "type": "query",
        "datasource": {"type": "prometheus", "uid": "${datasource}"},
        "query": {"query": label_query, "refId": name},
        "definition": label_query,
        "includeAll": True,
        "multi": True,
        "allValue": ".*",
        "current": {"selected": True, "text": ["All"], "value": ["$__all"]},
        "refresh": 2,
        "sort": 1,
    }


def _panel(panel: Panel, pid: int, x: int, y: int) -> dict[str, Any]:
    return {
        "id": pid,
        "type": panel.kind,
        "title": panel.title,
        "description": panel.description,
        "datasource": {"type": "prometheus", "uid": "${datasource}"},
        "gridPos": {"h": 8, "w": 8, "x": x, "y": y},
        "fieldConfig": {"defaults": {"unit": panel.unit}, "overrides": []},
        "options": {"legend": {"displayMode": "list", "placement": "bottom"}, "tooltip": {"mode": "multi"}},
        "targets": [
            {"refId": chr(ord("A") + i), "expr": expr, "legendFormat": legend}
            for i, (legend, expr) in enumerate(panel.queries.items())
        ],
    }


def dashboard() -> dict[str, Any]:
    """Grafana's dashboard model (schema 39): rows of 8-wide panels, three to a line."""
    out: list[dict[str, Any]] = []
    pid, y = 1, 0
    for row in ROWS:
        out.append(
            {
                "id": pid,
                "type": "row",
                "title": row.title,
                "collapsed": False,
                "gridPos": {"h": 1, "w": 24, "x": 0, "y": y},
            }
        )
        pid, y = pid + 1, y + 1
        for i, panel in enumerate(row.panels):
            out.append(_panel(panel, pid, (i % 3) * 8, y + (i // 3) * 8))
            pid += 1
        y += 8 * ((len(row.panels) + 2) // 3)
    datasource = {
        "name": "datasource",
        "label": "Prometheus",
        "type": "datasource",
        "query": "prometheus",
        "current": {},
    }
    return {
        "uid": "infergraph",
        "title": "infergraph",
        "description": "Per tier and tenant: requests, refusals, latency, queues, batches, LLM tokens, cost; "
        "Ray Serve replicas. Generated by python -m infergraph.deploy.kuberay.",
        "tags": ["infergraph", "ray-serve"],
        "schemaVersion": 39,
        "version": 1,
        "editable": True,
        "refresh": "10s",
        "time": {"from": "now-1h", "to": "now"},
        "templating": {
            "list": [
                datasource,
                _variable("model", "label_values(infergraph_requests_total, model)"),
                _variable("tenant", "label_values(infergraph_requests_total, tenant)"),
            ]
        },
        "panels": out,
    }


def dashboard_json() -> str:
    return json.dumps(dashboard(), indent=2) + "\n"
