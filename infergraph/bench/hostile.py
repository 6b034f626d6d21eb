"""Hostile clients while another tenant's premium requests are measured (reliability issue, outcome 2).

    uv run python -m infergraph.bench.hostile [--phase-s 15] [--slow-bodies 1000] [--idle 2000]

all-MiniLM-L6-v2 behind the router. The victim (tenant demo-premium) sends single sentences at
`--victim-rps` (Poisson arrivals) through every phase; the attacker (tenant demo-batch, or no key)
changes per phase:

- baseline: nothing;
- slow bodies: `--slow-bodies` connections send headers with `Content-Length: 100`, then nothing;
- idle connections: `--idle` TCP connections that send nothing at all;
- huge uploads: 8 clients post 30 MiB multipart bodies to /v1/audio/transcriptions (limit 25 MiB);
- header floods: 8 clients send requests with 100 headers of 8 KiB each.

The attacker runs in its own process, so that pushing its bodies does not stall the victim's
client. It still shares the machine's cores with the service: the upload and header floods are run
twice, once against the service and once against a null front end on another port (a process that
reads a request's first 16 KiB, answers 400 and closes, as cheaply as a refusal can be). The victim
during the null run shows what the attacker's own client costs this machine; the difference is what
the service's handling costs.

Reported per phase: the victim's p50/p99 and failures, and what the attacker got (status codes,
closed connections). Bar: the victim's p99 unchanged within noise, the attacker a clear 4xx or a
closed connection. Writes results/faults/hostile.json.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import aiohttp
import numpy as np
from rich.console import Console
from rich.table import Table

from infergraph.bench.low_concurrency import minilm_only
from infergraph.paths import PROJECT_ROOT
from infergraph.testing.service import free_port, start_service

VICTIM_KEY = "sk-ig-demo-premium"
ATTACKER_KEY = "sk-ig-demo-batch"
MODEL = "all-MiniLM-L6-v2"


async def victim(url: str, rps: float, stop: asyncio.Event, out: list[tuple[float, float, int]]) -> None:
    """Poisson arrivals of single sentences; (sent, latency s, status) per request (status 0: none)."""
    headers = {"Authorization": f"Bearer {VICTIM_KEY}"}
    rng = random.Random(0)
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:

        async def one(i: int) -> None:
            sent, status = time.perf_counter(), 0
            with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                body = {"model": MODEL, "input": f"premium request {i}"}
                async with session.post(f"{url}/v1/embeddings", json=body, headers=headers) as r:
                    await r.read()
                    status = r.status
            out.append((sent, time.perf_counter() - sent, status))

        tasks, i = [], 0
        while not stop.is_set():
            tasks.append(asyncio.create_task(one(i)))
            i += 1
            await asyncio.sleep(rng.expovariate(rps))
        await asyncio.gather(*tasks)


async def answer(reader: asyncio.StreamReader) -> str:
    """`<status> <error code>` of an HTTP answer (whose code says who refused: HAProxy's
    `too_many_in_flight` or the router's `too_many_uploads`), or "closed by the server"."""
    try:
        head = (await reader.readuntil(b"\r\n\r\n")).decode(errors="replace").split("\r\n")
    except asyncio.IncompleteReadError:
        return "closed by the server"
    status = (head[0].split(" ") + ["?", "?"])[1]
    lengths = [int(h.split(":", 1)[1]) for h in head if h.lower().startswith("content-length:")]
    try:
        body = await reader.readexactly(lengths[0]) if lengths else b""
    except asyncio.IncompleteReadError:
        body = b"?"
    return f"{status} {error_code(body)}".strip()


def error_code(body: bytes) -> str:
    """The OpenAI-shaped error's code (it says who refused), "(not OpenAI-shaped)", or "" for none."""
    if not body:
        return ""
    try:
        return str(json.loads(body)["error"]["code"])
    except (ValueError, KeyError, TypeError):
        return "(not OpenAI-shaped)"


async def slow_bodies(host: str, port: int, n: int, stop: asyncio.Event, seen: Counter[str]) -> None:
    """Headers, then a body that never comes; what the server does with each connection."""

    async def one() -> None:
        try:
            reader, writer = await asyncio.open_connection(host, port)
        except OSError as exc:
            seen[f"connect failed: {type(exc).__name__}"] += 1
            return
        writer.write(
            f"POST /v1/embeddings HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {ATTACKER_KEY}\r\n"
            "Content-Type: application/json\r\nContent-Length: 100\r\n\r\n".encode()
        )
        await writer.drain()
        try:  # the server's answer (status and error code), or a close; cancelled when the phase ends
            seen[await answer(reader)] += 1
        except OSError:
            seen["closed by the server"] += 1
        finally:
            writer.close()

    tasks = [asyncio.create_task(one()) for _ in range(n)]
    await stop.wait()
    await asyncio.sleep(0.2)
    for t in tasks:
        t.cancel()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    seen["open until the phase ended"] += sum(1 for r in results if isinstance(r, asyncio.CancelledError))


async def idle_connections(host: str, port: int, n: int, stop: asyncio.Event, seen: Counter[str]) -> None:
    pairs = []
    for _ in range(n):
        try:
            pairs.append(await asyncio.open_connection(host, port))
        except OSError as exc:
            seen[f"connect failed: {type(exc).__name__}"] += 1
    seen["opened"] += len(pairs)
    await stop.wait()
    seen["closed by the server before the phase ended"] += sum(1 for reader, _ in pairs if reader.at_eof())
    for _, writer in pairs:
        writer.close()


async def flood(url: str, kind: str, stop: asyncio.Event, seen: Counter[str], clients: int = 8) -> None:
    """Huge uploads or header floods, back to back, from `clients` clients."""
    auth = {"Authorization": f"Bearer {ATTACKER_KEY}"}
    big = b"\0" * (30 * 1024 * 1024)
    timeout = aiohttp.ClientTimeout(total=30)

    async def client() -> None:
        async with aiohttp.ClientSession(timeout=timeout) as session:
            while not stop.is_set():
                try:
                    if kind == "upload":
                        form = aiohttp.FormData()
                        form.add_field("model", "whisper-tiny.en")
                        form.add_field("file", big, filename="huge.wav", content_type="audio/wav")
                        post = session.post(f"{url}/v1/audio/transcriptions", data=form, headers=auth)
                    else:
                        headers = {**auth, **{f"X-Flood-{i}": "a" * 8192 for i in range(100)}}
                        post = session.post(
                            f"{url}/v1/embeddings", json={"model": MODEL, "input": "x"}, headers=headers
                        )
                    async with post as r:
                        seen[f"{r.status} {error_code(await r.read())}".strip()] += 1
                except (aiohttp.ClientError, TimeoutError) as exc:
                    seen[f"no answer: {type(exc).__name__}"] += 1
                    await asyncio.sleep(0.05)

    await asyncio.gather(*(client() for _ in range(clients)))


def percentiles(samples: list[tuple[float, float, int]]) -> dict[str, Any]:
    ok = [lat * 1000 for _, lat, status in samples if status == 200]
    return {
        "sent": len(samples),
        "failed": sum(1 for _, _, status in samples if status != 200),
        "p50_ms": round(float(np.percentile(ok, 50)), 1) if ok else None,
        "p99_ms": round(float(np.percentile(ok, 99)), 1) if ok else None,
    }


ATTACKS = ("slow bodies", "idle connections", "huge uploads", "header floods")
PHASES = (
    ("baseline", None, False),
    ("slow bodies", "slow bodies", False),
    ("idle connections", "idle connections", False),
    ("huge uploads", "huge uploads", False),
    ("huge uploads, null front end", "huge uploads", True),
    ("header floods", "header floods", False),
    ("header floods, null front end", "header floods", True),
    ("after", None, False),
)


async def attack(kind: str, url: str, seconds: float, slow: int, idle: int) -> Counter[str]:
    """One attack for `seconds`; what the attacker got."""
    parsed = urlparse(url)
    host, port = parsed.hostname or "127.0.0.1", parsed.port or 80
    stop, seen = asyncio.Event(), Counter[str]()
    coroutine = {
        "slow bodies": lambda: slow_bodies(host, port, slow, stop, seen),
        "idle connections": lambda: idle_connections(host, port, idle, stop, seen),
        "huge uploads": lambda: flood(url, "upload", stop, seen),
        "header floods": lambda: flood(url, "headers", stop, seen),
    }[kind]()
    task = asyncio.create_task(coroutine)
    await asyncio.sleep(seconds)
    stop.set()
    await task
    return seen


async def null_front_end(port: int) -> None:
    """Reads at most a request's first 16 KiB, answers 400 and closes: the cheapest refusal."""
    body = b'{"error": {"message": "null front end", "type": "invalid_request_error", "code": "null"}}'
    reply = b"HTTP/1.1 400 Bad Request\r\nContent-Type: application/json\r\nConnection: close\r\n"
    reply += b"Content-Length: %d\r\n\r\n%s" % (len(body), body)

    async def refuse(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError, asyncio.LimitOverrunError, asyncio.IncompleteReadError):
            await reader.readuntil(b"\r\n\r\n")
        with contextlib.suppress(OSError):
            writer.write(reply)
            await writer.drain()
        writer.close()

    server = await asyncio.start_server(refuse, "127.0.0.1", port, limit=16 * 1024, backlog=1024)
    async with server:
        await server.serve_forever()


def helper(*args: str) -> subprocess.Popen[bytes]:
    """This module in another process (attacker or null front end)."""
    command = [sys.executable, "-m", "infergraph.bench.hostile", *args]
    return subprocess.Popen(command, stdout=subprocess.PIPE)


async def run(url: str, args: argparse.Namespace) -> list[dict[str, Any]]:
    null_port = free_port()
    null = helper("--null-front-end", str(null_port))
    rows = []
    try:
        for phase, kind, against_null in PHASES:
            stop = asyncio.Event()
            samples: list[tuple[float, float, int]] = []
            attacker = None
            if kind is not None:
                target = f"http://127.0.0.1:{null_port}" if against_null else url
                sizes = ("--slow-bodies", str(args.slow_bodies), "--idle", str(args.idle))
                seconds = str(args.phase_s + 0.5)
                attacker = helper("--attack", kind, "--target", target, "--seconds", seconds, *sizes)
                assert attacker.stdout is not None
                await asyncio.to_thread(attacker.stdout.readline)  # its start-up is not the attack
            victim_task = asyncio.create_task(victim(url, args.victim_rps, stop, samples))
            await asyncio.sleep(args.phase_s)
            stop.set()
            await victim_task
            seen: dict[str, int] = {}
            if attacker is not None:
                out, _ = await asyncio.to_thread(attacker.communicate)
                seen = json.loads(out.decode().strip().splitlines()[-1])
            rows.append({"phase": phase, "victim": percentiles(samples), "attacker": seen})
            Console().print(rows[-1])
    finally:
        null.kill()
    return rows


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--phase-s", type=float, default=15.0)
    ap.add_argument("--victim-rps", type=float, default=10.0)
    ap.add_argument("--slow-bodies", type=int, default=1000)
    ap.add_argument("--idle", type=int, default=2000)
    ap.add_argument("--out", type=Path, default=PROJECT_ROOT / "results" / "faults")
    ap.add_argument("--attack", choices=ATTACKS, help=argparse.SUPPRESS)  # the attacker's process
    ap.add_argument("--target", help=argparse.SUPPRESS)
    ap.add_argument("--seconds", type=float, help=argparse.SUPPRESS)
    ap.add_argument("--null-front-end", type=int, metavar="PORT", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.null_front_end:
        asyncio.run(null_front_end(args.null_front_end))
        return
    if args.attack:
        print("ready", flush=True)  # imports done: the victim's measured window starts now
        seen = asyncio.run(attack(args.attack, args.target, args.seconds, args.slow_bodies, args.idle))
        print(json.dumps(dict(seen.most_common())))
        return
    service = start_service(minilm_only(Path(tempfile.mkdtemp(prefix="ig-hostile-"))))
    try:
        rows = asyncio.run(run(service.base_url, args))
    finally:
        service.stop()
    table = Table(title=f"premium victim at {args.victim_rps:g}/s while another tenant attacks")
    for col in ("phase", "victim sent", "failed", "p50 ms", "p99 ms", "attacker got"):
        table.add_column(col)
    for r in rows:
        v = r["victim"]
        got = ", ".join(f"{k}: {n}" for k, n in r["attacker"].items()) or "-"
        table.add_row(r["phase"], str(v["sent"]), str(v["failed"]), str(v["p50_ms"]), str(v["p99_ms"]), got)
    Console().print(table)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "hostile.json").write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
