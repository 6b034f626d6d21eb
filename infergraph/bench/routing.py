"""Routing benchmark: Serve's default power-of-two router vs deployments.routing's least-connections
and least-time routers.

    uv run python -m infergraph.bench.routing          # ~3.5 min: one local Ray cluster, three routers

The deployment is a stand-in (`StandInModel`): each replica serves one request at a time and
"computes" with asyncio.sleep, so the run measures the routing policy rather than model compute on a
2-core box. The replica of rank 0 is --slow-factor times slower, as a replica on a busy node would be.
All routers get the same open-loop Poisson arrivals at --load of total capacity; latency counts
from each request's scheduled arrival. The routers take turns in short rounds (same arrivals in
a round), so that whatever else runs on the machine hits all alike. Prints a table, writes the raw
numbers to results/bench-routing.json and a plot to docs/bench-routing.png.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.progress import BarColumn, Progress, TaskID, TextColumn, TimeElapsedColumn
from rich.table import Table

from infergraph.paths import PROJECT_ROOT

LEAST_CONNECTIONS = "infergraph.deployments.routing:LeastConnectionsRouter"
LEAST_TIME = "infergraph.deployments.routing:LeastTimeRouter"
console = Console(width=None if sys.stdout.isatty() else 120)  # a log gets the whole table

Sample = tuple[float, int]  # (latency s, replica rank or -1 on error)


class StandInModel:
    """Stand-in for a model replica: one request at a time, for a fixed service time (rank 0 slower)."""

    def __init__(self, service_s: float, slow_factor: float) -> None:
        from ray import serve

        self.rank = serve.get_replica_context().rank.rank  # a ReplicaRank in Ray 2.60
        self.service_s = service_s * (slow_factor if self.rank == 0 else 1.0)
        self.worker = asyncio.Lock()  # one request computes at a time; the rest queue in the replica

    async def __call__(self) -> int:
        async with self.worker:
            await asyncio.sleep(self.service_s)
        return self.rank


class ProbeTimeouts(logging.Filter):
    """Counts (and hides) Serve's 'Failed to get queue length' warnings: the routers' probes that
    missed their deadline, a sign the machine was too busy to answer them in time."""

    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def filter(self, record: logging.LogRecord) -> bool:
        if "Failed to get queue length" in record.getMessage():
            self.count += 1
            return False
        return True


def router_in_use(handle: Any) -> str:
    """The request router class the handle actually built (private attributes; 'unknown' if moved)."""
    asyncio_router = getattr(getattr(handle, "_router", None), "_asyncio_router", None)
    router = getattr(asyncio_router, "request_router", None)
    return type(router).__name__ if router is not None else "unknown"


async def drive(
    handle: Any, arrivals: np.ndarray, warmup_s: float, progress: Progress, task: TaskID
) -> list[Sample]:
    """Send one request at each arrival time (open loop), whether or not earlier ones finished.
    Requests that arrive in the first warmup_s (queues still filling) are not returned."""
    start = time.perf_counter()

    async def one(due: float) -> Sample:
        try:
            rank = await handle.remote()
        except Exception:
            rank = -1
        return time.perf_counter() - due, rank

    tasks, last = [], 0.0
    for at in arrivals:
        due = start + at
        if (delay := due - time.perf_counter()) > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(due)))
        progress.update(task, advance=at - last)
        last = at
    samples = await asyncio.gather(*tasks)
    return [s for s, at in zip(samples, arrivals, strict=True) if at >= warmup_s]


def summarize(name: str, router_class: str, rounds: list[list[Sample]], probe_timeouts: int) -> dict:
    samples = [s for r in rounds for s in r]
    ok = np.array([lat for lat, rank in samples if rank >= 0]) * 1000
    ranks = np.array([rank for _, rank in samples if rank >= 0])
    return {
        "router": name,
        "router_class": router_class,
        "requests": len(ok),
        "errors": len(samples) - len(ok),
        **{f"p{p}_ms": float(np.percentile(ok, p)) for p in (50, 95, 99)},
        "max_ms": float(ok.max()),
        "slow_share": float(np.mean(ranks == 0)),
        "p99_ms_by_round": [float(np.percentile([lat for lat, k in r if k >= 0], 99) * 1000) for r in rounds],
        "by_rank": {
            str(rank): {
                "requests": int(np.sum(ranks == rank)),
                "p99_ms": float(np.percentile(ok[ranks == rank], 99)),
            }
            for rank in np.unique(ranks)
        },
        "probe_timeouts": probe_timeouts,
        "latencies_ms": [round(float(x), 2) for x in ok],
        "ranks": ranks.tolist(),
    }


def show(runs: list[dict], setup: dict) -> None:
    table = Table(
        title=f"{setup['replicas']} replicas (rank 0 {setup['slow_factor']:g}x slower), "
        f"{setup['rate_per_s']:.0f} req/s Poisson = {setup['load']:.0%} of capacity, "
        f"{setup['rounds']} x {setup['segment_s']:g} s each"
    )
    columns = (
        "router",
        "requests",
        "p50 ms",
        "p95 ms",
        "p99 ms",
        "max ms",
        "p99/round",
        "to slow",
        "probe t/o",
    )
    for col in columns:
        table.add_column(col, justify="left" if col == "router" else "right")
    for r in runs:
        table.add_row(
            r["router"],
            f"{r['requests']}" + (f" ({r['errors']} err)" if r["errors"] else ""),
            *(f"{r[k]:.1f}" for k in ("p50_ms", "p95_ms", "p99_ms", "max_ms")),
            f"{min(r['p99_ms_by_round']):.0f}-{max(r['p99_ms_by_round']):.0f}",
            f"{r['slow_share']:.1%}",
            str(r["probe_timeouts"]),
        )
    console.print(table)
    console.print("router classes in use: " + ", ".join(f"{r['router']}: {r['router_class']}" for r in runs))


def plot(runs: list[dict], setup: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullFormatter

    fig, (cdf, bars) = plt.subplots(1, 2, figsize=(10, 3.8))
    keys = ("p50_ms", "p95_ms", "p99_ms", "max_ms")
    width = 0.8 / len(runs)
    for i, r in enumerate(runs):
        lat = np.sort(r["latencies_ms"])
        label = f"{r['router']} ({r['slow_share']:.0%} to slow replica)"
        cdf.plot(lat, np.arange(1, len(lat) + 1) / len(lat), label=label)
        bars.bar(np.arange(len(keys)) + i * width, [r[k] for k in keys], width, label=r["router"])
    cdf.set_xscale("log")
    lo, hi = min(min(r["latencies_ms"]) for r in runs), max(r["max_ms"] for r in runs)
    ticks = [t * 10**e for e in range(6) for t in (1, 2, 5) if lo <= t * 10**e <= hi]
    cdf.set_xticks(ticks, [f"{t:g}" for t in ticks])
    cdf.xaxis.set_minor_formatter(NullFormatter())
    cdf.set_xlabel("latency (ms, log)")
    cdf.set_ylabel("fraction of requests")
    cdf.legend(fontsize=8)
    cdf.grid(alpha=0.3)
    bars.set_xticks(np.arange(len(keys)) + width * (len(runs) - 1) / 2, ["p50", "p95", "p99", "max"])
    bars.set_ylabel("ms")
    bars.legend(fontsize=8)
    fig.suptitle(
        f"Stand-in deployment: {setup['replicas']} replicas, rank 0 {setup['slow_factor']:g}x slower, "
        f"{setup['load']:.0%} load ({setup['rate_per_s']:.0f} req/s Poisson)",
        fontsize=10,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--replicas", type=int, default=3)
    ap.add_argument("--service-ms", type=float, default=20.0, help="service time of a normal replica")
    ap.add_argument("--slow-factor", type=float, default=3.0, help="rank 0's service time multiplier")
    ap.add_argument("--load", type=float, default=0.7, help="offered load as a fraction of total capacity")
    ap.add_argument("--rounds", type=int, default=8, help="turns per router")
    ap.add_argument("--segment", type=float, default=5.0, help="measured seconds per turn")
    ap.add_argument("--warmup", type=float, default=1.0, help="discarded seconds at the start of each turn")
    ap.add_argument("--max-ongoing", type=int, default=16, help="max_ongoing_requests per replica")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", type=Path, default=PROJECT_ROOT / "results" / "bench-routing.json")
    ap.add_argument("--png", type=Path, default=PROJECT_ROOT / "docs" / "bench-routing.png")
    a = ap.parse_args()

    capacity = (a.replicas - 1 + 1 / a.slow_factor) / (a.service_ms / 1000)  # requests/s, one worker each
    rate = a.load * capacity
    turn_s = a.warmup + a.segment

    def arrivals(round_: int) -> np.ndarray:
        gaps = np.random.default_rng(a.seed + round_).exponential(1 / rate, size=int(rate * turn_s * 2) + 10)
        times = np.cumsum(gaps)
        return times[times < turn_s]

    setup = {
        **{k: getattr(a, k) for k in ("replicas", "service_ms", "slow_factor", "load", "rounds", "seed")},
        "max_ongoing_requests": a.max_ongoing,
        "capacity_per_s": capacity,
        "rate_per_s": rate,
        "segment_s": a.segment,
        "warmup_s": a.warmup,
    }

    # Read when ray is imported, hence the imports below. The workers run this venv, where the
    # project is installed: no need for `uv run`'s runtime env, which ships the working tree to them.
    os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")
    os.environ.setdefault("RAY_TMPDIR", tempfile.mkdtemp(prefix="igr-ray-", dir="/tmp"))
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    import ray
    from ray import serve

    lc_config = {"request_router_class": LEAST_CONNECTIONS}  # a string import path, as serve.yaml gives it
    routers: list[tuple[str, str, dict]] = [
        ("power-of-two (default)", "pow2", {}),
        ("least-connections", "leastconn", {"request_router_config": lc_config}),
        ("least-time", "leasttime", {"request_router_config": {"request_router_class": LEAST_TIME}}),
    ]
    probe_timeouts = ProbeTimeouts()
    logging.getLogger("ray.serve").addFilter(probe_timeouts)
    samples: dict[str, list[list[Sample]]] = {name: [] for name, _, _ in routers}  # per round
    timeouts = dict.fromkeys(samples, 0)
    try:
        with console.status(f"starting Ray and Serve, then {len(routers)} apps of {a.replicas} replicas"):
            ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
            serve.start(proxy_location="Disabled")
            # One app per router, deployed together (start-up dominates on 2 cores). Not one app
            # redeployed: the driver caches a handle per deployment, which keeps its first router.
            targets = [
                serve.RunTarget(
                    serve.deployment(
                        num_replicas=a.replicas,
                        max_ongoing_requests=a.max_ongoing,
                        ray_actor_options={"num_cpus": 0.1},
                        logging_config={"enable_access_log": False},
                        **options,
                    )(StandInModel).bind(a.service_ms / 1000, a.slow_factor),
                    name=app_name,
                    route_prefix=None,
                )
                for _, app_name, options in routers
            ]
            handles = dict(zip(samples, serve.run_many(targets), strict=True))
        with Progress(
            TextColumn("{task.description}"), BarColumn(), TimeElapsedColumn(), console=console
        ) as progress:
            bars = {name: progress.add_task(name, total=a.rounds * turn_s) for name in samples}
            for round_ in range(a.rounds):
                for name, handle in handles.items():
                    task = bars[name]
                    progress.update(
                        task, description=f"{name}: round {round_ + 1}/{a.rounds}, {rate:.0f} req/s"
                    )
                    seen = probe_timeouts.count
                    samples[name].append(
                        asyncio.run(drive(handle, arrivals(round_), a.warmup, progress, task))
                    )
                    timeouts[name] += probe_timeouts.count - seen
                    progress.update(task, completed=(round_ + 1) * turn_s)
        runs = [
            summarize(name, router_in_use(h), samples[name], timeouts[name]) for name, h in handles.items()
        ]
    finally:
        serve.shutdown()
        ray.shutdown()

    show(runs, setup)
    a.json.parent.mkdir(parents=True, exist_ok=True)
    a.json.write_text(json.dumps({"ts": time.strftime("%Y-%m-%dT%H:%M:%S"), "setup": setup, "runs": runs}))
    a.png.parent.mkdir(parents=True, exist_ok=True)
    plot(runs, setup, a.png)
    console.print(f"raw numbers {a.json}; plot {a.png}")


if __name__ == "__main__":
    main()
