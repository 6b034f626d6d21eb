"""Kill a model replica, or a router replica, mid-load and measure what clients see.

    uv run python -m infergraph.bench.faults                  # MiniLM on 2 replicas, ~1.5 min
    uv run python -m infergraph.bench.faults --kill Router    # the router (the ingress) on 2 replicas

The service runs all-MiniLM-L6-v2 and the Router on two replicas each. Premium and batch clients
send embeddings back to back (closed loop, single sentences for premium, 16-sentence lists for
batch). After `--kill-at` seconds one replica's process of the `--kill` deployment gets SIGKILL
(found by its Ray process title), as a crash or an OOM kill would do. Ray Serve starts a
replacement. Reported: requests sent, failed and how (status, code, whether OpenAI-shaped with
Retry-After), the longest time a request waited past its deadline, and how long until throughput
(1 s windows) is back to 90% of what it was before the kill. Writes
results/faults/replica_kill.json and .png (router_kill.* for the router).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import statistics
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import aiohttp
import orjson
import psutil
import yaml
from rich.console import Console

from infergraph.corpus import load_corpus
from infergraph.paths import PROJECT_ROOT
from infergraph.testing.service import DEFAULT_CONFIG, start_service

MODEL = "all-MiniLM-L6-v2"
KEYS = {"premium": "sk-ig-demo-premium", "batch": "sk-ig-demo-batch"}
DEADLINE_S = {"premium": 1.0, "batch": 30.0}  # configs/tenants.yaml


@dataclass
class Sample:
    tier: str
    sent: float  # seconds since the load started
    took: float
    status: int  # 0: no HTTP answer
    code: str | None
    retry_after: str | None
    shaped: bool  # an OpenAI-shaped error body


def serve_config(workdir: Path, replicas: int, routers: int) -> Path:
    cfg = yaml.safe_load(DEFAULT_CONFIG.read_text())
    app = cfg["applications"][0]
    app["args"]["models"] = [MODEL]
    app["args"]["registry"]["default_variant"] = "base"
    app["deployments"] = [d for d in app["deployments"] if d["name"] in ("Router", MODEL)]
    model = next(d for d in app["deployments"] if d["name"] == MODEL)
    model["num_replicas"] = replicas
    model["ray_actor_options"] = {"num_cpus": 0.4}
    router = next(d for d in app["deployments"] if d["name"] == "Router")
    router["num_replicas"] = routers
    path = workdir / "serve.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def replica_pids(deployment: str) -> list[int]:
    """Processes of a deployment's replicas (Ray titles them `ray::ServeReplica:<app>:<deployment>`)."""
    found = []
    for proc in psutil.process_iter(["pid", "cmdline"]):
        cmdline = " ".join(proc.info["cmdline"] or [])
        if f"ServeReplica:infergraph:{deployment}" in cmdline:
            found.append(proc.info["pid"])
    return found


async def load(
    url: str, seconds: float, kill_at: float, clients: dict[str, int], victim: str = MODEL
) -> tuple[list[Sample], float]:
    texts = load_corpus()
    samples: list[Sample] = []
    began = time.perf_counter()
    killed_at = -1.0

    async def client(tier: str, n: int, session: aiohttp.ClientSession) -> None:
        k = n
        headers = {"Authorization": f"Bearer {KEYS[tier]}", "Content-Type": "application/json"}
        size = 1 if tier == "premium" else 16
        while time.perf_counter() - began < seconds:
            body = orjson.dumps({"model": MODEL, "input": [texts[(k + j) % len(texts)] for j in range(size)]})
            k += 97
            sent = time.perf_counter()
            status, code, retry, shaped = 0, None, None, False
            try:
                async with session.post(url, data=body, headers=headers) as r:
                    status, raw = r.status, await r.read()
                    retry = r.headers.get("retry-after")
                    if status != 200:
                        try:
                            error = orjson.loads(raw)["error"]
                            code, shaped = error.get("code"), {"message", "type", "code"} <= set(error)
                        except (orjson.JSONDecodeError, KeyError, TypeError):
                            code = raw[:80].decode(errors="replace")
            except aiohttp.ClientError as exc:
                code = type(exc).__name__
            samples.append(
                Sample(tier, sent - began, time.perf_counter() - sent, status, code, retry, shaped)
            )
            if status != 200:
                await asyncio.sleep(0.05)

    async def killer() -> None:
        nonlocal killed_at
        await asyncio.sleep(kill_at)
        pids = replica_pids(victim)
        if pids:
            os.kill(pids[0], signal.SIGKILL)
            killed_at = time.perf_counter() - began

    timeout = aiohttp.ClientTimeout(total=120)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0), timeout=timeout) as session:
        tasks = [client(tier, n, session) for tier, count in clients.items() for n in range(count)]
        await asyncio.gather(killer(), *tasks)
    return samples, killed_at


def summarize(samples: list[Sample], killed_at: float, seconds: float) -> dict:
    ok = [s for s in samples if s.status == 200]
    failed = [s for s in samples if s.status != 200]
    late = [s.sent + s.took - (s.sent + DEADLINE_S[s.tier]) for s in samples]
    per_s = [sum(1 for s in ok if int(s.sent + s.took) == t) for t in range(int(seconds))]
    before = statistics.mean(per_s[max(0, int(killed_at) - 10) : int(killed_at)]) if killed_at > 1 else 0.0
    back = next((t for t in range(int(killed_at) + 1, len(per_s)) if per_s[t] >= 0.9 * before), None)
    codes: dict[str, int] = {}
    for s in failed:
        key = f"{s.status} {s.code}"
        codes[key] = codes.get(key, 0) + 1
    return {
        "requests": len(samples),
        "failed": len(failed),
        "failed_pct": 100 * len(failed) / max(1, len(samples)),
        "failures": codes,
        "failures_shaped_with_retry_after": sum(1 for s in failed if s.shaped and s.retry_after),
        "longest_past_deadline_s": max(late, default=0.0),
        "answered_past_deadline": sum(1 for x in late if x > 0),
        "killed_at_s": killed_at,
        "answers_per_s_before": before,
        "recovered_after_s": None if back is None else back - killed_at,
        "answers_per_s": per_s,
    }


def plot(summary: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 3.5))
    ax.plot(summary["answers_per_s"], label="answers/s")
    ax.axvline(summary["killed_at_s"], color="red", linestyle="--", label="replica killed")
    ax.set_xlabel("seconds")
    ax.set_ylabel("answered requests per second")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=60)
    ap.add_argument("--kill-at", type=float, default=20)
    ap.add_argument("--premium-clients", type=int, default=4)
    ap.add_argument("--batch-clients", type=int, default=4)
    ap.add_argument("--kill", default=MODEL, choices=[MODEL, "Router"], help="whose replica dies")
    ap.add_argument("--replicas", type=int, default=2, help="replicas of the model and of the router")
    ap.add_argument("--out", type=Path, default=PROJECT_ROOT / "results" / "faults")
    a = ap.parse_args(argv)
    console = Console()
    workdir = Path(tempfile.mkdtemp(prefix="ig-faults-"))
    service = start_service(serve_config(workdir, replicas=a.replicas, routers=a.replicas))
    try:
        url = f"{service.base_url}/v1/embeddings"
        clients = {"premium": a.premium_clients, "batch": a.batch_clients}
        with console.status(f"load for {a.seconds:.0f} s, one {a.kill} replica killed at {a.kill_at:.0f} s"):
            samples, killed_at = asyncio.run(load(url, a.seconds, a.kill_at, clients, a.kill))
    finally:
        service.stop()
    summary = summarize(samples, killed_at, a.seconds)
    console.print({k: v for k, v in summary.items() if k != "answers_per_s"})
    a.out.mkdir(parents=True, exist_ok=True)
    record = {"summary": summary, "samples": [asdict(s) for s in samples]}
    name = "replica_kill" if a.kill == MODEL else "router_kill"
    (a.out / f"{name}.json").write_text(json.dumps(record))
    plot(summary, a.out / f"{name}.png")
    console.print(f"wrote {a.out / name}.json and .png")


if __name__ == "__main__":
    main()
