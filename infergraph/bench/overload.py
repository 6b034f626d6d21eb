"""Overload test: Locust's tier users against the real service, at the sustainable rate, then 3x, then back.

    uv run python -m infergraph.bench.overload          # starts the service (configs/serve.yaml)
    uv run python -m infergraph.bench.overload --url http://127.0.0.1:8000   # against a running service
    uv run python -m infergraph.bench.overload --warmup-s 15 --overload-s 30 --recover-s 15   # shorter

Runs `python -m locust -f loadtest/locustfile.py --headless --ig-shape overload` as a subprocess
(Locust monkey-patches its process with gevent, which breaks Ray and torch, so it never runs in
this one), with `--base-users` users (default 24: ~10 requests/s, ~100 sentences/s, about sustainable) for
`--warmup-s`, `--factor` times as many for `--overload-s`, then the base again for
`--recover-s`. Writes under results/overload/<timestamp>/: requests.jsonl (+ .meta.json) from
the locustfile, Locust's own locust_*.csv, locust.json and locust.html, locust.log, serve.log,
command.txt, then summary.json and report.png from `python -m loadtest.report`.

Extra Locust options go after `--`, e.g. `-- --ig-premium-rps 3 --ig-batch-weight 2`.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter, defaultdict
from pathlib import Path

from rich.console import Console

from infergraph.paths import PROJECT_ROOT
from infergraph.testing.service import DEFAULT_CONFIG, RunningService, start_service
from loadtest.report import report

console = Console()
LOCUSTFILE = PROJECT_ROOT / "loadtest" / "locustfile.py"


class LogTail:
    """Counts of the request log so far (read incrementally while Locust writes it)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = 0
        self.ok: Counter[str] = Counter()
        self.refused: defaultdict[str, Counter[str]] = defaultdict(Counter)
        self.no_answer: Counter[str] = Counter()
        self.recent_latency: defaultdict[str, list[float]] = defaultdict(list)

    def poll(self) -> None:
        if not self.path.exists():
            return
        with open(self.path, "rb") as f:
            f.seek(self.offset)
            chunk = f.read()
        complete = chunk[: chunk.rfind(b"\n") + 1]  # a line being written stays for the next poll
        self.offset += len(complete)
        self.recent_latency.clear()
        for line in complete.splitlines():
            with contextlib.suppress(ValueError, KeyError):
                r = json.loads(line)
                tier, status = r["tier"], r["status"]
                if status == 200:
                    self.ok[tier] += 1
                    self.recent_latency[tier].append(float(r["latency_ms"]))
                elif status:
                    self.refused[tier][r.get("code") or str(status)] += 1
                else:
                    self.no_answer[tier] += 1

    def line(self, interval_s: float) -> str:
        parts = []
        for tier in sorted(set(self.ok) | set(self.refused) | set(self.no_answer)):
            lat = sorted(self.recent_latency.get(tier, []))
            p95 = f"{lat[int(0.95 * (len(lat) - 1))]:.0f}" if lat else "-"
            refused = sum(self.refused[tier].values())
            parts.append(
                f"{tier} {self.ok[tier]} ok +{len(lat) / interval_s:.0f}/s p95 {p95} ms,"
                f" {refused} refused, {self.no_answer[tier]} no answer"
            )
        return " | ".join(parts) or "no requests yet"


def shape_started(meta: Path) -> float | None:
    """Epoch when Locust's shape started (from the locustfile's meta file), None before."""
    with contextlib.suppress(OSError, ValueError):
        started = json.loads(meta.read_text()).get("started_epoch")
        return float(started) if started else None
    return None


def phase_at(elapsed: float, plan: list[tuple[str, float, int]]) -> tuple[str, int]:
    end = 0.0
    for name, duration, users in plan:
        end += duration
        if elapsed < end:
            return name, users
    return "stopping", 0


def locust_command(args: argparse.Namespace, url: str, run_dir: Path, extra: list[str]) -> list[str]:
    # No --run-time: with a shape, headless Locust only arms it once the shape has ended (2.47).
    return [
        sys.executable,
        "-m",
        "locust",
        "-f",
        str(LOCUSTFILE.relative_to(PROJECT_ROOT)),
        "--headless",
        "--only-summary",
        "-H",
        url,
        "--ig-shape",
        "overload",
        "--ig-base-users",
        str(args.base_users),
        "--ig-overload-factor",
        str(args.factor),
        "--ig-warmup-s",
        str(args.warmup_s),
        "--ig-overload-s",
        str(args.overload_s),
        "--ig-recover-s",
        str(args.recover_s),
        "--ig-timeout-s",
        str(args.timeout_s),
        "--ig-log",
        str(run_dir / "requests.jsonl"),
        "--csv",
        str(run_dir / "locust"),
        "--json-file",
        str(run_dir / "locust"),  # Locust appends .json
        "--html",
        str(run_dir / "locust.html"),
        "--exit-code-on-error",
        "0",  # refusals are the point of the test, not a failure of it
        *extra,
    ]


def run_locust(cmd: list[str], run_dir: Path, plan: list[tuple[str, float, int]], timeout_s: float) -> int:
    total = sum(d for _n, d, _u in plan)
    tail = LogTail(run_dir / "requests.jsonl")
    interval = 5.0
    with open(run_dir / "locust.log", "wb") as out:
        proc = subprocess.Popen(
            cmd, cwd=PROJECT_ROOT, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    started = time.monotonic()
    try:
        while proc.poll() is None:
            time.sleep(interval)
            tail.poll()
            shape_t0 = shape_started(run_dir / "requests.meta.json")
            if shape_t0 is None:
                console.print(f"[dim][{time.monotonic() - started:5.0f} s][/dim] Locust starting ...")
            else:
                elapsed = time.time() - shape_t0
                phase, users = phase_at(elapsed, plan)
                console.print(
                    f"[dim][{elapsed:4.0f}/{total:.0f} s][/dim] [bold]{phase}[/bold]"
                    f"{f' {users} users' if users else ''}: {tail.line(interval)}",
                    soft_wrap=True,
                )
            if time.monotonic() - started > timeout_s:
                console.print(f"[red]Locust still running after {timeout_s:.0f} s: stopping it[/red]")
                proc.send_signal(signal.SIGTERM)  # Locust shuts down cleanly on SIGTERM (stats, files)
                try:
                    proc.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    proc.kill()
                break
    except KeyboardInterrupt:
        console.print("[yellow]interrupted: stopping Locust[/yellow]")
        proc.send_signal(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=60)
        raise
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return int(proc.returncode)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--url", help="a running service (default: start one from --config)")
    ap.add_argument("--config", type=Path, default=DEFAULT_CONFIG)
    ap.add_argument("--base-users", type=int, default=24, help="about the sustainable load")
    ap.add_argument("--factor", type=float, default=3.0, help="users in the overload step, x base")
    ap.add_argument("--warmup-s", type=float, default=30.0)
    ap.add_argument("--overload-s", type=float, default=60.0)
    ap.add_argument("--recover-s", type=float, default=30.0)
    ap.add_argument("--timeout-s", type=float, default=35.0, help="client timeout of one request")
    ap.add_argument("--out", type=Path, default=PROJECT_ROOT / "results" / "overload")
    ap.add_argument("locust_args", nargs=argparse.REMAINDER, help="after --: more Locust options")
    args = ap.parse_args()
    extra = [a for a in args.locust_args if a != "--"]

    run_dir = args.out / time.strftime("%Y%m%d-%H%M%S")
    run_dir.mkdir(parents=True, exist_ok=True)
    high = max(1, round(args.base_users * args.factor))
    plan = [
        ("warmup", args.warmup_s, args.base_users),
        ("overload", args.overload_s, high),
        ("recover", args.recover_s, args.base_users),
    ]
    total = args.warmup_s + args.overload_s + args.recover_s
    console.print(
        f"[bold]Overload run[/bold] -> {run_dir}: "
        + ", ".join(f"{n} {d:.0f} s at {u} users" for n, d, u in plan)
        + f" ({total:.0f} s)"
    )

    service: RunningService | None = None
    rc = 0
    try:
        if args.url:
            url = args.url.rstrip("/")
        else:
            console.print(f"starting the service from {args.config} ...")
            service = start_service(args.config)
            url = service.base_url
            console.print(f"service up at {url} in {service.startup_s:.0f} s")
        cmd = locust_command(args, url, run_dir, extra)
        (run_dir / "command.txt").write_text(shlex.join(cmd) + "\n")
        console.print(f"[dim]{shlex.join(cmd)}[/dim]", soft_wrap=True)
        rc = run_locust(cmd, run_dir, plan, timeout_s=total + args.timeout_s + 120)
        console.print(f"Locust exited with {rc}; its output is in {run_dir / 'locust.log'}")
    finally:
        if service is not None:
            console.print("stopping the service ...")
            service.stop()
            shutil.copy(service.log, run_dir / "serve.log")

    if not (run_dir / "requests.jsonl").exists():
        console.print(f"[red]no request log: see {run_dir / 'locust.log'}[/red]")
        return rc or 1
    summary = report(run_dir)
    return rc if rc else (0 if summary["requests_logged"] else 1)


if __name__ == "__main__":
    sys.exit(main())
