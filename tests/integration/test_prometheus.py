"""A real Prometheus (Debian's `prometheus`) scrapes the running service with `configs/prometheus.yml`:
both jobs are up, and every panel of the Grafana dashboard returns data through Prometheus' HTTP API
while every kind serves traffic."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from infergraph.deploy import dashboard
from infergraph.paths import PROJECT_ROOT
from infergraph.testing.prometheus import has_data, local_config, query, running_prometheus, targets_up
from infergraph.testing.service import RunningService

CLIP = (PROJECT_ROOT / "loadtest" / "audio" / "lights.flac").read_bytes()
KEYS = {tier: f"Bearer sk-ig-demo-{tier}" for tier in ("premium", "standard", "batch")}


def one_round(client: httpx.Client) -> None:
    """One request of every kind from each tier that may send it, and one refusal (a deadline no
    request can meet)."""
    for tier, key in KEYS.items():
        auth = {"Authorization": key}
        client.post(
            "/v1/embeddings", json={"model": "all-MiniLM-L6-v2", "input": ["a metric"] * 4}, headers=auth
        )
        client.post(
            "/v1/audio/transcriptions",
            files={"file": ("lights.flac", CLIP, "audio/flac")},
            data={"model": "whisper-tiny.en"},
            headers=auth,
        )
        if tier == "batch":  # its tenant may use only the small encoder and whisper-tiny.en
            continue
        client.post(
            "/v1/rerank",
            json={
                "model": "rerank-hybrid-en",
                "query": "metrics",
                "documents": ["prometheus metrics", "a cat"],
            },
            headers=auth,
        )
        chat = {
            "model": "smollm2-135m-instruct",
            "messages": [{"role": "user", "content": "Say hello."}],
            "max_tokens": 8,
            "stream": True,
        }
        with client.stream("POST", "/v1/chat/completions", json=chat, headers=auth) as events:
            for _ in events.iter_lines():
                pass
    late = {"Authorization": KEYS["standard"], "X-Deadline-Ms": "1"}
    client.post(
        "/v1/embeddings", json={"model": "all-MiniLM-L6-v2", "input": ["late " * 50] * 64}, headers=late
    )


@pytest.fixture(scope="module")
def traffic(service: str) -> Iterator[None]:
    """Every kind, every tier, a refusal: a round about every second until the module ends."""
    stop = threading.Event()

    def run() -> None:
        with httpx.Client(base_url=service, timeout=30) as client:
            while not stop.is_set():
                one_round(client)
                stop.wait(1.0)

    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    yield
    stop.set()
    worker.join(timeout=60)


@pytest.fixture(scope="module")
def prometheus(running_service: RunningService) -> Iterator[str]:
    ray_tmpdir = Path(os.environ["RAY_TMPDIR"])  # set by conftest before the service started
    with running_prometheus(local_config(running_service.base_url, ray_tmpdir, scrape_interval_s=1)) as url:
        yield url


def test_the_scrape_config_reaches_the_router_and_ray(prometheus: str, traffic: None):
    deadline = time.monotonic() + 60
    while (up := targets_up(prometheus)).get("infergraph-router", 0) < 1 or up.get("ray", 0) < 1:
        assert time.monotonic() < deadline, f"targets up after 60 s: {up}"
        time.sleep(1)


def test_every_dashboard_panel_returns_data(prometheus: str, traffic: None):
    """Ray exports its own metrics every ~10 s, so allow a few export rounds."""
    pending = {
        f"{panel.title} / {legend}": dashboard.concrete(expr)
        for panel in dashboard.panels()
        for legend, expr in panel.queries.items()
    }
    deadline = time.monotonic() + 120
    while pending and time.monotonic() < deadline:
        pending = {name: q for name, q in pending.items() if not has_data(query(prometheus, q))}
        time.sleep(2)
    assert not pending, f"panel queries without data after 120 s: {sorted(pending)}"


def test_refusals_are_labelled_by_reason(prometheus: str, traffic: None):
    """The deadline no request can meet shows up as its reason, under its tier. (Other tiers may show
    up too: on a loaded 2-core box a premium transcription or chat can miss its own deadline, and is
    refused with this reason as it should be.)"""
    q = 'sum by (reason, tier) (infergraph_rejections_total{reason="deadline_exceeded"})'
    deadline = time.monotonic() + 30
    while not (result := query(prometheus, q)) and time.monotonic() < deadline:
        time.sleep(1)
    tiers = {r["metric"]["tier"] for r in result}
    assert "standard" in tiers and tiers <= {"premium", "standard", "batch"}, result
    assert all(r["metric"]["reason"] == "deadline_exceeded" for r in result)
