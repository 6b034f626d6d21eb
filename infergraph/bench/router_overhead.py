"""What the router's QoS path (auth, limits, validation, admission queue, metrics) adds per request.

    uv run python -m infergraph.bench.router_overhead [--requests 300]

Starts the service from configs/serve.yaml and sends single-sentence requests one at a time (no
queueing). Each answer carries the router's own timings: `x-infergraph-router-ms` (handler entry to
answer ready), `x-infergraph-body-ms` (reading the request body, which Serve's FastAPI ingress
fetches from the HTTP proxy with one more actor call: any FastAPI ingress on Serve pays it) and
`x-infergraph-model-ms` (the model deployment's handle call, dispatch to result). What the router
adds over an ingress that calls the model's handle directly is handler - body - handle call.
The rest of the client-side latency is Serve's HTTP proxy and the hop into the router replica.
"""

from __future__ import annotations

import argparse
import json
import time

import httpx
import numpy as np
from rich.console import Console
from rich.progress import track
from rich.table import Table

from infergraph.corpus import load_corpus
from infergraph.paths import PROJECT_ROOT
from infergraph.testing import DEV_KEY
from infergraph.testing.service import start_service


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--model", default="all-MiniLM-L6-v2")
    args = parser.parse_args()
    console = Console()
    corpus = load_corpus(500)
    with console.status("starting the service"):
        service = start_service()
    rows: dict[str, list[float]] = {"client": [], "router": [], "body": [], "model": [], "added": []}
    try:
        headers = {"Authorization": f"Bearer {DEV_KEY}"}
        with httpx.Client(base_url=service.base_url, headers=headers, timeout=30) as http:
            for i in track(range(args.requests + 20), description="sequential requests", console=console):
                t0 = time.perf_counter()
                r = http.post("/v1/embeddings", json={"model": args.model, "input": corpus[i % len(corpus)]})
                client_ms = (time.perf_counter() - t0) * 1000
                r.raise_for_status()
                if i < 20:  # warm-up
                    continue
                router_ms = float(r.headers["x-infergraph-router-ms"])
                model_ms = float(r.headers["x-infergraph-model-ms"])
                body_ms = float(r.headers["x-infergraph-body-ms"])
                rows["client"].append(client_ms)
                rows["router"].append(router_ms)
                rows["body"].append(body_ms)
                rows["model"].append(model_ms)
                rows["added"].append(router_ms - body_ms - model_ms)
    finally:
        service.stop()
    table = Table(title=f"{args.requests} sequential single-sentence requests, {args.model}")
    for col in ("what", "p50 ms", "p90 ms", "p99 ms"):
        table.add_column(col, justify="right" if col != "what" else "left")
    labels = {
        "client": "client round trip (proxy + router + model)",
        "router": "inside the router handler",
        "body": "  of which: body fetched from Serve's proxy",
        "model": "  of which: model deployment handle call",
        "added": "router adds (handler - body - handle call)",
    }
    summary = {}
    for key, label in labels.items():
        p50, p90, p99 = np.percentile(rows[key], [50, 90, 99])
        summary[key] = {"p50_ms": round(p50, 2), "p90_ms": round(p90, 2), "p99_ms": round(p99, 2)}
        table.add_row(label, f"{p50:.2f}", f"{p90:.2f}", f"{p99:.2f}")
    console.print(table)
    bar = summary["added"]["p50_ms"]
    console.print(f"router adds {bar:.2f} ms at p50 (bar: <= 2 ms): {'met' if bar <= 2 else 'missed'}")
    out = PROJECT_ROOT / "results" / "router-overhead.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
