"""The Grafana dashboard's model: what Grafana needs to show it as meant (its queries run against a real
Prometheus in tests/integration/test_prometheus.py)."""

from __future__ import annotations

import json
import re

from infergraph.deploy import dashboard, kuberay
from infergraph.paths import PROJECT_ROOT
from infergraph.testing.kube import render

VARIABLES = {"$model", "$tenant", "$__rate_interval"}


def test_panels_have_unique_ids_and_do_not_overlap():
    model = dashboard.dashboard()
    ids = [p["id"] for p in model["panels"]]
    assert len(ids) == len(set(ids))
    cells: set[tuple[int, int]] = set()
    for panel in model["panels"]:
        g = panel["gridPos"]
        mine = {(x, y) for x in range(g["x"], g["x"] + g["w"]) for y in range(g["y"], g["y"] + g["h"])}
        assert not mine & cells, f"{panel['title']} overlaps another panel"
        assert g["x"] + g["w"] <= 24
        cells |= mine


def test_every_query_uses_only_the_dashboards_variables():
    defined = {"$" + v["name"] for v in dashboard.dashboard()["templating"]["list"]} | {"$__rate_interval"}
    for panel in dashboard.panels():
        for expr in panel.queries.values():
            used = set(re.findall(r"\$\w+", expr))
            assert used <= defined, f"{panel.title}: {used - defined} undefined"
            assert "$" not in dashboard.concrete(expr)


def test_the_per_tier_and_per_tenant_views_exist():
    """The issue's list: requests, refusals by reason, latency percentiles, queue depth, batch sizes,
    time to first token, tokens/s, cost, and Ray Serve's own replicas."""
    exprs = " ".join(e for p in dashboard.panels() for e in p.queries.values())
    for metric in (
        "infergraph_requests_total",
        "infergraph_rejections_total",
        "infergraph_request_latency_seconds_bucket",
        "infergraph_queue_depth",
        "infergraph_batch_units_bucket",
        "infergraph_llm_time_to_first_token_seconds_bucket",
        "infergraph_llm_output_tokens_total",
        "infergraph_tenant_cost_per_1k_requests",
        "ray_serve_deployment_replica_healthy",
    ):
        assert metric in exprs
    assert "by (reason" in exprs and "by (tier" in exprs and "by (tenant" in exprs


def test_the_file_to_import_and_the_configmap_carry_the_same_dashboard():
    on_disk = json.loads((PROJECT_ROOT / kuberay.DASHBOARD).read_text())
    assert on_disk == dashboard.dashboard()
    docs = render("k8s/overlays/cpu")
    maps = [
        d
        for d in docs
        if d["kind"] == "ConfigMap" and d["metadata"]["name"] == "infergraph-grafana-dashboard"
    ]
    assert len(maps) == 1
    assert maps[0]["metadata"]["labels"]["grafana_dashboard"] == "1"  # what Grafana's sidecar looks for
    assert json.loads(maps[0]["data"]["infergraph.json"]) == on_disk
