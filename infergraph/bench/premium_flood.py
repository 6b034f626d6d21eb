"""Premium latency under a batch-tier flood (issue "Encoders at the limit", outcome 1).

    uv run python -m infergraph.bench.premium_flood                  # ~2 min
    uv run python -m infergraph.bench.premium_flood --flood-s 60 --label after

all-MiniLM-L6-v2 behind the router, configs/serve.yaml otherwise unchanged. Three phases:

- idle: premium single sentences alone (Poisson, `--premium-rps`, default 8/s);
- flood: the same premium stream while `--batch-clients` (24) batch-tier clients send 32-sentence
  lists back to back (about six times what the machine embeds) and `--standard-clients` (2)
  standard-tier clients send 4-sentence lists back to back. A client told 429/503 waits the
  Retry-After it got (at least 50 ms), as a well-behaved client does;
- flood alone, without premium: the throughput the flood gets when nobody outranks it.

Reported per phase and tier: answered, refused (by status), p50/p99/max latency of answered
requests, and sentences/s answered. The bar: premium p99 <= 150 ms and no premium refusal under the
flood, standard and batch still answered (no starvation), and total sentences/s under the flood not
lower than the flood alone. Writes results/qos/premium_flood.json (one line per run appended to
premium_flood.jsonl, with `--label`).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import orjson
import yaml
from rich.console import Console
from rich.table import Table

from infergraph.corpus import load_corpus
from infergraph.paths import PROJECT_ROOT
from infergraph.testing.service import serving_only, start_service

MODEL = "all-MiniLM-L6-v2"
KEYS = {"premium": "sk-ig-demo-premium", "standard": "sk-ig-demo-standard", "batch": "sk-ig-demo-batch"}
console = Console()


@dataclass
class Tally:
    """What one tier got inside the measured window."""

    latencies_s: list[float] = field(default_factory=list)
    sentences: int = 0
    refused: Counter[str] = field(default_factory=Counter)

    def row(self, seconds: float) -> dict[str, Any]:
        lat = np.array(self.latencies_s) * 1000
        pct = (lambda p: round(float(np.percentile(lat, p)), 1)) if lat.size else (lambda p: None)
        return {
            "answered": int(lat.size),
            "refused": dict(self.refused),
            "p50_ms": pct(50),
            "p99_ms": pct(99),
            "max_ms": round(float(lat.max()), 1) if lat.size else None,
            "sentences_per_s": round(self.sentences / seconds, 1),
        }


class Window:
    """Counts only what is sent after `open()` and answered before `close()`."""

    def __init__(self) -> None:
        self.opened = self.closed = float("inf")
        self.tallies: dict[str, Tally] = {tier: Tally() for tier in KEYS}

    def open(self) -> None:
        self.opened = time.perf_counter()

    def close(self) -> float:
        self.closed = time.perf_counter()
        return self.closed - self.opened

    def record(self, tier: str, sent: float, status: int, sentences: int, retry_after: float) -> None:
        done = time.perf_counter()
        if not (self.opened <= sent and done <= self.closed):
            return
        tally = self.tallies[tier]
        if status == 200:
            tally.latencies_s.append(done - sent)
            tally.sentences += sentences
        else:
            tally.refused[str(status)] += 1


async def post(session: aiohttp.ClientSession, url: str, tier: str, texts: list[str]) -> tuple[int, float]:
    """(status, Retry-After seconds); status 0 when no HTTP answer came."""
    body = orjson.dumps({"model": MODEL, "input": texts if len(texts) > 1 else texts[0]})
    headers = {"Authorization": f"Bearer {KEYS[tier]}", "Content-Type": "application/json"}
    try:
        async with session.post(url, data=body, headers=headers) as r:
            await r.read()
            return r.status, float(r.headers.get("Retry-After", 0) or 0)
    except (aiohttp.ClientError, TimeoutError):
        return 0, 0.0


async def closed_loop_client(
    session: aiohttp.ClientSession,
    url: str,
    tier: str,
    size: int,
    corpus: list[str],
    seed: int,
    window: Window,
    stop: asyncio.Event,
) -> None:
    rng = random.Random(seed)
    while not stop.is_set():
        texts = [corpus[rng.randrange(len(corpus))] for _ in range(size)]
        sent = time.perf_counter()
        status, retry_after = await post(session, url, tier, texts)
        window.record(tier, sent, status, size, retry_after)
        if status != 200:
            await asyncio.sleep(max(retry_after, 0.05))


async def poisson_client(
    session: aiohttp.ClientSession,
    url: str,
    rps: float,
    corpus: list[str],
    window: Window,
    stop: asyncio.Event,
) -> None:
    rng = random.Random(7)
    tasks = []

    async def one() -> None:
        sent = time.perf_counter()
        status, retry_after = await post(session, url, "premium", [corpus[rng.randrange(len(corpus))]])
        window.record("premium", sent, status, 1, retry_after)

    while not stop.is_set():
        tasks.append(asyncio.create_task(one()))
        await asyncio.sleep(rng.expovariate(rps))
    await asyncio.gather(*tasks)


async def phase(
    url: str, args: argparse.Namespace, premium: bool, flood: bool, seconds: float
) -> dict[str, Any]:
    corpus, window, stop = load_corpus(), Window(), asyncio.Event()
    timeout = aiohttp.ClientTimeout(total=60)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0), timeout=timeout) as session:
        tasks = []
        if premium:
            tasks.append(poisson_client(session, url, args.premium_rps, corpus, window, stop))
        if flood:
            tasks += [
                closed_loop_client(session, url, "batch", args.batch_size, corpus, i, window, stop)
                for i in range(args.batch_clients)
            ]
            tasks += [
                closed_loop_client(
                    session, url, "standard", args.standard_size, corpus, 100 + i, window, stop
                )
                for i in range(args.standard_clients)
            ]
        running = [asyncio.create_task(t) for t in tasks]
        await asyncio.sleep(args.warmup_s)
        window.open()
        await asyncio.sleep(seconds)
        elapsed = window.close()
        stop.set()
        await asyncio.gather(*running)
    rows: dict[str, Any] = {tier: t.row(elapsed) for tier, t in window.tallies.items()}
    rows["total_sentences_per_s"] = round(sum(t.sentences for t in window.tallies.values()) / elapsed, 1)
    return rows


def verdict(result: dict[str, Any]) -> list[str]:
    flood, alone = result["flood"], result["flood_alone"]
    p = flood["premium"]
    lines = [
        f"premium p99 under flood {p['p99_ms']} ms (bar <= 150): "
        + ("met" if (p["p99_ms"] or 1e9) <= 150 else "NOT met"),
        f"premium refused under flood: {sum(p['refused'].values())} (bar 0)",
        f"standard answered {flood['standard']['answered']}, batch answered {flood['batch']['answered']} "
        "(bar: both > 0)",
        f"total sentences/s: {flood['total_sentences_per_s']} with premium vs "
        f"{alone['total_sentences_per_s']} flood alone",
    ]
    return lines


def table(result: dict[str, Any]) -> Table:
    t = Table(title=f"Premium under a batch flood ({result['label']})")
    for h in ("phase", "tier", "answered", "refused", "p50 ms", "p99 ms", "max ms", "sentences/s"):
        t.add_column(h, justify="left" if h in ("phase", "tier", "refused") else "right")
    for name in ("idle", "flood", "flood_alone"):
        for tier in KEYS:
            r = result[name][tier]
            if not r["answered"] and not r["refused"]:
                continue
            t.add_row(
                name,
                tier,
                str(r["answered"]),
                json.dumps(r["refused"]) if r["refused"] else "",
                str(r["p50_ms"]),
                str(r["p99_ms"]),
                str(r["max_ms"]),
                str(r["sentences_per_s"]),
            )
    return t


def config(workdir: Path) -> Path:
    path = workdir / "serve.yaml"
    path.write_text(yaml.safe_dump(serving_only([MODEL])))
    return path


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--url", help="a running service (default: start one)")
    ap.add_argument("--label", default="infergraph")
    ap.add_argument("--premium-rps", type=float, default=8.0)
    ap.add_argument("--batch-clients", type=int, default=24)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--standard-clients", type=int, default=2)
    ap.add_argument("--standard-size", type=int, default=4)
    ap.add_argument("--idle-s", type=float, default=15.0)
    ap.add_argument("--flood-s", type=float, default=45.0)
    ap.add_argument("--warmup-s", type=float, default=5.0)
    ap.add_argument("--out", default=str(PROJECT_ROOT / "results" / "qos"))
    args = ap.parse_args(argv)
    service = None
    if args.url is None:
        service = start_service(config(Path(tempfile.mkdtemp(prefix="ig-flood-"))))
        args.url = service.base_url
    url = f"{args.url}/v1/embeddings"
    try:
        settings = {k: v for k, v in vars(args).items() if k != "url"}
        result: dict[str, Any] = {"label": args.label, "settings": settings}
        console.print("[bold]idle[/]: premium alone")
        result["idle"] = asyncio.run(phase(url, args, premium=True, flood=False, seconds=args.idle_s))
        console.print("[bold]flood[/]: premium + standard + batch")
        result["flood"] = asyncio.run(phase(url, args, premium=True, flood=True, seconds=args.flood_s))
        console.print("[bold]flood alone[/]: standard + batch")
        result["flood_alone"] = asyncio.run(phase(url, args, premium=False, flood=True, seconds=args.flood_s))
    finally:
        if service is not None:
            service.stop()
    result["verdict"] = verdict(result)
    result["generated"] = time.strftime("%Y-%m-%d %H:%M:%S")
    console.print(table(result))
    for line in result["verdict"]:
        console.print(f"- {line}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "premium_flood.json").write_text(json.dumps(result, indent=2))
    with (out / "premium_flood.jsonl").open("a") as f:
        f.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        main()
