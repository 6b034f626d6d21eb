"""Issue #16 on a bare multi-GPU machine: one runtime process per GPU, fed the way the router would.

Ray does not travel to the lent machine, so each replica is a process pinned to its GPU with
CUDA_VISIBLE_DEVICES and this process plays the router:

* throughput: the length-sorted corpus cut into requests of one pass (256 sentences) and routed as
  one burst by least expected wait ((outstanding + 1) x seconds per request, `LeastTimeRouter`);
  every replica then embeds its share over and over for the same window;
* latency: open-loop Poisson arrivals of 32-sentence requests at one offered load, each routed on
  arrival by least expected wait (the EWMA of latency / (requests ahead + 1), as the router keeps
  it), each replica batching what has queued up to 256 sentences per call (the replica's batcher);
  p50 / p99 from the scheduled arrival to the vectors ready in the replica.

Run through `python -m infergraph.bench.gpu_runtime run --gpus N`.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import random
import sys
import threading
import time
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import numpy as np

from infergraph.bench.gpu_runtime import log  # one timestamped progress line format

REQUEST = 32  # sentences per latency request
PER_PASS = 256
MAX_CALL = 256  # sentences a replica embeds in one call when requests have queued


# --- the replica process ----------------------------------------------------------------------------
def replica(model_dir: str, corpus: list[str], device: str, inbox: Connection, outbox: Connection) -> None:
    """One GPU (whatever CUDA_VISIBLE_DEVICES names), one `TextEncoder` over the `VarlenEngine`."""
    import torch

    from infergraph.runtimes.engines.varlen_engine import VarlenEngine
    from infergraph.runtimes.text_encoder import BatchLimits, TextEncoder
    from infergraph.runtimes.tokenizer import load_tokenizer

    if device == "cuda":
        assert torch.cuda.device_count() == 1, os.environ.get("CUDA_VISIBLE_DEVICES")
    dtype = "float16" if device == "cuda" else "float32"  # float32: the CPU smoke test of the plumbing
    tokenizer, pad_id = load_tokenizer(Path(model_dir))
    limits = BatchLimits(max_sequences=PER_PASS, max_padded_tokens=10**9)
    engine = VarlenEngine(Path(model_dir), device=device, dtype=dtype)
    encoder = TextEncoder(tokenizer, engine, 256, limits=limits, pad_id=pad_id)
    ids = encoder.tokenize(corpus)
    encoder.encode_ids(ids)
    outbox.send(("ready", os.environ.get("CUDA_VISIBLE_DEVICES")))
    while True:
        msg = inbox.recv()
        if msg[0] == "quit":
            return
        if msg[0] == "throughput":
            _, share, seconds, start_at = msg
            rows = [ids[i] for i in share]
            encoder.encode_ids(rows)
            time.sleep(max(0.0, start_at - time.monotonic()))  # all replicas start together
            done, t0 = 0, time.monotonic()
            while time.monotonic() - t0 < seconds:
                encoder.encode_ids(rows)
                done += len(rows)
            outbox.send(("throughput", done, time.monotonic() - t0))
        elif msg[0] == "serve":
            serve(encoder, ids, inbox, outbox)


def serve(encoder: Any, ids: list[list[int]], inbox: Connection, outbox: Connection) -> None:
    """Answer (request id, first sentence) messages until None: whatever has queued, up to MAX_CALL
    sentences, goes into one `encode_ids` call (what the replica's batcher does)."""
    queue: list[tuple[int, int]] = []
    while True:
        if not queue:
            inbox.poll(None)
        while inbox.poll():
            msg = inbox.recv()
            if msg is None:
                outbox.send(None)
                return
            queue.append(msg)
        take = queue[: MAX_CALL // REQUEST]
        del queue[: len(take)]
        encoder.encode_ids([row for _, start in take for row in ids[start : start + REQUEST]])
        outbox.send((time.monotonic(), [rid for rid, _ in take]))  # CLOCK_MONOTONIC: one clock per host


# --- the router (this process) ------------------------------------------------------------------
class Replicas:
    def __init__(self, model_dir: Path, gpus: int, corpus: list[str], device: str = "cuda") -> None:
        ctx = mp.get_context("spawn")
        self.procs, self.inboxes, self.outboxes = [], [], []
        saved = os.environ.get("CUDA_VISIBLE_DEVICES")
        for gpu in range(gpus):
            inbox_r, inbox_w = ctx.Pipe(duplex=False)
            outbox_r, outbox_w = ctx.Pipe(duplex=False)
            os.environ["CUDA_VISIBLE_DEVICES"] = str(gpu)  # the child inherits this at spawn
            proc = ctx.Process(
                target=replica, args=(str(model_dir), corpus, device, inbox_r, outbox_w), daemon=True
            )
            proc.start()
            self.procs.append(proc)
            self.inboxes.append(inbox_w)
            self.outboxes.append(outbox_r)
        if saved is None:
            os.environ.pop("CUDA_VISIBLE_DEVICES", None)
        else:
            os.environ["CUDA_VISIBLE_DEVICES"] = saved
        for proc, box in zip(self.procs, self.outboxes, strict=True):
            if not box.poll(240):
                self.close()
                raise RuntimeError(f"replica {proc.name} not ready after 240 s (exit code {proc.exitcode})")
            log(f"replica ready on GPU {box.recv()[1]}")

    def close(self) -> None:
        for proc, box in zip(self.procs, self.inboxes, strict=True):
            if proc.is_alive():
                box.send(("quit",))
        for proc in self.procs:
            proc.join(timeout=30)
            if proc.is_alive():
                proc.terminate()


def least_time_split(costs: list[float], replicas: int) -> list[list[int]]:
    """A burst routed by least expected wait: each request goes to the replica with the least
    (outstanding + 1) x seconds per request; nothing completes during a burst and equal replicas have
    equal seconds per request, so counts decide (ties at random, as in `rank_by_expected_wait`)."""
    rng = random.Random(0)
    counts = [0] * replicas
    shares: list[list[int]] = [[] for _ in range(replicas)]
    for k, _ in enumerate(costs):
        best = min(counts)
        r = rng.choice([i for i in range(replicas) if counts[i] == best])
        counts[r] += 1
        shares[r].append(k)
    return shares


def throughput(reps: Replicas, n: int, ids_len: list[int], seconds: float) -> dict[str, Any]:
    order = sorted(range(len(ids_len)), key=ids_len.__getitem__)
    requests = [order[s : s + PER_PASS] for s in range(0, len(order), PER_PASS)]
    shares = least_time_split([sum(ids_len[i] for i in r) for r in requests], n)
    start_at = time.monotonic() + 3.0
    for k in range(n):
        share = [i for r in shares[k] for i in requests[r]]
        reps.inboxes[k].send(("throughput", share, seconds, start_at))
    results = [reps.outboxes[k].recv() for k in range(n)]
    per = [done / elapsed for _, done, elapsed in results]
    tokens = [sum(ids_len[i] for r in shares[k] for i in requests[r]) for k in range(n)]
    return {
        "sent_per_s": round(sum(per)),
        "per_replica": [round(p) for p in per],
        "tokens_per_replica": tokens,
    }


def open_loop(
    reps: Replicas, n: int, corpus_len: int, load: float, seconds: float, warm: float
) -> dict[str, Any]:
    """Poisson arrivals of REQUEST-sentence requests at `load` sentences/s for warm + seconds;
    latency from the scheduled arrival to the vectors ready in the replica."""
    rng = np.random.default_rng(1)
    rate = load / REQUEST
    arrivals = np.cumsum(rng.exponential(1 / rate, int(rate * (warm + seconds) * 1.1) + 10))
    arrivals = arrivals[arrivals < warm + seconds]
    outstanding = [0] * n
    spr: dict[int, float] = {}
    sent: dict[int, tuple[float, int, int]] = {}
    lock = threading.Lock()
    latencies: list[float] = []
    t0 = time.monotonic() + 0.2
    measure_from = t0 + warm

    def receive(k: int) -> None:
        while (msg := reps.outboxes[k].recv()) is not None:
            finished, done = msg
            now = time.monotonic()
            with lock:
                for rid in done:
                    arrived = arrivals[rid] + t0
                    sent_at, ahead, _ = sent.pop(rid)
                    outstanding[k] -= 1
                    sample = (now - sent_at) / (ahead + 1)
                    spr[k] = sample if k not in spr else spr[k] + 0.2 * (sample - spr[k])
                    if arrived >= measure_from:  # arrival to vectors ready in the replica
                        latencies.append(finished - arrived)

    for box in reps.inboxes:
        box.send(("serve",))
    threads = [threading.Thread(target=receive, args=(k,), daemon=True) for k in range(n)]
    for t in threads:
        t.start()
    late = 0.0
    switch = sys.getswitchinterval()
    sys.setswitchinterval(1e-4)  # the receivers must not wait 5 ms for the GIL
    for rid, at in enumerate(arrivals):
        due = t0 + at
        while (now := time.monotonic()) < due:
            time.sleep(max(0.0, due - now - 2e-4) if due - now > 3e-4 else 0)
        late = max(late, now - due)
        with lock:
            default = min(spr.values()) if spr else 1.0
            order = list(range(n))
            random.shuffle(order)
            k = min(order, key=lambda r: (outstanding[r] + 1) * spr.get(r, default))
            outstanding[k] += 1
            sent[rid] = (now, outstanding[k] - 1, k)
        start = int(rng.integers(0, max(1, corpus_len - REQUEST)))
        reps.inboxes[k].send((rid, start))
    for k in range(n):
        reps.inboxes[k].send(None)
    for t in threads:
        t.join()
    sys.setswitchinterval(switch)
    ms = np.array(latencies or [float("nan")]) * 1e3
    return {
        "offered_sent_per_s": round(load),
        "requests": len(latencies),
        "p50_ms": round(float(np.percentile(ms, 50)), 3),
        "p99_ms": round(float(np.percentile(ms, 99)), 3),
        "max_dispatch_late_ms": round(late * 1e3, 3),
    }


def scaling(args: Any, corpus: list[str], single_rate: float) -> list[dict[str, Any]]:
    """Rows for 1..args.gpus replicas: throughput, then p50/p99 at the same offered loads."""
    from infergraph.runtimes.tokenizer import load_tokenizer

    tokenizer, _ = load_tokenizer(args.model_dir)
    ids_len = [len(e.ids) for e in tokenizer.encode_batch(corpus, add_special_tokens=True)]
    # Offered loads: fractions of one GPU's 256-per-pass rate, capped where one Python dispatcher
    # still keeps its schedule (about 5,000 requests/s; each row reports how late it fell).
    loads = sorted({round(min(f * single_rate, 5000 * REQUEST)) for f in (0.2, 0.5, 0.8)})
    rows: list[dict[str, Any]] = []
    for n in sorted({1, args.gpus}):
        reps = Replicas(args.model_dir, n, corpus, getattr(args, "device", "cuda"))
        try:
            row = {
                "config": "scaling",
                "gpus": n,
                "per_pass": PER_PASS,
                **throughput(reps, n, ids_len, 3 * args.seconds),
            }
            log(json.dumps(row))
            rows.append(row)
            for load in loads:
                open_loop(reps, n, len(corpus), load, 1.0, 0.5)  # graphs for the call sizes this load makes
                row = {
                    "config": "scaling-latency",
                    "gpus": n,
                    "request_sentences": REQUEST,
                    **open_loop(reps, n, len(corpus), load, 3 * args.seconds, 0.5),
                }
                log(json.dumps(row))
                rows.append(row)
        finally:
            reps.close()
    return rows


def scaling_table(rows: list[dict[str, Any]]) -> str:
    tp = {r["gpus"]: r["sent_per_s"] for r in rows if r.get("config") == "scaling" and "gpus" in r}
    lines = [f"\n{'GPUs':<6}{'sent/s @256':>12}{'x 1 GPU':>9}"]
    lines += [f"{g:<6}{v:>12}{v / tp[1]:>9.2f}" for g, v in sorted(tp.items()) if 1 in tp]
    lines.append(f"\n{'GPUs':<6}{'offered':>10}{'p50 ms':>9}{'p99 ms':>9}{'late ms':>9}")
    lines += [
        f"{r['gpus']:<6}{r['offered_sent_per_s']:>10}{r['p50_ms']:>9}{r['p99_ms']:>9}{r['max_dispatch_late_ms']:>9}"
        for r in rows
        if r.get("config") == "scaling-latency"
    ]
    lines += [f"scaling: {r['error']}" for r in rows if r.get("config") == "scaling" and "error" in r]
    return "\n".join(lines)
