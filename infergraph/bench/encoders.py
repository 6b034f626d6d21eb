"""Encoder benchmark: the runtime in-process vs the same model through HTTP -> router -> deployment.

    uv run python -m infergraph.bench.encoders                 # starts the service from configs/serve.yaml
    uv run python -m infergraph.bench.encoders --url http://127.0.0.1:8000   # against a running service

Prints sentences/s and p50/p95/p99 for single-sentence requests at concurrency 1/8/32 and
32-sentence requests at concurrency 1/4, start-up time, where the CPU went (proxy, router,
replicas), and the two bars of the serving-backbone issue. Writes JSONL and a plot under results/.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from infergraph.bench.loadgen import closed_loop
from infergraph.bench.proctree import CpuByRole
from infergraph.corpus import load_corpus
from infergraph.paths import PROJECT_ROOT
from infergraph.testing.service import DEFAULT_CONFIG, start_service

console = Console()


def serve_settings(config: Path) -> dict[str, Any]:
    app = yaml.safe_load(config.read_text())["applications"][0]
    return dict(app.get("args", {}))


def inprocess(model: str, engine: str, threads: int, corpus: list[str], duration_s: float) -> list[dict]:
    """Call the runtime directly with consecutive corpus chunks, as a server batch would carry them."""
    from infergraph.runtimes.catalog import load_catalog
    from infergraph.runtimes.loader import load_text_encoder

    spec = load_catalog(PROJECT_ROOT / "configs" / "models.yaml").encoder(model)
    encoder = load_text_encoder(spec, engine=engine, threads=threads)  # type: ignore[arg-type]
    encoder.encode(corpus[:64])  # warm-up
    rows = []
    for batch in (1, 32):
        latencies, k, t0 = [], 0, time.perf_counter()
        while time.perf_counter() - t0 < duration_s:
            texts = [corpus[(k * batch + j) % len(corpus)] for j in range(batch)]
            t = time.perf_counter()
            encoder.encode(texts)
            latencies.append(time.perf_counter() - t)
            k += 1
        seconds = time.perf_counter() - t0
        rows.append(
            {
                "where": "in-process",
                "engine": encoder.engine.name,
                "batch": batch,
                "concurrency": 1,
                "sent_per_s": len(latencies) * batch / seconds,
                **{f"p{p}_ms": float(np.percentile(latencies, p) * 1000) for p in (50, 95, 99)},
            }
        )
    del encoder
    gc.collect()
    return rows


def through_service(
    base_url: str,
    model: str,
    corpus: list[str],
    matrix: list[tuple[int, int]],
    args: argparse.Namespace,
    root_pid: int | None,
) -> list[dict]:
    rows = []
    cpu = CpuByRole(root_pid) if root_pid else None
    with Progress(console=console, transient=True) as progress:
        task = progress.add_task("HTTP matrix", total=len(matrix))
        for batch, conc in matrix:
            progress.update(task, description=f"HTTP {batch} sent/req x {conc} clients")
            before = cpu.snapshot() if cpu else {}
            url = f"{base_url}/v1/embeddings"
            res = asyncio.run(closed_loop(url, corpus, model, batch, conc, args.duration, args.warmup))
            roles = CpuByRole.diff(before, cpu.snapshot()) if cpu else {}
            sent = max(len(res.latencies_s) * batch, 1)
            # CPU includes the warm-up window too; per-sentence figures divide by all answered work.
            rows.append(
                {
                    "where": "http",
                    "batch": batch,
                    "concurrency": conc,
                    "sent_per_s": res.sentences_per_s,
                    **{f"p{p}_ms": res.percentile_ms(p) for p in (50, 95, 99)},
                    "errors": res.errors,
                    "last_error": res.last_error,
                    "cpu_ms_per_sentence": {
                        r: 1000 * s / (sent * (args.duration + args.warmup) / args.duration)
                        for r, s in sorted(roles.items())
                    },
                }
            )
            progress.advance(task)
    return rows


def show(rows: list[dict], startup_s: float | None) -> None:
    table = Table(title="all-MiniLM-L6-v2 embeddings: sentences/s and latency (ms)")
    for col in ("where", "sentences/req", "clients", "sent/s", "p50", "p95", "p99", "errors"):
        table.add_column(col, justify="right")
    for r in rows:
        table.add_row(
            r["where"],
            str(r["batch"]),
            str(r["concurrency"]),
            f"{r['sent_per_s']:.1f}",
            f"{r['p50_ms']:.1f}",
            f"{r['p95_ms']:.1f}",
            f"{r['p99_ms']:.1f}",
            str(r.get("errors", "")),
        )
    console.print(table)
    if startup_s is not None:
        console.print(f"start-up to first answered request (both models): [bold]{startup_s:.1f} s[/]")
    cpu = Table(title="CPU ms per sentence by process (HTTP)")
    roles = sorted({k for r in rows for k in r.get("cpu_ms_per_sentence", {})})
    cpu.add_column("shape")
    for role in roles:
        cpu.add_column(role, justify="right")
    for r in rows:
        if "cpu_ms_per_sentence" in r:
            c = r["cpu_ms_per_sentence"]
            cpu.add_row(f"{r['batch']}x{r['concurrency']}", *(f"{c.get(role, 0):.2f}" for role in roles))
    console.print(cpu)


def bars(rows: list[dict]) -> list[str]:
    inproc32 = next((r["sent_per_s"] for r in rows if r["where"] == "in-process" and r["batch"] == 32), None)
    http = {(r["batch"], r["concurrency"]): r["sent_per_s"] for r in rows if r["where"] == "http"}
    lines = []
    if inproc32 and (32, 4) in http:
        ratio = http[(32, 4)] / inproc32
        lines.append(
            f"32-sentence requests x4 via the graph: {ratio:.0%} of in-process batch-32 (bar >= 70%)"
        )
    if inproc32 and (1, 32) in http:
        ratio = http[(1, 32)] / inproc32
        lines.append(f"single-sentence requests x32: {ratio:.0%} of in-process batch-32 (bar >= 50%)")
    return lines


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    http = [r for r in rows if r["where"] == "http"]
    fig, ax = plt.subplots(figsize=(7, 3.6))
    labels = [f"{r['batch']} sent/req\nx{r['concurrency']}" for r in http]
    ax.bar(labels, [r["sent_per_s"] for r in http], color="#4c72b0", label="HTTP -> router -> deployment")
    for r, style in zip((r for r in rows if r["where"] == "in-process"), ("--", ":"), strict=False):
        ax.axhline(r["sent_per_s"], linestyle=style, color="#dd8452", label=f"in-process batch {r['batch']}")
    ax.set_ylabel("sentences / s")
    ax.legend(fontsize=8)
    ax.set_title("all-MiniLM-L6-v2 on this machine")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--url", help="benchmark a running service instead of starting one")
    ap.add_argument("--config", type=Path, default=DEFAULT_CONFIG)
    ap.add_argument("--model", default="all-MiniLM-L6-v2")
    ap.add_argument("--duration", type=float, default=20.0, help="measured seconds per point")
    ap.add_argument("--warmup", type=float, default=5.0, help="discarded seconds before each point")
    ap.add_argument("--matrix", default="1:1 1:8 1:32 32:1 32:4", help="sentences:concurrency points")
    ap.add_argument("--skip-inproc", action="store_true")
    ap.add_argument("--threads", type=int, default=2, help="engine threads in-process")
    ap.add_argument("--out", type=Path, default=PROJECT_ROOT / "results" / "bench-encoders.jsonl")
    a = ap.parse_args()

    corpus = load_corpus()
    settings = serve_settings(a.config)
    matrix = [tuple(int(x) for x in p.split(":")) for p in a.matrix.split()]
    rows: list[dict] = []
    if not a.skip_inproc:
        with console.status("in-process runtime"):
            rows += inprocess(a.model, settings.get("engine", "onnx"), a.threads, corpus, a.duration)
    startup = None
    if a.url:
        rows += through_service(a.url.rstrip("/"), a.model, corpus, matrix, a, None)  # type: ignore[arg-type]
    else:
        with console.status("starting the service (serve run)"):
            service = start_service(a.config)
        startup = service.startup_s
        try:
            rows += through_service(service.base_url, a.model, corpus, matrix, a, service.proc.pid)  # type: ignore[arg-type]
        finally:
            service.stop()
    show(rows, startup)
    for line in bars(rows):
        console.print(line)
    a.out.parent.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S")
    with open(a.out, "a") as f:
        for r in rows:
            f.write(json.dumps({"ts": stamp, "model": a.model, "startup_s": startup, **r}) + "\n")
    png = a.out.with_suffix(".png")
    plot(rows, png)
    console.print(f"results appended to {a.out}; plot {png}")


if __name__ == "__main__":
    main()
