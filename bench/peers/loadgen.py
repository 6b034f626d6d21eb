#!/usr/bin/env python3
"""Closed-loop asyncio (aiohttp) load generator for embedding HTTP servers.

One process, C concurrent workers, each sending a request, awaiting the response, then the next.
Inputs are replayed deterministically from loadtest/corpus_en.jsonl: request k (a global counter) carries
sentences [k*B, k*B+B) modulo the corpus size, so every run sends the same inputs in the same order
of issue.

Body formats (--format):
  openai : {"model": M, "input": [s1, ...]}            (OpenAI /v1/embeddings; also Infinity)
  st     : {"sentences": [s1, ...]}                    (ad-hoc)
  json-template : --template '{"inputs": $INPUT}'      ($INPUT is replaced by the JSON list)

Server-side CPU% and peak RSS: pass --pids (comma-separated) of the server's root process(es);
all their descendants are included. CPU% is percent of one core (the machine has 2: max 200%).

Prints one JSON line with the results and appends it to --out if given.
"""

import argparse
import asyncio
import contextlib
import json
import os
import time

import aiohttp

try:
    import psutil
except ImportError:  # pragma: no cover
    psutil = None

try:
    import orjson

    def jloads(b):
        return orjson.loads(b)
except ImportError:
    jloads = json.loads


# The project's frozen corpus (loadtest/corpus_en.jsonl), the same file infergraph's benchmarks replay.
CORPUS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "loadtest", "corpus_en.jsonl")


def load_corpus(path):
    with open(path) as f:
        return [json.loads(line)["text"] for line in f if line.strip()]


def pct(sorted_vals, p):
    if not sorted_vals:
        return float("nan")
    k = (len(sorted_vals) - 1) * p / 100.0
    lo = int(k)
    hi = min(lo + 1, len(sorted_vals) - 1)
    return sorted_vals[lo] + (sorted_vals[hi] - sorted_vals[lo]) * (k - lo)


class ProcWatch:
    """Samples RSS of process trees; integrates CPU time over a window."""

    def __init__(self, pids):
        self.roots = [psutil.Process(p) for p in pids] if (psutil and pids) else []
        self.peak_rss = 0
        self.cpu0 = {}
        self.cpu_dead = 0.0

    def procs(self):
        out = {}
        for r in self.roots:
            try:
                out[r.pid] = r
                for c in r.children(recursive=True):
                    out[c.pid] = c
            except psutil.Error:
                pass
        return out

    def sample_rss(self):
        tot = 0
        for p in self.procs().values():
            with contextlib.suppress(psutil.Error):
                tot += p.memory_info().rss
        self.peak_rss = max(self.peak_rss, tot)
        return tot

    def pss(self):
        """Proportional set size of the whole tree: each shared page counted once, split between its
        sharers (a sum of RSS counts a page once per process that maps it)."""
        tot = 0
        for p in self.procs().values():
            with contextlib.suppress(OSError, ValueError), open(f"/proc/{p.pid}/smaps_rollup") as f:
                tot += next(int(line.split()[1]) for line in f if line.startswith("Pss:")) * 1024
        return tot

    def cpu_snapshot(self):
        snap = {}
        for pid, p in self.procs().items():
            try:
                t = p.cpu_times()
                snap[(pid, p.create_time())] = t.user + t.system
            except psutil.Error:
                pass
        return snap

    def start(self):
        self.cpu0 = self.cpu_snapshot()
        self.peak_rss = 0
        self.sample_rss()

    def cpu_seconds(self):
        snap = self.cpu_snapshot()
        tot = 0.0
        for k, v in snap.items():
            tot += v - self.cpu0.get(k, 0.0)
        return tot


async def main_async(a):
    corpus = load_corpus(a.corpus)
    n = len(corpus)
    B = a.batch
    template = a.template

    def body_for(k):
        start = (k * B) % n
        sents = [corpus[(start + j) % n] for j in range(B)]
        if a.format == "openai":
            d = {"model": a.model, "input": sents}
            if a.encoding_format:
                d["encoding_format"] = a.encoding_format
            return json.dumps(d).encode()
        if a.format == "st":
            return json.dumps({"sentences": sents}).encode()
        return template.replace("$INPUT", json.dumps(sents)).encode()

    counter = {"k": 0}
    lat = []  # seconds, measured-window completions only
    errors = {"n": 0, "last": None}
    done = {"req": 0, "sent": 0, "bytes": 0}
    validated = {"n": 0}
    phase = {"measure": False, "stop": False}

    def count_embeddings(obj):
        if isinstance(obj, dict):
            if "data" in obj:
                return len(obj["data"]), len(obj["data"][0]["embedding"]) if obj["data"] else 0
            if "embeddings" in obj:
                return len(obj["embeddings"]), len(obj["embeddings"][0])
        if isinstance(obj, list):
            return len(obj), len(obj[0])
        return -1, -1

    timeout = aiohttp.ClientTimeout(total=a.timeout)
    conn = aiohttp.TCPConnector(limit=0, force_close=False)
    headers = {"Content-Type": "application/json"}
    async with aiohttp.ClientSession(timeout=timeout, connector=conn, headers=headers) as sess:

        async def worker():
            while not phase["stop"]:
                k = counter["k"]
                counter["k"] += 1
                body = body_for(k)
                t0 = time.perf_counter()
                try:
                    async with sess.post(a.url, data=body) as r:
                        raw = await r.read()
                        status = r.status
                except Exception as e:  # noqa
                    errors["n"] += 1
                    errors["last"] = repr(e)[:300]
                    await asyncio.sleep(0.05)
                    continue
                t1 = time.perf_counter()
                if status != 200:
                    errors["n"] += 1
                    errors["last"] = f"HTTP {status}: {raw[:300]!r}"
                    await asyncio.sleep(0.05)
                    continue
                if validated["n"] < 5 or (a.validate_every and k % a.validate_every == 0):
                    validated["n"] += 1
                    cnt, dim = count_embeddings(jloads(raw))
                    if cnt != B:
                        errors["n"] += 1
                        errors["last"] = f"expected {B} embeddings, got {cnt} (dim {dim})"
                        continue
                    validated["dim"] = dim
                if phase["measure"] and not phase["stop"]:
                    lat.append(t1 - t0)
                    done["req"] += 1
                    done["sent"] += B
                    done["bytes"] += len(raw)

        watch = ProcWatch([int(p) for p in a.pids.split(",") if p]) if a.pids else None
        me = psutil.Process() if psutil else None
        tasks = [asyncio.create_task(worker()) for _ in range(a.concurrency)]
        await asyncio.sleep(a.warmup)
        # measured window
        if watch:
            watch.start()
        if psutil:
            psutil.cpu_percent(None)
            me_t0 = me.cpu_times()
        err0 = errors["n"]
        phase["measure"] = True
        t_start = time.perf_counter()
        while time.perf_counter() - t_start < a.duration:
            await asyncio.sleep(0.25)
            if watch:
                watch.sample_rss()
        elapsed = time.perf_counter() - t_start
        phase["stop"] = True
        server_cpu_s = watch.cpu_seconds() if watch else None
        machine_cpu = psutil.cpu_percent(None) * psutil.cpu_count() if psutil else None
        if psutil:
            me_t1 = me.cpu_times()
            client_cpu_s = (me_t1.user + me_t1.system) - (me_t0.user + me_t0.system)
        # let in-flight requests finish (bounded)
        try:
            await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), timeout=a.timeout)
        except TimeoutError:
            for t in tasks:
                t.cancel()

    lat.sort()
    res = {
        "label": a.label,
        "url": a.url,
        "format": a.format,
        "batch": B,
        "concurrency": a.concurrency,
        "duration_s": round(elapsed, 2),
        "requests": done["req"],
        "sentences": done["sent"],
        "req_per_s": round(done["req"] / elapsed, 2),
        "sent_per_s": round(done["sent"] / elapsed, 1),
        "p50_ms": round(pct(lat, 50) * 1000, 1),
        "p95_ms": round(pct(lat, 95) * 1000, 1),
        "p99_ms": round(pct(lat, 99) * 1000, 1),
        "max_ms": round(lat[-1] * 1000, 1) if lat else None,
        "errors": errors["n"] - err0,
        "last_error": errors["last"],
        "dim": validated.get("dim"),
        "server_cpu_pct": round(100 * server_cpu_s / elapsed, 1) if server_cpu_s is not None else None,
        "server_peak_rss_mb": round(watch.peak_rss / 2**20, 1) if watch else None,
        "server_pss_mb": round(watch.pss() / 2**20, 1) if watch else None,
        "client_cpu_pct": round(100 * client_cpu_s / elapsed, 1) if psutil else None,
        "machine_cpu_pct": round(machine_cpu, 1) if machine_cpu is not None else None,
        "ts": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    line = json.dumps(res)
    print(line, flush=True)
    if a.out:
        with open(a.out, "a") as f:
            f.write(line + "\n")
    return res


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--url", required=True)
    ap.add_argument("--format", choices=["openai", "st", "json-template"], default="openai")
    ap.add_argument("--template", default='{"input": $INPUT}')
    ap.add_argument("--model", default="all-MiniLM-L6-v2")
    ap.add_argument("--encoding-format", default=None, help="e.g. float or base64 (openai format)")
    ap.add_argument("--batch", type=int, default=1, help="sentences per request")
    ap.add_argument("--concurrency", type=int, default=1)
    ap.add_argument("--duration", type=float, default=25.0)
    ap.add_argument("--warmup", type=float, default=5.0)
    ap.add_argument("--timeout", type=float, default=120.0)
    ap.add_argument("--corpus", default=CORPUS)
    ap.add_argument("--pids", default="", help="server root PIDs (comma-separated) for CPU%%/RSS")
    ap.add_argument("--validate-every", type=int, default=50)
    ap.add_argument("--label", default="")
    ap.add_argument("--out", default="")
    a = ap.parse_args()
    asyncio.run(main_async(a))


if __name__ == "__main__":
    main()
