"""Soak: the whole service under a steady mixed load for 30 minutes; memory, p99 and errors over time.

    uv run python -m infergraph.bench.soak                     # 30 min (+ ~1 min start)
    uv run python -m infergraph.bench.soak --minutes 5 --window-s 60   # a short look

Starts `serve run configs/serve.yaml` (every kind) and Locust's `soak` shape
(`loadtest/locustfile.py --ig-shape soak`) with `--users` users of the three tiers sending the
`--kinds` mix (embeddings, rerank, chat with streaming, transcriptions). Every `--sample-s` seconds
it records the resident memory (RSS) of every process of the service (Ray's, the proxy, the router,
each model replica, HAProxy), by role.

The bar (issue "Reliability", outcome 5): after `--warmup-min` minutes, RSS of every role grows by
at most 5% (median of the last fifth of the samples against the first fifth; the peak is reported
beside it), p99 per window steady
(the last window's p99 within 1.5x the first's), and no errors: every request answered 200, or
refused with 429/503 + Retry-After (a refusal is the service protecting itself, not a failure; they
are counted). Writes under results/soak/<timestamp>/: rss.jsonl, requests.jsonl and Locust's
files, summary.json and soak.png (RSS per role and p99 per window, over time).
"""

from __future__ import annotations

import argparse
import json
import shlex
import shutil
import sys
import threading
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import psutil
from rich.console import Console
from rich.table import Table

from infergraph.bench.overload import LOCUSTFILE, run_locust
from infergraph.bench.proctree import role_of
from infergraph.paths import PROJECT_ROOT
from infergraph.testing.service import DEFAULT_CONFIG, RunningService, start_service

console = Console()
MIX = "embeddings:6,rerank:2,chat:1,transcriptions:1"
RSS_GROWTH_BAR = 0.05
P99_DRIFT_BAR = 1.5


def sample_rss(root_pid: int, out: Path, every_s: float, stop: threading.Event) -> None:
    """One JSON line per sample: epoch and RSS (MiB) summed per role over the service's processes."""
    root = psutil.Process(root_pid)
    with out.open("a") as f:
        while not stop.is_set():
            by_role: dict[str, float] = defaultdict(float)
            for p in [root, *root.children(recursive=True)]:
                try:
                    role = "haproxy" if p.name() == "haproxy" else role_of(p)
                    by_role[role] += p.memory_info().rss / 2**20
                except psutil.Error:
                    continue
            cpu = psutil.cpu_percent()  # the machine's, since the last sample
            f.write(json.dumps({"t": time.time(), "rss_mib": dict(by_role), "machine_cpu_pct": cpu}) + "\n")
            f.flush()
            stop.wait(every_s)


def rss_growth(samples: list[dict[str, Any]], after_epoch: float) -> dict[str, dict[str, float]]:
    """Per role after warm-up: the median RSS of the first and of the last fifth of the samples (a
    level: one request's transient buffers do not move it), the growth between them, and the peak."""
    steady = [s for s in samples if s["t"] >= after_epoch]
    roles = sorted({r for s in steady for r in s["rss_mib"]})
    out = {}
    for role in roles:
        series = [s["rss_mib"][role] for s in steady if role in s["rss_mib"]]
        if len(series) < 10:
            continue
        k = max(3, len(series) // 5)
        first, last = float(np.median(series[:k])), float(np.median(series[-k:]))
        out[role] = {
            "first_mib": round(first, 1),
            "last_mib": round(last, 1),
            "growth": round(last / first - 1, 4),
            "peak_mib": round(float(max(series)), 1),
        }
    return out


def windows(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per soak window: requests, answered, refused (429/503), errors (anything else), p50/p99 of 200s."""
    by: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in records:
        if str(r.get("phase", "")).startswith("soak"):
            by[r["phase"]].append(r)
    out = []
    for phase in sorted(by, key=lambda p: int(p[4:])):
        rs = by[phase]
        ok = [r["latency_ms"] for r in rs if r["status"] == 200 and not r.get("code")]
        refused = [r for r in rs if r["status"] in (429, 503)]
        errors = [
            r for r in rs if not (r["status"] == 200 and not r.get("code")) and r["status"] not in (429, 503)
        ]
        out.append(
            {
                "window": phase,
                "start": min(r["t"] for r in rs),
                "requests": len(rs),
                "answered": len(ok),
                "refused": len(refused),
                "refused_without_retry_after": sum(1 for r in refused if r.get("retry_after") is None),
                "errors": len(errors),
                "error_examples": sorted({f"{r['status']} {r.get('code')}" for r in errors})[:5],
                "p50_ms": round(float(np.percentile(ok, 50)), 1) if ok else None,
                "p99_ms": round(float(np.percentile(ok, 99)), 1) if ok else None,
                "p99_ms_by_kind": {
                    kind: round(float(np.percentile(lat, 99)), 1)
                    for kind in sorted({r.get("kind", "embeddings") for r in rs})
                    if (
                        lat := [
                            r["latency_ms"]
                            for r in rs
                            if r.get("kind", "embeddings") == kind and r["status"] == 200
                        ]
                    )
                },
            }
        )
    return out


def verdict(growth: dict[str, dict[str, float]], wins: list[dict[str, Any]]) -> list[str]:
    lines = []
    worst = max(growth.items(), key=lambda kv: kv[1]["growth"], default=None)
    if worst is not None:
        role, g = worst
        ok = g["growth"] <= RSS_GROWTH_BAR
        lines.append(
            f"RSS: largest growth after warm-up {g['growth']:+.1%} ({role}, {g['first_mib']:.0f} -> "
            f"{g['last_mib']:.0f} MiB); bar <= +{RSS_GROWTH_BAR:.0%}: {'met' if ok else 'NOT met'}"
        )
    p99 = [w["p99_ms"] for w in wins if w["p99_ms"] is not None]
    if len(p99) >= 2:
        drift = p99[-1] / p99[0]
        lines.append(
            f"p99 per window {min(p99):.0f}-{max(p99):.0f} ms, last/first {drift:.2f}; "
            f"bar <= {P99_DRIFT_BAR}: {'met' if drift <= P99_DRIFT_BAR else 'NOT met'}"
        )
    errors = sum(w["errors"] for w in wins)
    bare = sum(w["refused_without_retry_after"] for w in wins)
    requests, refused = sum(w["requests"] for w in wins), sum(w["refused"] for w in wins)
    lines.append(
        f"errors {errors} of {requests} requests; refused {refused} ({bare} without Retry-After); "
        f"bar 0 errors: {'met' if errors == 0 and bare == 0 else 'NOT met'}"
    )
    return lines


def plot(samples: list[dict[str, Any]], wins: list[dict[str, Any]], warm_epoch: float, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t0 = samples[0]["t"] if samples else 0.0
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(12, 7), sharex=True)
    roles = sorted({r for s in samples for r in s["rss_mib"]})
    for i, role in enumerate(roles):
        pts = [((s["t"] - t0) / 60, s["rss_mib"][role]) for s in samples if role in s["rss_mib"]]
        top.plot(*zip(*pts, strict=True), label=role, color=plt.get_cmap("tab20")(i % 20))
    top.axvline((warm_epoch - t0) / 60, color="grey", lw=0.8, ls="--")
    top.set(ylabel="RSS (MiB)", title="Soak: resident memory per role")
    top.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    kinds = sorted({k for w in wins for k in w["p99_ms_by_kind"]})
    for kind in kinds:
        pts = [
            ((w["start"] - t0) / 60, w["p99_ms_by_kind"][kind]) for w in wins if kind in w["p99_ms_by_kind"]
        ]
        bottom.plot(*zip(*pts, strict=True), "o-", label=f"{kind} p99")
    bottom.set_yscale("log")
    bottom.set(xlabel="minutes", ylabel="p99 of answered requests (ms)", title="per window and kind")
    bottom.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def locust_command(args: argparse.Namespace, url: str, run_dir: Path) -> list[str]:
    return [
        sys.executable, "-m", "locust", "-f", str(LOCUSTFILE.relative_to(PROJECT_ROOT)),
        "--headless", "--only-summary", "-H", url,
        "--ig-shape", "soak", "--ig-soak-s", str(args.minutes * 60), "--ig-soak-window-s", str(args.window_s),
        "--ig-base-users", str(args.users), "--ig-kinds", args.kinds,
        "--ig-log", str(run_dir / "requests.jsonl"), "--csv", str(run_dir / "locust"),
        "--html", str(run_dir / "locust.html"), "--exit-code-on-error", "0",
    ]  # fmt: skip


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--url", help="a running service (default: start one from --config)")
    ap.add_argument("--config", type=Path, default=DEFAULT_CONFIG)
    ap.add_argument("--minutes", type=float, default=30.0)
    ap.add_argument("--window-s", type=float, default=120.0, help="report window")
    ap.add_argument("--warmup-min", type=float, default=5.0, help="RSS growth counts from here")
    ap.add_argument("--users", type=int, default=12, help="Locust users (about 70%% of capacity here)")
    ap.add_argument("--kinds", default=MIX)
    ap.add_argument("--sample-s", type=float, default=15.0)
    ap.add_argument("--out", type=Path, default=PROJECT_ROOT / "results" / "soak")
    ap.add_argument("--report", type=Path, metavar="RUN_DIR", help="only analyse an earlier run's files")
    args = ap.parse_args()
    if args.report:
        samples = read_jsonl(args.report / "rss.jsonl")
        started = samples[0]["t"] if samples else 0.0
        return analyse(args.report, args, started)
    run_dir = args.out / time.strftime("%Y%m%d-%H%M%S")
    run_dir.mkdir(parents=True, exist_ok=True)
    service: RunningService | None = None
    stop = threading.Event()
    try:
        if args.url:
            url, root_pid = args.url.rstrip("/"), None
        else:
            console.print(f"starting the service from {args.config} ...")
            service = start_service(args.config)
            url, root_pid = service.base_url, service.proc.pid
            console.print(f"service up at {url} in {service.startup_s:.0f} s")
        sampler = None
        if root_pid is not None:
            sampler = threading.Thread(
                target=sample_rss, args=(root_pid, run_dir / "rss.jsonl", args.sample_s, stop), daemon=True
            )
            sampler.start()
        started = time.time()
        cmd = locust_command(args, url, run_dir)
        (run_dir / "command.txt").write_text(shlex.join(cmd) + "\n")
        plan = [("soak", args.minutes * 60, args.users)]
        rc = run_locust(cmd, run_dir, plan, timeout_s=args.minutes * 60 + 300)
        console.print(f"Locust exited with {rc}")
    finally:
        stop.set()
        if service is not None:
            service.stop()
            shutil.copy(service.log, run_dir / "serve.log")
    return analyse(run_dir, args, started)


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line] if path.exists() else []


def analyse(run_dir: Path, args: argparse.Namespace, started: float) -> int:
    """summary.json, soak.png and the tables from a run's request log and RSS samples."""
    records = read_jsonl(run_dir / "requests.jsonl")
    samples = read_jsonl(run_dir / "rss.jsonl")
    warm_epoch = started + args.warmup_min * 60
    growth = rss_growth(samples, warm_epoch)
    wins = windows(records)
    cpu = [x["machine_cpu_pct"] for x in samples if x["t"] >= warm_epoch and "machine_cpu_pct" in x]
    summary: dict[str, Any] = {
        "machine_cpu_pct_mean": round(float(np.mean(cpu)), 1) if cpu else None,
        "settings": {k: str(v) for k, v in vars(args).items()},
        "rss": growth,
        "windows": wins,
    }
    summary["verdict"] = verdict(growth, wins)
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    if samples:
        plot(samples, wins, warm_epoch, run_dir / "soak.png")
    table = Table(title=f"Soak ({args.minutes:.0f} min, {args.users} users, {args.kinds})")
    for col in ("window", "requests", "answered", "refused", "errors", "p50 ms", "p99 ms"):
        table.add_column(col, justify="right")
    for w in wins:
        table.add_row(
            w["window"],
            *(str(w[k]) for k in ("requests", "answered", "refused", "errors", "p50_ms", "p99_ms")),
        )
    console.print(table)
    rss = Table(title="RSS after warm-up (MiB)")
    for col in ("role", "first fifth", "last fifth", "growth", "peak"):
        rss.add_column(col, justify="right")
    for role, g in growth.items():
        rss.add_row(
            role,
            f"{g['first_mib']:.0f}",
            f"{g['last_mib']:.0f}",
            f"{g['growth']:+.1%}",
            f"{g['peak_mib']:.0f}",
        )
    console.print(rss)
    for line in summary["verdict"]:
        console.print(f"- {line}")
    console.print(f"wrote {run_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
