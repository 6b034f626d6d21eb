"""Cross-encoder re-ranking side by side with Infinity, in one run on this machine: the same
cross-encoder folder, ONNX INT8 against ONNX INT8, 20-document requests at 1 and 4 clients.

    uv run python -m infergraph.bench.rerank_peers            # needs Infinity: bash bench/peers/setup.sh

No cross-encoder weights ship offline, so the model is the all-MiniLM-L6-v2 backbone with an
UNTRAINED single-logit head (runtimes/cross_encoder.py: build_untrained_cross_encoder): real
architecture and cost, meaningless scores. infergraph quantizes it (ONNX Runtime dynamic INT8,
per channel); Infinity (`--engine optimum`) is given that same INT8 file as model_quantized.onnx.
The servers run one after the other, each alone on the machine. Writes results/rerank/peers.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import httpx
import orjson
import yaml
from rich.console import Console
from rich.table import Table

from infergraph.bench.loadgen import closed_loop
from infergraph.bench.rerank import DOCUMENTS, requests
from infergraph.paths import PROJECT_ROOT
from infergraph.runtimes.catalog import CrossEncoderScorer, PathSource, cache_root
from infergraph.runtimes.cross_encoder import build_untrained_cross_encoder, load_cross_encoder
from infergraph.testing.service import DEFAULT_CONFIG, free_port, start_service

MODEL = "cross-encoder-untrained"
PEERS = Path(os.environ.get("PEERS", "/tmp/peers"))


def prepare() -> tuple[Path, Path]:
    """The cross-encoder folder (ours) and a copy with our INT8 file as model_quantized.onnx (Infinity's)."""
    model_dir = build_untrained_cross_encoder(cache_root() / "bench" / MODEL)
    scorer = CrossEncoderScorer(type="cross-encoder", source=PathSource(type="path", path=str(model_dir)))
    load_cross_encoder(scorer.model_copy(update={"precision": "int8"}), 512, 256)  # exports + quantizes
    int8 = max((cache_root() / "onnx").glob(f"cross-encoder-{model_dir.name}-*/model_int8.onnx"),
               key=lambda p: p.stat().st_mtime)  # fmt: skip
    infinity_dir = cache_root() / "bench" / f"{MODEL}-infinity"
    if infinity_dir.exists():
        shutil.rmtree(infinity_dir)
    shutil.copytree(model_dir, infinity_dir)
    shutil.copyfile(int8, infinity_dir / "model_quantized.onnx")
    return model_dir, infinity_dir


def serve_config(model_dir: Path, workdir: Path) -> Path:
    """configs/serve.yaml serving only the cross-encoder (INT8, ONNX), from a one-entry catalog."""
    catalog = {"models": [{
        "name": MODEL, "kind": "reranker", "max_length": 512,
        "scorer": {"type": "cross-encoder", "source": {"type": "path", "path": str(model_dir)},
                   "precision": "int8"},
    }]}  # fmt: skip
    (workdir / "models.yaml").write_text(yaml.safe_dump(catalog))
    cfg = yaml.safe_load(DEFAULT_CONFIG.read_text())
    app = cfg["applications"][0]
    app["args"]["catalog"] = str(workdir / "models.yaml")
    app["args"]["models"] = [MODEL]
    router = next(d for d in app["deployments"] if d["name"] == "Router")
    app["deployments"] = [router, {
        "name": MODEL, "num_replicas": 1, "max_ongoing_requests": 256,
        "ray_actor_options": {"num_cpus": 0.8},
    }]  # fmt: skip
    path = workdir / "serve.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def start_infinity(infinity_dir: Path, port: int, log: Path) -> subprocess.Popen:
    binary = PEERS / "venv_inf" / "bin" / "infinity_emb"
    if not binary.exists():
        raise SystemExit(f"{binary} is missing: run `bash bench/peers/setup.sh` first")
    env = {**os.environ, "DO_NOT_TRACK": "1", "INFINITY_ANONYMOUS_USAGE_STATS": "0",
           "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}  # fmt: skip
    cmd = [str(binary), "v2", "--model-id", ".", "--served-model-name", MODEL, "--engine", "optimum",
           "--device", "cpu", "--batch-size", "32", "--host", "127.0.0.1", "--port", str(port),
           "--log-level", "warning"]  # fmt: skip
    # Run inside the folder with a relative --model-id (infinity 0.0.78 + optimum 2.x, bench/peers).
    proc = subprocess.Popen(cmd, cwd=infinity_dir, env=env, stdout=log.open("wb"),
                            stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip
    body = {"model": MODEL, "query": "ready?", "documents": ["ready"]}
    for _ in range(600):
        if proc.poll() is not None:
            raise RuntimeError(f"infinity exited: {log.read_text()[-3000:]}")
        try:
            if httpx.post(f"http://127.0.0.1:{port}/rerank", json=body, timeout=10).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        time.sleep(1)
    raise TimeoutError(log.read_text()[-3000:])


def measure(label: str, url: str, clients: list[int], duration: float, warmup: float) -> list[dict]:
    pairs = requests()

    def body(k: int) -> bytes:
        query, docs = pairs[k % len(pairs)]
        return orjson.dumps({"model": MODEL, "query": query, "documents": docs})

    rows = []
    for c in clients:
        got = asyncio.run(closed_loop(url, [], MODEL, 1, c, duration, warmup, make_body=body))
        rows.append({
            "server": label, "clients": c,
            "pairs_per_s": len(got.latencies_s) * DOCUMENTS / got.seconds,
            "p50_ms": got.percentile_ms(50), "p99_ms": got.percentile_ms(99),
            "errors": got.errors, "last_error": got.last_error,
        })  # fmt: skip
    return rows


def report(rows: list[dict], console: Console) -> None:
    table = Table(title=f"{MODEL} (UNTRAINED head), ONNX INT8, {DOCUMENTS} documents per request")
    for col in ("server", "clients", "pairs/s", "p50 ms", "p99 ms", "errors", "x Infinity pairs/s"):
        table.add_column(col, justify="left" if col == "server" else "right")
    peer = {r["clients"]: r["pairs_per_s"] for r in rows if r["server"] == "infinity"}
    for r in rows:
        ratio = r["pairs_per_s"] / peer[r["clients"]] if peer.get(r["clients"]) else float("nan")
        table.add_row(r["server"], str(r["clients"]), f"{r['pairs_per_s']:.0f}", f"{r['p50_ms']:.0f}",
                      f"{r['p99_ms']:.0f}", str(r["errors"]), f"{ratio:.2f}x")  # fmt: skip
    console.print(table)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--clients", type=int, nargs="+", default=[1, 4])
    ap.add_argument("--duration", type=float, default=25)
    ap.add_argument("--warmup", type=float, default=5)
    ap.add_argument("--out", type=Path, default=PROJECT_ROOT / "results" / "rerank" / "peers.json")
    a = ap.parse_args()
    console = Console(width=150)
    model_dir, infinity_dir = prepare()
    workdir = Path(tempfile.mkdtemp(prefix="ig-rerank-peers-"))
    rows: list[dict] = []

    port = free_port()
    infinity = start_infinity(infinity_dir, port, workdir / "infinity.log")
    try:
        console.print("[bold]Infinity[/] ready; measuring")
        rows += measure("infinity", f"http://127.0.0.1:{port}/rerank", a.clients, a.duration, a.warmup)
    finally:
        os.killpg(infinity.pid, signal.SIGTERM)
        infinity.wait(timeout=60)

    service = start_service(serve_config(model_dir, workdir))
    try:
        console.print(f"[bold]infergraph[/] ready in {service.startup_s:.0f} s; measuring")
        url = f"{service.base_url}/v1/rerank"
        rows += measure("infergraph", url, a.clients, a.duration, a.warmup)
    finally:
        service.stop()
    report(rows, console)
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps({"model": MODEL, "documents": DOCUMENTS, "rows": rows}, indent=2))
    console.print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
