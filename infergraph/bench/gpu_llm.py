"""GPU numbers for the LLM engine against Hugging Face `generate`, one command, one device run.

Issue #15 part 3 and #16's LLM part. Nothing travels but this repository: the model is a
Llama-family ~1.1B model built from a config with RANDOM weights (speed only; its text is noise) and
the prompts are random token ids, so no tokenizer or weights are needed. On the GPU machine (no Ray,
pydantic or MLflow):

    python3 -m infergraph.bench.gpu_llm --gpus 2 --out-dir $OUT

One GPU (GPU 0), in process:

- **check**: the engine's packed path (chunked prefill, a mixed step, a graphed decode step) against
  transformers' own forward of the same weights: relative error of the logits and argmax agreement.
- **engine**: `LLMEngine` (continuous batching, packed varlen attention, CUDA graphs for decode-only
  steps) with 16 / 64 / 256 closed-loop streams, each sending `--requests-per-stream` requests back
  to back; prompts of 128-512 random tokens, `max_tokens` 128, greedy, EOS ignored (fixed lengths).
  Output tokens/s, time to first token (TTFT, from the request's send) p50 / p99.
- **hf**: `model.generate` (transformers, SDPA, bf16) over static batches of the same sizes and the
  same prompts, left-padded; TTFT = the batch's prefill plus first step (when the streamer sees the
  first new tokens).
- **engine-eager**: the engine without CUDA graphs (a lever).

`--gpus 2` (issue #16): one engine process per GPU, pinned with CUDA_VISIBLE_DEVICES (spawned); this
process plays the router (alternating, as least-time routing does with equal replicas). Closed loop
at 256 streams per GPU (tokens/s with 1 and 2 GPUs), then open-loop Poisson arrivals at the same
offered load for 1 and 2 GPUs: TTFT p50 / p99 from each request's scheduled arrival.

JSON lines, a log and a plot go to `--out-dir`; the table is printed last.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import multiprocessing as mp
import os
import platform
import tempfile
import time
import traceback
from collections.abc import Sequence
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import numpy as np

from infergraph.bench.gpu_runtime import log  # one timestamped progress line format

SIZES = (16, 64, 256)
MAX_TOKENS = 128
PROMPT_MIN, PROMPT_MAX = 128, 512
WEIGHTS_NOTE = "RANDOM weights (built from a config; speed only, the generated text is noise)"


# --- the model ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class ModelSize:
    vocab: int = 32000
    hidden: int = 2048
    layers: int = 16
    heads: int = 32
    kv_heads: int = 8
    intermediate: int = 8192
    max_positions: int = 2048

    def params(self) -> int:
        head_dim = self.hidden // self.heads
        attn = self.hidden * head_dim * (2 * self.heads + 2 * self.kv_heads)
        mlp = 3 * self.hidden * self.intermediate
        return self.layers * (attn + mlp + 2 * self.hidden) + 2 * self.vocab * self.hidden + self.hidden


TINY = ModelSize(vocab=512, hidden=64, layers=2, heads=4, kv_heads=2, intermediate=128, max_positions=1024)


def build_models(
    size: ModelSize, device: str, dtype: Any, folder: Path, seed: int = 0, packed: bool | None = None
) -> tuple[Any, Any]:
    """(transformers `LlamaForCausalLM` with random weights, `LlamaPaged` over the same tensors).
    The config goes to `folder` (LlamaPaged and its RoPE tables read it from there). `packed`: the
    engine's packed path (default: on a GPU only; True on a CPU runs it with reference attention)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from infergraph.runtimes.llm.model import LlamaPaged

    config = LlamaConfig(
        vocab_size=size.vocab,
        hidden_size=size.hidden,
        intermediate_size=size.intermediate,
        num_hidden_layers=size.layers,
        num_attention_heads=size.heads,
        num_key_value_heads=size.kv_heads,
        max_position_embeddings=size.max_positions,
        rms_norm_eps=1e-5,
        tie_word_embeddings=False,
        bos_token_id=None,
        eos_token_id=None,  # nothing ends early: every request runs to max_tokens
        pad_token_id=0,
        attn_implementation="sdpa",
    )
    torch.manual_seed(seed)
    before = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            hf = LlamaForCausalLM(config)
    finally:
        torch.set_default_dtype(before)
    hf = hf.to(dtype).eval()
    config.save_pretrained(folder)
    precision = {torch.float32: "fp32", torch.bfloat16: "bf16"}[dtype]
    paged = LlamaPaged(folder, precision, device=device, state_dict=hf.state_dict(), packed=packed)
    return hf, paged


class _NullDecoder:
    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
        return ""


class NullTokenizer:
    """Random token ids need no text: the engine's detokenizer gets an empty string back."""

    backend_tokenizer = _NullDecoder()
    eos_token_id = None


def make_engine(
    paged: Any, max_running: int, max_batch_tokens: int, kv_tokens: int, block_size: int = 16
) -> Any:
    from infergraph.runtimes.llm.engine import LLMEngine
    from infergraph.runtimes.llm.model import KVPool
    from infergraph.runtimes.llm.scheduler import Scheduler

    blocks = -(-kv_tokens // block_size)
    kv = KVPool(paged.shape, blocks, block_size, paged.dtype, paged.device)
    scheduler = Scheduler(blocks, block_size, max_batch_tokens, max_running, mode="continuous")
    return LLMEngine(paged, kv, NullTokenizer(), scheduler, paged.max_positions, eos_ids=set())


def prompts(n: int, vocab: int, seed: int, lo: int = PROMPT_MIN, hi: int = PROMPT_MAX) -> list[list[int]]:
    rng = np.random.default_rng(seed)
    return [rng.integers(1, vocab, int(rng.integers(lo, hi + 1))).tolist() for _ in range(n)]


def pct(xs: Sequence[float], q: float) -> float:
    return float(np.percentile(np.asarray(xs, dtype=float), q)) if len(xs) else float("nan")


# --- correctness against transformers -------------------------------------------------------------
def check_against_hf(hf: Any, paged: Any, vocab: int, seed: int = 1) -> dict[str, Any]:
    """Logits of the engine's model path against transformers' forward over the same weights.

    Sequence A (300 tokens) is prefilled in two chunks (128, then 172 together with all of B's 37
    tokens: a mixed step), then A and B decode one token each (a decode-only step: the graph path on
    a GPU). Each step's logits are compared with a full forward of transformers on the same tokens."""
    import torch

    from infergraph.runtimes.llm.model import KVPool, SeqInput

    kv = KVPool(paged.shape, 64, 16, paged.dtype, paged.device)
    a, b = prompts(2, vocab, seed, 300, 300)[0], prompts(1, vocab, seed + 1, 37, 37)[0]
    table_a, table_b = list(range(0, 24)), list(range(24, 48))

    def reference(seqs: list[list[int]]) -> torch.Tensor:
        with torch.inference_mode():
            return torch.stack(
                [hf(torch.tensor([s], device=paged.device)).logits[0, -1].float() for s in seqs]
            )

    def compare(got: torch.Tensor, ref: torch.Tensor) -> dict[str, float]:
        err = float((got.float() - ref).norm() / ref.norm())
        agree = float((got.argmax(-1) == ref.argmax(-1)).float().mean())
        return {"rel_err": float(f"{err:.3g}"), "argmax_agree": agree}

    paged.compute([SeqInput(a[:128], 0, table_a, False)], kv)
    mixed = paged.compute([SeqInput(a[128:], 128, table_a, True), SeqInput(b, 0, table_b, True)], kv)
    ref_prefill = reference([a, b])
    nxt = ref_prefill.argmax(-1).tolist()
    steps_before = dict(paged.counters)
    decode = paged.compute(
        [SeqInput([nxt[0]], 300, table_a, True), SeqInput([nxt[1]], 37, table_b, True)], kv
    )
    graphed = paged.counters["graph_steps"] > steps_before["graph_steps"]
    ref_decode = reference([[*a, nxt[0]], [*b, nxt[1]]])
    return {
        "prefill_chunked_mixed": compare(mixed, ref_prefill),
        "decode": {**compare(decode, ref_decode), "graph": graphed},
    }


# --- the engine, closed loop ----------------------------------------------------------------------
async def closed_loop(engine: Any, work: list[list[int]], streams: int, max_tokens: int) -> dict[str, Any]:
    """`streams` clients, each sending its next request when the previous one has finished."""
    from infergraph.runtimes.llm.sampling import SamplingParams

    jobs = iter(enumerate(work))
    ttft: list[float] = []
    tpot: list[float] = []
    tokens = 0
    params = SamplingParams(max_tokens=max_tokens, temperature=0)

    async def client() -> None:
        nonlocal tokens
        for i, ids in jobs:
            sent = time.perf_counter()
            first = last = 0.0
            n = 0
            async for event in engine.generate(f"c{i}-{sent}", ids, params):
                last = time.perf_counter()
                if n == 0:
                    first = last
                n += len(event.token_ids)
            ttft.append(first - sent)
            if n > 1:
                tpot.append((last - first) / (n - 1))
            tokens += n

    before, stats0 = dict(engine.model.counters), engine.stats()
    t0 = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(streams)))
    wall = time.perf_counter() - t0
    after, stats1 = engine.model.counters, engine.stats()
    steps = max(1.0, stats1["steps"] - stats0["steps"])
    return {
        "streams": streams,
        "requests": len(ttft),
        "output_tokens": tokens,
        "prompt_tokens": sum(len(w) for w in work),
        "wall_s": round(wall, 3),
        "tokens_per_s": round(tokens / wall, 1),
        "ttft_p50_ms": round(pct(ttft, 50) * 1e3, 1),
        "ttft_p99_ms": round(pct(ttft, 99) * 1e3, 1),
        "tpot_p50_ms": round(pct(tpot, 50) * 1e3, 2),
        "graph_steps": after["graph_steps"] - before["graph_steps"],
        "eager_steps": after["eager_steps"] - before["eager_steps"],
        # model step (schedule excluded: build, forward, sampling) vs wall per step: the gap is the
        # scheduler, the event loop and the clients
        "step_ms_mean": round((stats1["step_seconds"] - stats0["step_seconds"]) / steps * 1e3, 2),
        "wall_per_step_ms": round(wall / steps * 1e3, 2),
        "preemptions": stats1["preemptions"] - stats0["preemptions"],
    }


async def open_loop(
    engine: Any, schedule: list[tuple[float, list[int]]], start_at: float, max_tokens: int
) -> dict[str, Any]:
    """Requests sent at `start_at + offset` (time.time(), shared between processes) whatever is in
    flight; TTFT from the scheduled arrival."""
    from infergraph.runtimes.llm.sampling import SamplingParams

    params = SamplingParams(max_tokens=max_tokens, temperature=0)
    ttft: list[float] = []
    lag: list[float] = []
    done: list[float] = []
    tokens = 0

    async def one(i: int, offset: float, ids: list[int]) -> None:
        nonlocal tokens
        due = start_at + offset
        await asyncio.sleep(max(0.0, due - time.time()))
        lag.append(time.time() - due)
        n = 0
        async for event in engine.generate(f"o{i}-{due}", ids, params):
            if n == 0:
                ttft.append(time.time() - due)
            n += len(event.token_ids)
        tokens += n
        done.append(time.time())

    await asyncio.gather(*(one(i, off, ids) for i, (off, ids) in enumerate(schedule)))
    return {
        "ttft": ttft,
        "tokens": tokens,
        "last_done": max(done) if done else start_at,
        "max_lag": max(lag, default=0),
    }


def engine_rows(
    engine: Any, label: str, sizes: Sequence[int], rps: int, vocab: int, max_tokens: int
) -> list[dict]:
    rows = []
    for streams in sizes:
        work = prompts(streams * rps, vocab, seed=streams)
        asyncio.run(closed_loop(engine, prompts(streams, vocab, seed=10_000 + streams), streams, max_tokens))
        row = {"row": label, **asyncio.run(closed_loop(engine, work, streams, max_tokens))}
        row["capture_s_total"] = round(engine.model.capture_s, 2)
        rows.append(row)
        log(
            f"{label:>12} x{streams:<4} {row['tokens_per_s']:9.1f} tok/s  TTFT p50 {row['ttft_p50_ms']:8.1f} "
            f"p99 {row['ttft_p99_ms']:8.1f} ms  TPOT p50 {row['tpot_p50_ms']:6.2f} ms  "
            f"steps graph/eager {row['graph_steps']}/{row['eager_steps']}, "
            f"{row['step_ms_mean']:.2f} ms model / {row['wall_per_step_ms']:.2f} ms wall per step"
        )
    return rows


# --- transformers generate, static batches --------------------------------------------------------
class _FirstTokens:
    """A `generate` streamer that notes when the first new tokens come out (the prompt comes first)."""

    def __init__(self) -> None:
        self.calls = 0
        self.at = 0.0

    def put(self, value: Any) -> None:
        self.calls += 1
        if self.calls == 2:
            self.at = time.perf_counter()

    def end(self) -> None:
        pass


def hf_static(hf: Any, work: list[list[int]], batch: int, max_tokens: int) -> dict[str, Any]:
    import torch

    ttft: list[float] = []
    tokens = 0
    t0 = time.perf_counter()
    for i in range(0, len(work), batch):
        group = work[i : i + batch]
        width = max(len(p) for p in group)
        ids = torch.zeros(len(group), width, dtype=torch.long)
        mask = torch.zeros(len(group), width, dtype=torch.long)
        for r, p in enumerate(group):  # left padding
            ids[r, width - len(p) :] = torch.tensor(p)
            mask[r, width - len(p) :] = 1
        streamer = _FirstTokens()
        start = time.perf_counter()
        with torch.inference_mode():
            out = hf.generate(
                input_ids=ids.to(hf.device),
                attention_mask=mask.to(hf.device),
                max_new_tokens=max_tokens,
                do_sample=False,
                pad_token_id=0,
                streamer=streamer,
            )
        new = out.shape[1] - width
        if new != max_tokens:
            raise RuntimeError(f"generate made {new} tokens, {max_tokens} asked")
        tokens += len(group) * new
        ttft.extend([streamer.at - start] * len(group))
    wall = time.perf_counter() - t0
    return {
        "streams": batch,
        "requests": len(work),
        "output_tokens": tokens,
        "wall_s": round(wall, 3),
        "tokens_per_s": round(tokens / wall, 1),
        "ttft_p50_ms": round(pct(ttft, 50) * 1e3, 1),
        "ttft_p99_ms": round(pct(ttft, 99) * 1e3, 1),
    }


def hf_rows(hf: Any, sizes: Sequence[int], rps: int, vocab: int, max_tokens: int) -> list[dict]:
    hf_static(hf, prompts(4, vocab, seed=99), 4, 4)  # warm-up
    rows = []
    for batch in sizes:
        row = {
            "row": "hf-generate",
            **hf_static(hf, prompts(batch * rps, vocab, seed=batch), batch, max_tokens),
        }
        rows.append(row)
        log(
            f"{'hf-generate':>12} x{batch:<4} {row['tokens_per_s']:9.1f} tok/s  "
            f"TTFT p50 {row['ttft_p50_ms']:8.1f} p99 {row['ttft_p99_ms']:8.1f} ms"
        )
    return rows


# --- one engine process per GPU (issue #16) -------------------------------------------------------
def replica(size: ModelSize, settings: dict[str, int], inbox: Connection, outbox: Connection) -> None:
    """One GPU (whatever CUDA_VISIBLE_DEVICES names), one engine; commands over a pipe."""
    try:
        import torch

        assert torch.cuda.device_count() == 1, os.environ.get("CUDA_VISIBLE_DEVICES")
        t0 = time.perf_counter()
        with tempfile.TemporaryDirectory() as folder:
            hf, paged = build_models(size, "cuda", torch.bfloat16, Path(folder))
        del hf
        engine = make_engine(
            paged, settings["max_running"], settings["max_batch_tokens"], settings["kv_tokens"]
        )
        warm = prompts(settings["warm"], size.vocab, seed=7)
        asyncio.run(closed_loop(engine, warm, len(warm), settings["max_tokens"]))
        outbox.send(
            ("ready", {"gpu": os.environ.get("CUDA_VISIBLE_DEVICES"), "start_s": time.perf_counter() - t0})
        )
        while True:
            cmd = inbox.recv()
            if cmd[0] == "stop":
                return
            start_at = cmd[1]
            time.sleep(max(0.0, start_at - time.time()))
            if cmd[0] == "closed":
                _, _, work, streams = cmd
                outbox.send(("done", asyncio.run(closed_loop(engine, work, streams, settings["max_tokens"]))))
            elif cmd[0] == "open":
                outbox.send(
                    ("done", asyncio.run(open_loop(engine, cmd[2], start_at, settings["max_tokens"])))
                )
    except BaseException:  # noqa: BLE001 - reported to the parent, which stops the phase
        outbox.send(("error", traceback.format_exc()))


class Replicas:
    def __init__(self, gpus: int, size: ModelSize, settings: dict[str, int]) -> None:
        ctx = mp.get_context("spawn")
        self.procs, self.inboxes, self.outboxes = [], [], []
        saved = os.environ.get("CUDA_VISIBLE_DEVICES")
        try:
            for gpu in range(gpus):
                recv_cmd, send_cmd = ctx.Pipe(duplex=False)
                recv_res, send_res = ctx.Pipe(duplex=False)
                os.environ["CUDA_VISIBLE_DEVICES"] = str(gpu)  # the child inherits this at spawn
                proc = ctx.Process(target=replica, args=(size, settings, recv_cmd, send_res), daemon=True)
                proc.start()
                self.procs.append(proc)
                self.inboxes.append(send_cmd)
                self.outboxes.append(recv_res)
        finally:
            if saved is None:
                os.environ.pop("CUDA_VISIBLE_DEVICES", None)
            else:
                os.environ["CUDA_VISIBLE_DEVICES"] = saved
        self.ready = [self._answer(i) for i in range(gpus)]

    def _answer(self, i: int, timeout: float = 300) -> Any:
        if not self.outboxes[i].poll(timeout):
            raise TimeoutError(f"replica {i} did not answer in {timeout} s")
        kind, value = self.outboxes[i].recv()
        if kind == "error":
            raise RuntimeError(f"replica {i}:\n{value}")
        return value

    def run(self, commands: dict[int, tuple[Any, ...]]) -> dict[int, Any]:
        for i, cmd in commands.items():
            self.inboxes[i].send(cmd)
        return {i: self._answer(i) for i in commands}

    def close(self) -> None:
        for box in self.inboxes:
            with contextlib.suppress(OSError):
                box.send(("stop",))
        for proc in self.procs:
            proc.join(timeout=20)
            if proc.is_alive():
                proc.terminate()


def scaling(args: argparse.Namespace, size: ModelSize, settings: dict[str, int]) -> list[dict]:
    rows: list[dict] = []
    reps = Replicas(args.gpus, size, settings)
    try:
        for r in reps.ready:
            log(f"replica on GPU {r['gpu']} ready in {r['start_s']:.1f} s")
        streams = args.scaling_streams
        per = streams * args.requests_per_stream
        # closed loop, `streams` per GPU: capacity with 1 and with all GPUs
        one_rate = 0.0
        for gpus in (1, args.gpus):
            start_at = time.time() + 1.0
            cmds: dict[int, tuple[Any, ...]] = {
                i: ("closed", start_at, prompts(per, size.vocab, seed=500 + i), streams) for i in range(gpus)
            }
            res = reps.run(cmds)
            tokens = sum(r["output_tokens"] for r in res.values())
            wall = max(r["wall_s"] for r in res.values())
            rate = tokens / wall
            one_rate = one_rate or rate
            row = {
                "row": "scaling-closed",
                "gpus": gpus,
                "streams": streams * gpus,
                "tokens_per_s": round(rate, 1),
                "x_1gpu": round(rate / one_rate, 3),
                "per_gpu_tokens_per_s": [r["tokens_per_s"] for r in res.values()],
                "ttft_p99_ms": max(r["ttft_p99_ms"] for r in res.values()),
            }
            rows.append(row)
            log(
                f"closed loop, {gpus} GPU(s), {streams} streams each: {rate:,.0f} tok/s "
                f"({row['x_1gpu']:.2f}x)"
            )
        # open loop: the same Poisson arrivals for 1 GPU and for all GPUs (alternating)
        capacity = one_rate / settings["max_tokens"]  # requests/s one GPU completes, closed loop
        for load in args.loads:
            rate = load * capacity
            rng = np.random.default_rng(int(load * 1000))
            n = int(rate * args.open_seconds)
            offsets = np.cumsum(rng.exponential(1 / rate, n)).tolist()
            work = prompts(n, size.vocab, seed=900 + int(load * 100))
            schedule = list(zip(offsets, work, strict=True))
            for gpus in (1, args.gpus):
                start_at = time.time() + 1.5
                cmds = {i: ("open", start_at, schedule[i::gpus]) for i in range(gpus)}  # alternating
                res = reps.run(cmds)
                ttft = [t for r in res.values() for t in r["ttft"]]
                tokens = sum(r["tokens"] for r in res.values())
                span = max(r["last_done"] for r in res.values()) - start_at
                row = {
                    "row": "scaling-open",
                    "gpus": gpus,
                    "load_x_1gpu_capacity": load,
                    "offered_req_per_s": round(rate, 1),
                    "offered_tokens_per_s": round(rate * settings["max_tokens"], 1),
                    "requests": len(ttft),
                    "tokens_per_s": round(tokens / span, 1),
                    "ttft_p50_ms": round(pct(ttft, 50) * 1e3, 1),
                    "ttft_p99_ms": round(pct(ttft, 99) * 1e3, 1),
                    "max_send_lag_ms": round(max(r["max_lag"] for r in res.values()) * 1e3, 1),
                }
                rows.append(row)
                log(
                    f"open loop {rate:6.1f} req/s ({load:.2f}x one GPU), {gpus} GPU(s): "
                    f"{row['tokens_per_s']:,.0f} tok/s, "
                    f"TTFT p50 {row['ttft_p50_ms']:.0f} p99 {row['ttft_p99_ms']:.0f} ms"
                )
    finally:
        reps.close()
    return rows


# --- report ---------------------------------------------------------------------------------------
def table(rows: list[dict], bar: float) -> str:
    by = {(r["row"], r.get("streams")): r for r in rows}
    nan = float("nan")
    lines = [
        "| streams | engine tok/s | HF generate tok/s | x HF | engine TTFT p50 / p99 ms "
        "| HF TTFT p50 / p99 ms | engine, no graphs tok/s | bar |",
        "|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for n in sorted({r["streams"] for r in rows if r["row"] == "engine"}):
        e, h, g = by.get(("engine", n)), by.get(("hf-generate", n)), by.get(("engine-eager", n))
        if not e:
            continue
        x = e["tokens_per_s"] / h["tokens_per_s"] if h else float("nan")
        verdict = (f">= {bar:g}x: " + ("met" if x >= bar else "NOT met")) if n == 64 else ""
        lines.append(
            f"| {n} | {e['tokens_per_s']:,.0f} | {h['tokens_per_s'] if h else float('nan'):,.0f} | {x:.2f} | "
            f"{e['ttft_p50_ms']:,.0f} / {e['ttft_p99_ms']:,.0f} | "
            f"{(h or {}).get('ttft_p50_ms', nan):,.0f} / {(h or {}).get('ttft_p99_ms', nan):,.0f} | "
            f"{g['tokens_per_s'] if g else float('nan'):,.0f} | {verdict} |"
        )
    closed = [r for r in rows if r["row"] == "scaling-closed"]
    if closed:
        lines += ["", "| GPUs | streams | tok/s | x 1 GPU |", "|---:|---:|---:|---:|"]
        lines += [
            f"| {r['gpus']} | {r['streams']} | {r['tokens_per_s']:,.0f} | {r['x_1gpu']:.2f} |" for r in closed
        ]
    opened = [r for r in rows if r["row"] == "scaling-open"]
    if opened:
        lines += [
            "",
            "| offered req/s (x one GPU) | GPUs | tok/s | TTFT p50 / p99 ms |",
            "|---:|---:|---:|---:|",
        ]
        lines += [
            f"| {r['offered_req_per_s']} ({r['load_x_1gpu_capacity']}x) | {r['gpus']} | "
            f"{r['tokens_per_s']:,.0f} | {r['ttft_p50_ms']:,.0f} / {r['ttft_p99_ms']:,.0f} |"
            for r in opened
        ]
    return "\n".join(lines)


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    labels = [
        ("engine", "engine (continuous, graphs)"),
        ("engine-eager", "engine, no graphs"),
        ("hf-generate", "HF generate, static"),
    ]
    width = 0.27
    for k, (name, label) in enumerate(labels):
        xs = [r for r in rows if r["row"] == name]
        pos = [SIZES.index(r["streams"]) + (k - 1) * width for r in xs if r["streams"] in SIZES]
        ax1.bar(pos, [r["tokens_per_s"] for r in xs if r["streams"] in SIZES], width, label=label)
        if name != "engine-eager":
            ax2.bar(pos, [r["ttft_p99_ms"] for r in xs if r["streams"] in SIZES], width, label=label)
    for ax, title in ((ax1, "output tokens/s"), (ax2, "TTFT p99 (ms, log)")):
        ax.set_xticks(range(len(SIZES)), [str(s) for s in SIZES])
        ax.set_xlabel("concurrent streams / batch size")
        ax.set_title(title)
    if any(r.get("ttft_p99_ms", 0) > 0 for r in rows if r["row"] in ("engine", "hf-generate")):
        ax2.set_yscale("log")
    ax1.legend(fontsize=8)
    fig.suptitle("LLM engine vs HF generate, ~1.1B Llama (random weights), bf16, one H200")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


# --- main -----------------------------------------------------------------------------------------
def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out-dir", type=Path, default=Path("results/gpu"))
    ap.add_argument("--gpus", type=int, default=1, help="2: also one engine process per GPU (issue #16)")
    ap.add_argument("--sizes", type=int, nargs="+", default=list(SIZES))
    ap.add_argument("--requests-per-stream", type=int, default=3)
    ap.add_argument("--max-tokens", type=int, default=MAX_TOKENS)
    ap.add_argument("--max-batch-tokens", type=int, default=2048)
    ap.add_argument("--kv-tokens", type=int, default=400_000, help="KV pool size in tokens (32 KiB each)")
    ap.add_argument("--scaling-streams", type=int, default=256, help="closed-loop streams per GPU")
    ap.add_argument("--loads", type=float, nargs="+", default=[0.6, 1.3], help="x one GPU's capacity")
    ap.add_argument("--open-seconds", type=float, default=8.0)
    ap.add_argument("--skip", nargs="*", default=[], choices=["check", "engine", "hf", "eager", "scaling"])
    ap.add_argument("--budget-s", type=float, default=480, help="wall seconds the run should stay within")
    ap.add_argument("--tiny", action="store_true", help="a tiny model (smoke test of the script)")
    ap.add_argument("--device", default="cuda")
    args = ap.parse_args(argv)

    import torch

    args.out_dir.mkdir(parents=True, exist_ok=True)
    jsonl = args.out_dir / "llm.jsonl"
    jsonl.write_text("")
    rows: list[dict] = []

    def emit(row: dict) -> None:
        rows.append(row)
        with jsonl.open("a") as f:
            f.write(json.dumps(row) + "\n")

    size = TINY if args.tiny else ModelSize()
    dtype = torch.bfloat16 if args.device == "cuda" else torch.float32
    meta = {
        "row": "meta",
        "weights": WEIGHTS_NOTE,
        "model": {**size.__dict__, "params": size.params(), "dtype": str(dtype)},
        "workload": {
            "prompt_tokens": [PROMPT_MIN, PROMPT_MAX],
            "max_tokens": args.max_tokens,
            "greedy": True,
            "eos": "ignored",
            "requests_per_stream": args.requests_per_stream,
        },
        "engine": {"max_batch_tokens": args.max_batch_tokens, "kv_tokens": args.kv_tokens, "block_size": 16},
        "python": platform.python_version(),
        "torch": torch.__version__,
        "gpus": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())],
    }
    try:
        import transformers

        meta["transformers"] = transformers.__version__
    except ImportError:
        pass
    emit(meta)
    log(f"{WEIGHTS_NOTE}: Llama {size.params() / 1e9:.2f}B params, {dtype}; GPUs {meta['gpus']}")
    sizes = tuple(args.sizes)
    bar = 3.0
    t_start = time.perf_counter()
    with tempfile.TemporaryDirectory() as folder:
        hf, paged = build_models(size, args.device, dtype, Path(folder), packed=True if args.tiny else None)
    log(f"models built in {time.perf_counter() - t_start:.1f} s")
    if "check" not in args.skip:
        try:
            res = check_against_hf(hf, paged, size.vocab)
            emit({"row": "check", **res})
            log(f"check against transformers: {res}")
        except Exception:  # noqa: BLE001 - report and go on with the timings
            log("check FAILED:\n" + traceback.format_exc())
            emit({"row": "check", "error": traceback.format_exc()})
    max_running = max(sizes)
    engine = make_engine(paged, max_running, args.max_batch_tokens, args.kv_tokens)
    if "engine" not in args.skip:
        try:
            for row in engine_rows(
                engine, "engine", sizes, args.requests_per_stream, size.vocab, args.max_tokens
            ):
                emit(row)
        except Exception:  # noqa: BLE001 - a failed graph path must still leave the eager numbers
            log("engine FAILED (graphs off from here):\n" + traceback.format_exc())
            paged.graphs = False
            engine = make_engine(paged, max_running, args.max_batch_tokens, args.kv_tokens)
    if "hf" not in args.skip:
        try:
            for row in hf_rows(hf, sizes, args.requests_per_stream, size.vocab, args.max_tokens):
                emit(row)
        except Exception:  # noqa: BLE001
            log("hf FAILED:\n" + traceback.format_exc())
    over = time.perf_counter() - t_start > args.budget_s / 2
    if over and args.gpus > 1:
        log(
            f"past half of --budget-s {args.budget_s:g}: "
            "the no-graphs lever is skipped to leave time for scaling"
        )
    if "eager" not in args.skip and not over:
        graphs = paged.graphs
        paged.graphs = False
        for row in engine_rows(engine, "engine-eager", sizes, 2, size.vocab, args.max_tokens):
            emit(row)
        paged.graphs = graphs
    log(
        f"single-GPU part done at {time.perf_counter() - t_start:.0f} s; graphs captured {paged.counters}, "
        f"{paged.capture_s:.2f} s capturing"
    )
    del engine, hf, paged
    if args.device == "cuda":
        torch.cuda.empty_cache()
    if args.gpus > 1 and "scaling" not in args.skip:
        settings = {
            "max_running": args.scaling_streams,
            "max_batch_tokens": args.max_batch_tokens,
            "kv_tokens": args.kv_tokens,
            "max_tokens": args.max_tokens,
            "warm": args.scaling_streams,
        }
        try:
            for row in scaling(args, size, settings):
                emit(row)
        except Exception:  # noqa: BLE001
            log("scaling FAILED:\n" + traceback.format_exc())
    try:
        plot(rows, args.out_dir / "llm.png")
    except Exception:  # noqa: BLE001
        log("plot failed:\n" + traceback.format_exc())
    text = table(rows, bar)
    (args.out_dir / "llm-table.md").write_text(text + "\n")
    log(f"done in {time.perf_counter() - t_start:.0f} s; {jsonl}")
    print(f"\n{WEIGHTS_NOTE}; ~{size.params() / 1e9:.2f}B Llama, {dtype}\n{text}", flush=True)


if __name__ == "__main__":
    main()
