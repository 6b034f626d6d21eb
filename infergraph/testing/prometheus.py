"""A real Prometheus (Debian's `prometheus`) scraping a running service with `configs/prometheus.yml`,
and its HTTP query API: what the dashboard test and a curious operator use."""

from __future__ import annotations

import contextlib
import math
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import httpx
import yaml

from infergraph.debian import ensure_command
from infergraph.paths import PROJECT_ROOT
from infergraph.testing.service import free_port

SCRAPE_CONFIG = PROJECT_ROOT / "configs" / "prometheus.yml"
PACKAGES = ("prometheus",)


def local_config(service_url: str, ray_tmpdir: Path, scrape_interval_s: float) -> dict[str, Any]:
    """`configs/prometheus.yml` pointed at this service and this Ray cluster's exporters."""
    config = yaml.safe_load(SCRAPE_CONFIG.read_text())
    interval = f"{scrape_interval_s:g}s"
    config["global"].update(scrape_interval=interval, evaluation_interval=interval)
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    jobs["infergraph-router"]["static_configs"] = [{"targets": [urlparse(service_url).netloc]}]
    jobs["ray"]["file_sd_configs"] = [
        {"files": [str(ray_tmpdir / "ray" / "prom_metrics_service_discovery.json")]}
    ]
    return config


@contextlib.contextmanager
def running_prometheus(config: dict[str, Any], ready_timeout_s: float = 60) -> Iterator[str]:
    """Prometheus on a free loopback port with `config` and a scratch database; yields its base URL."""
    binary = ensure_command("prometheus", PACKAGES)
    if binary is None:
        raise RuntimeError(
            f"the Prometheus test needs Debian's prometheus: apt-get install {' '.join(PACKAGES)}"
        )
    workdir = Path(tempfile.mkdtemp(prefix="ig-prometheus-"))
    (workdir / "prometheus.yml").write_text(yaml.safe_dump(config))
    port = free_port()
    log = workdir / "prometheus.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [
                binary,
                f"--config.file={workdir / 'prometheus.yml'}",
                f"--storage.tsdb.path={workdir / 'data'}",
                f"--web.listen-address=127.0.0.1:{port}",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + ready_timeout_s
        while not _ready(url):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"Prometheus did not start:\n{log.read_text(errors='replace')[-3000:]}")
            time.sleep(0.2)
        yield url
    finally:
        proc.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=10)
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _ready(url: str) -> bool:
    with contextlib.suppress(httpx.HTTPError):
        return httpx.get(f"{url}/-/ready", timeout=2).status_code == 200
    return False


def query(url: str, promql: str) -> list[dict[str, Any]]:
    """An instant query's result vector (raises on a PromQL error)."""
    r = httpx.get(f"{url}/api/v1/query", params={"query": promql}, timeout=10)
    body = r.json()
    if body.get("status") != "success":
        raise ValueError(f"{promql}: {body.get('error', r.text)}")
    result: list[dict[str, Any]] = body["data"]["result"]
    return result


def has_data(result: list[dict[str, Any]]) -> bool:
    """At least one series with a number (a quantile of no traffic is NaN: no data)."""
    return any(math.isfinite(float(series["value"][1])) for series in result)


def targets_up(url: str) -> dict[str, int]:
    """Scrape jobs -> how many of their targets are up."""
    active = httpx.get(f"{url}/api/v1/targets", timeout=10).json()["data"]["activeTargets"]
    up: dict[str, int] = {}
    for target in active:
        job = target["labels"]["job"]
        up[job] = up.get(job, 0) + (target["health"] == "up")
    return up
