"""Where a request's time goes, stage by stage, at a given concurrency (the encoders issue's
low-concurrency bar: at 8 clients the service leaves a third of the 2 cores idle, so the time is
spent waiting somewhere, not computing).

    uv run python -m infergraph.bench.call_breakdown [--clients 8] [--seconds 30] [--url URL]

Serves the two encoders behind the router (their promoted variants) unless `--url` names a running
service, sends single sentences from `--clients` closed-loop clients, and reads the router's own
histograms before and after the measured window (`/metrics`, admin key). Mean per request:

- client and HAProxy: the client's latency minus the router's (`infergraph_request_latency_seconds`);
- router queue: waiting in the router's admission queue (`infergraph_queue_wait_seconds`);
- the model call, by `infergraph_call_stage_seconds`: to the replica (outbound: the handle, gRPC,
  the replica's event loop), in its batcher (replica_wait), its batch's compute (batch), the rest of
  its handler (replica_other), back to the router (inbound: the answer's way back and the router's
  event loop);
- router other: the rest of the router's handler (parsing, admission, the JSON answer).

Writes results/benchmarks/call_breakdown-<clients>.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
from pathlib import Path

import httpx
import yaml
from prometheus_client.parser import text_string_to_metric_families
from rich.console import Console
from rich.table import Table

from infergraph.bench.loadgen import closed_loop
from infergraph.corpus import load_corpus
from infergraph.paths import PROJECT_ROOT
from infergraph.testing import ADMIN_KEY
from infergraph.testing.service import DEFAULT_CONFIG, serving_only, start_service

MODELS = ["all-MiniLM-L6-v2", "multilingual-e5-small"]
ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}
HISTOGRAMS = {
    "router": "infergraph_request_latency_seconds",
    "queue": "infergraph_queue_wait_seconds",
}
STAGES = ("outbound", "replica_wait", "batch", "replica_other", "inbound")
STAGE_HISTOGRAM = "infergraph_call_stage_seconds"


def totals(base_url: str, model: str) -> dict[str, tuple[float, float]]:
    """(sum, count) of each histogram and call stage for `model`, over every tier and tenant."""
    text = httpx.get(f"{base_url}/metrics", headers=ADMIN, timeout=30).text
    out = {key: (0.0, 0.0) for key in [*HISTOGRAMS, *STAGES]}
    names = {name: key for key, name in HISTOGRAMS.items()} | {STAGE_HISTOGRAM: None}
    for family in text_string_to_metric_families(text):
        if family.name not in names:
            continue
        for sample in family.samples:
            if sample.labels.get("model") != model:
                continue
            key = names[family.name] or sample.labels.get("stage", "")
            total, count = out[key]
            if sample.name == f"{family.name}_sum":
                out[key] = (total + sample.value, count)
            elif sample.name == f"{family.name}_count":
                out[key] = (total, count + sample.value)
    return out


def breakdown(before: dict, after: dict, client_mean_s: float) -> dict[str, float]:
    mean = {}
    for key in after:
        total = after[key][0] - before[key][0]
        count = after[key][1] - before[key][1]
        mean[key] = total / count if count else float("nan")
    call = sum(mean[stage] for stage in STAGES)
    stages = {"client and HAProxy": client_mean_s - mean["router"], "router queue": mean["queue"]}
    stages |= {f"call: {stage}": mean[stage] for stage in STAGES}
    stages["router other"] = mean["router"] - mean["queue"] - call
    return {stage: round(seconds * 1000, 2) for stage, seconds in stages.items()}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--seconds", type=float, default=30.0)
    ap.add_argument("--model", default=MODELS[0])
    ap.add_argument("--url", help="a running service (default: start the two encoders)")
    ap.add_argument("--config", type=Path, default=DEFAULT_CONFIG, help="the serve.yaml to take them from")
    ap.add_argument("--out", type=Path, default=PROJECT_ROOT / "results" / "benchmarks")
    a = ap.parse_args(argv)
    console = Console()
    service = None
    if a.url is None:
        workdir = Path(tempfile.mkdtemp(prefix="ig-breakdown-"))
        (workdir / "serve.yaml").write_text(yaml.safe_dump(serving_only(MODELS, a.config)))
        service = start_service(workdir / "serve.yaml")
    base_url = a.url or service.base_url  # type: ignore[union-attr]
    try:
        corpus, url = load_corpus(), f"{base_url}/v1/embeddings"
        asyncio.run(closed_loop(url, corpus, a.model, 1, a.clients, 5.0, 0.0))  # warm-up
        before = totals(base_url, a.model)
        started = time.time()
        result = asyncio.run(closed_loop(url, corpus, a.model, 1, a.clients, a.seconds, 0.0))
        after = totals(base_url, a.model)
    finally:
        if service is not None:
            service.stop()
    client_mean_s = sum(result.latencies_s) / len(result.latencies_s)
    stages = breakdown(before, after, client_mean_s)
    row = {
        "model": a.model,
        "clients": a.clients,
        "seconds": a.seconds,
        "at": time.strftime("%Y-%m-%d %H:%M", time.localtime(started)),
        "sentences_per_s": round(result.sentences_per_s, 1),
        "client_mean_ms": round(client_mean_s * 1000, 2),
        "p50_ms": round(result.percentile_ms(50), 2),
        "errors": result.errors,
        "stages_ms": stages,
    }
    table = Table(title=f"{a.model}, {a.clients} clients: {row['sentences_per_s']} sentences/s")
    table.add_column("stage")
    table.add_column("mean ms", justify="right")
    for stage, ms in stages.items():
        table.add_row(stage, f"{ms:.2f}")
    table.add_row("client latency", f"{row['client_mean_ms']:.2f}")
    console.print(table)
    a.out.mkdir(parents=True, exist_ok=True)
    path = a.out / f"call_breakdown-{a.clients}.json"
    path.write_text(json.dumps(row, indent=1) + "\n")
    console.print(f"wrote {path}")


if __name__ == "__main__":
    main()
