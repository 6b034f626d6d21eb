"""Faults under load: a model replica or a router replica killed, a live redeploy, SIGTERM to `serve run`.

    uv run python -m infergraph.bench.faults --fault replica --seconds 45 --at 15   # ~1.5 min each
    uv run python -m infergraph.bench.faults --fault router      # a router (ingress) replica SIGKILLed
    uv run python -m infergraph.bench.faults --fault reconfigure # serve deploy: new batch settings (live)
    uv run python -m infergraph.bench.faults --fault redeploy    # new CPU shares: replicas replaced
    uv run python -m infergraph.bench.faults --fault sigterm     # SIGTERM to serve run while busy
    uv run python -m infergraph.bench.faults --fault drain-stop  # infergraph-drain, then SIGTERM

The service runs all-MiniLM-L6-v2 and the Router on two replicas each. Premium and batch clients
send embeddings back to back (closed loop, single sentences for premium, 16-sentence lists for
batch). After `--at` seconds the fault happens: a replica's process gets SIGKILL (found by its Ray
process title), as a crash or an OOM kill would do, and Ray Serve starts a replacement; or
`serve deploy` applies a changed serve.yaml; or `serve run` gets SIGTERM, as a supervisor stopping
it would send. Reported: requests sent, failed and how (status, code, whether OpenAI-shaped with
Retry-After), the longest time a request waited past its deadline, how long until throughput (1 s
windows) is back to 90% of what it was before; for SIGTERM, what happened to the requests in flight
at the signal, how long `serve run` took to exit and which of its processes were left running.
Writes results/faults/<fault>.json and .png.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import psutil
import yaml
from rich.console import Console

from infergraph.corpus import load_corpus
from infergraph.deploy.drain import main as drain_haproxy
from infergraph.paths import PROJECT_ROOT
from infergraph.testing.service import RunningService, serving_only, start_service

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
    cfg = serving_only([MODEL])
    app = cfg["applications"][0]
    app["args"]["registry"]["default_variant"] = "base"
    app["args"]["in_router"] = []  # the faults hit the model's replicas: its requests must go there
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


Fault = Callable[[], Awaitable[None]]


def kill_replica(deployment: str) -> Fault:
    async def fault() -> None:
        pids = replica_pids(deployment)
        if pids:
            os.kill(pids[0], signal.SIGKILL)

    return fault


def redeploy(service: RunningService, change: Callable[[dict[str, Any]], None]) -> Fault:
    """`serve deploy` of the running config with `change` applied to MiniLM's entry."""

    async def fault() -> None:
        cfg = yaml.safe_load(service.config.read_text())
        change(next(d for d in cfg["applications"][0]["deployments"] if d["name"] == MODEL))
        path = service.config.with_name("redeploy.yaml")
        path.write_text(yaml.safe_dump(cfg))
        serve_cli = Path(sys.executable).parent / "serve"
        env = {**os.environ, "RAY_AUTH_MODE": "token"}  # clusters started by `serve run` use it
        cmd = [str(serve_cli), "deploy", "-a", service.dashboard_url(), str(path)]
        await asyncio.to_thread(subprocess.run, cmd, check=True, env=env, capture_output=True, timeout=120)

    return fault


def new_batching(dep: dict[str, Any]) -> None:
    dep["user_config"].update(max_batch_sentences=8, batch_wait_timeout_s=0.002)


def new_cpu_shares(dep: dict[str, Any]) -> None:
    dep["ray_actor_options"] = {"num_cpus": 0.35}


def service_processes(service: RunningService) -> list[psutil.Process]:
    """`serve run` and everything it started: its descendants, and HAProxy (a child of a Ray actor)."""
    root = psutil.Process(service.proc.pid)
    return [root, *root.children(recursive=True)]


def sigterm(service: RunningService, report: dict[str, Any], drain_first: bool = False) -> Fault:
    """SIGTERM to `serve run` (after `infergraph-drain` when `drain_first`); records how long it took
    to exit and what it left running."""

    async def fault() -> None:
        procs = service_processes(service)
        if drain_first:
            began = time.perf_counter()
            report["drain_exit_code"] = await asyncio.to_thread(drain_haproxy, [])
            report["drain_s"] = round(time.perf_counter() - began, 2)
        sent = time.perf_counter()
        service.proc.send_signal(signal.SIGTERM)
        exit_code = await asyncio.to_thread(service.proc.wait, 120)
        report["exit_s"] = round(time.perf_counter() - sent, 2)
        report["exit_code"] = exit_code
        await asyncio.sleep(5)
        report["left_running"] = [
            " ".join(p.cmdline())[:120]
            for p in procs
            if p.is_running() and p.status() != psutil.STATUS_ZOMBIE
        ]

    return fault


async def load(
    url: str, seconds: float, at: float, clients: dict[str, int], fault: Fault
) -> tuple[list[Sample], float]:
    texts = load_corpus()
    samples: list[Sample] = []
    began = time.perf_counter()
    fault_at = -1.0

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
            except (TimeoutError, aiohttp.ClientError) as exc:
                code = type(exc).__name__
            samples.append(
                Sample(tier, sent - began, time.perf_counter() - sent, status, code, retry, shaped)
            )
            if status != 200:
                await asyncio.sleep(0.05)

    async def at_time() -> None:
        nonlocal fault_at
        await asyncio.sleep(at)
        fault_at = time.perf_counter() - began
        await fault()

    timeout = aiohttp.ClientTimeout(total=120)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0), timeout=timeout) as session:
        tasks = [client(tier, n, session) for tier, count in clients.items() for n in range(count)]
        await asyncio.gather(at_time(), *tasks)
    return samples, fault_at


def summarize(samples: list[Sample], killed_at: float, seconds: float) -> dict[str, Any]:
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


def drain(samples: list[Sample], signal_at: float) -> dict[str, Any]:
    """SIGTERM: requests in flight at the signal (sent before, answered after) and those sent after."""
    in_flight = [s for s in samples if s.sent < signal_at <= s.sent + s.took]
    after = [s for s in samples if s.sent >= signal_at]
    outcome = lambda group: dict(Counter(f"{s.status} {s.code or ''}".strip() for s in group))  # noqa: E731
    return {
        "in_flight_at_signal": len(in_flight),
        "in_flight_answered": sum(1 for s in in_flight if s.status == 200),
        "in_flight_outcomes": outcome(in_flight),
        "sent_after_signal": len(after),
        "after_outcomes": outcome(after),
        "after_shaped_with_retry_after": sum(1 for s in after if s.shaped and s.retry_after),
    }


def plot(summary: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 3.5))
    ax.plot(summary["answers_per_s"], label="answers/s")
    ax.axvline(summary["killed_at_s"], color="red", linestyle="--", label=summary.get("fault", "fault"))
    ax.set_xlabel("seconds")
    ax.set_ylabel("answered requests per second")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


FAULTS = ("replica", "router", "reconfigure", "redeploy", "sigterm", "drain-stop")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--fault", choices=FAULTS, default="replica")
    ap.add_argument("--seconds", type=float, default=60)
    ap.add_argument("--at", type=float, default=20, help="seconds into the load when the fault happens")
    ap.add_argument("--premium-clients", type=int, default=4)
    ap.add_argument("--batch-clients", type=int, default=4)
    ap.add_argument("--replicas", type=int, default=2, help="replicas of the model and of the router")
    ap.add_argument("--out", type=Path, default=PROJECT_ROOT / "results" / "faults")
    a = ap.parse_args(argv)
    console = Console()
    workdir = Path(tempfile.mkdtemp(prefix="ig-faults-"))
    service = start_service(serve_config(workdir, replicas=a.replicas, routers=a.replicas))
    report: dict[str, Any] = {}
    fault = {
        "replica": lambda: kill_replica(MODEL),
        "router": lambda: kill_replica("Router"),
        "reconfigure": lambda: redeploy(service, new_batching),
        "redeploy": lambda: redeploy(service, new_cpu_shares),
        "sigterm": lambda: sigterm(service, report),
        "drain-stop": lambda: sigterm(service, report, drain_first=True),
    }[a.fault]()
    try:
        url = f"{service.base_url}/v1/embeddings"
        clients = {"premium": a.premium_clients, "batch": a.batch_clients}
        with console.status(f"load for {a.seconds:.0f} s, {a.fault} at {a.at:.0f} s"):
            samples, fault_at = asyncio.run(load(url, a.seconds, a.at, clients, fault))
    finally:
        service.stop()
    summary = {"fault": a.fault, **summarize(samples, fault_at, a.seconds), **report}
    if a.fault in ("sigterm", "drain-stop"):
        summary |= drain(samples, fault_at)
    console.print({k: v for k, v in summary.items() if k != "answers_per_s"})
    a.out.mkdir(parents=True, exist_ok=True)
    record = {"summary": summary, "samples": [asdict(s) for s in samples]}
    name = {"replica": "replica_kill", "router": "router_kill"}.get(a.fault, a.fault)
    (a.out / f"{name}.json").write_text(json.dumps(record))
    plot(summary, a.out / f"{name}.png")
    console.print(f"wrote {a.out / name}.json and .png")


if __name__ == "__main__":
    main()
