"""`uv run python -m infergraph.optimize.llm`: the LLM's precisions measured, logged, registered, gated.

    uv run python -m infergraph.optimize.llm            # fp32, int8, int4, bf16 (~3 min on 2 idle cores)
    uv run python -m infergraph.optimize.llm --quick    # fp32 and int8, small samples (the test's run)
    uv run mlflow ui --backend-store-uri sqlite:///mlflow/mlflow.db

An LLM variant is a precision of the same converted weights (`LLMSpec.precision`; the engine
quantises at load, `runtimes/llm/quant.py`), so what gets registered is not a copy of the weights but
a small manifest (`llm_manifest.json`: model, precision, sha256 of the source weights from the
conversion manifest) that the serving side reads the precision from. One MLflow run per invocation
(experiment `optimize/<model>`, like the encoders'), a nested run per precision, a registry version
per precision, and the `production` alias moved by the gate below. Writes results/llm/optimize.json,
optimize.md and optimize.png.

Quality, against fp32 (the reference):

- Perplexity on real text installed offline: the Debian FAQ's English answers (gensim's Lee
  background news if the FAQ cannot be fetched), tokenised once and cut into consecutive 256-token
  windows, `windows` of them spread evenly; every token of a window but the first is scored given
  the window before it (no overlap, no BOS). All-position logits come from the engine's own forward
  pass, `LlamaPaged.forward`, asked for the logits of every row of one 256-token prefill instead of
  the last row only: the served code, no second model (for fp32 it matches transformers'
  `LlamaForCausalLM` logits exactly). fp32 and bf16 run as served. int8 and int4 run with their
  weights dequantised to fp32 tensors, because torch's weight-only kernels cost about as much per
  prompt row as per decode step (a 256-token prefill takes tens of seconds on this CPU): the
  tensors hold EXACTLY the values the kernels multiply by (int8: q * scale per output channel; int4:
  (q - 8) * scale + zero per group of 32, q re-derived from the fp32 weights by quant.py's rule, the
  scales and zeros the variant's own), each matrix is checked against its kernel on random inputs,
  and the whole model's logits against the kernels' on the first tokens of the text (`kernel_*`
  metrics). Only the order of summation differs. (For SmolLM2, int4's codes recover the GGUF's own
  Q4_1 weights exactly: int4 differs from fp32 only by its int8 output head and the kernels.)
- Greedy agreement: PROMPTS (20 instructions, chat template). fp32's greedy completions (48 tokens)
  come from the fp32 engine; each variant is then teacher-forced on prompt + completion (one forward
  with all-position logits, the weights as above): the first position where the variant's argmax
  differs from fp32's token is exactly where its own greedy decode would leave fp32's, so the common
  prefix is known without decoding every variant. Reported: the exact-match rate and the mean common
  prefix as a fraction of fp32's completion (48 tokens unless fp32 stopped at EOS earlier). fp32's
  own figure is the floor of the method (the engine's batched decode against one prefill).

Speed, through the engine (`build_llm_engine` around the variant's model with the catalog entry's
engine settings; in process, 2 threads, the real kernels): one stream (TTFT, decode tokens/s after
the first token; median of 3, interleaved across variants) and 16 concurrent streams (aggregate
completion tokens/s including prefill, TTFT p50; one round), greedy, 64 tokens. Each round stops at
a time cap (flagged `capped`; tokens/s is then over the capped window); the 16-stream round is
skipped when 16 x the single-stream TTFT (the prefill of 16 prompts, roughly) would exceed the cap,
and such a variant is not eligible for promotion.
"""

from __future__ import annotations

import argparse
import asyncio
import copy
import dataclasses
import functools
import json
import logging
import math
import platform
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import torch
from mlflow import MlflowClient
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from infergraph.aliases import PRODUCTION
from infergraph.files import atomic_write_text
from infergraph.optimize import tracking
from infergraph.optimize.config import load_config
from infergraph.paths import PROJECT_ROOT, absolute_tracking_uri, project_path
from infergraph.runtimes.artifact import MANIFEST, Manifest, sha256_file
from infergraph.runtimes.catalog import load_catalog
from infergraph.runtimes.llm.engine import LLMEngine, build_llm_engine
from infergraph.runtimes.llm.model import KVPool, LlamaPaged, SeqInput
from infergraph.runtimes.llm.quant import Int4Linear, Int8Linear
from infergraph.runtimes.llm.sampling import SamplingParams
from infergraph.runtimes.llm.spec import LLMSpec
from infergraph.runtimes.llm.weights import resolve_llm_dir

log = logging.getLogger(__name__)

MODEL = "smollm2-135m-instruct"  # the catalog entry, and the registered model's name
PRECISIONS = ("fp32", "int8", "int4", "bf16")  # fp32 first: the reference
ALIAS = PRODUCTION
ARTIFACT_FILE = "llm_manifest.json"

# The gate: the fastest variant by aggregate tokens/s at 16 streams whose quality holds up against fp32.
# Perplexity may rise by at most 5%: int8's per-channel rounding of these weights moves it by ~0.5%,
# so 5% leaves room for noise and other recipes while refusing a variant that degrades the model.
MAX_PPL_RATIO = 1.05
# Greedy completions must follow fp32's for at least half their tokens on average: once they diverge
# the texts differ, but a variant that leaves fp32's path in the first half is a different model.
MIN_AGREEMENT_PREFIX = 0.5
RANK_BY = "tokens_per_s_concurrent"

# Fixed instruction prompts for greedy agreement (and the speed workload): varied tasks that make the
# model write at least 48-64 tokens.
PROMPTS = (
    "Explain how a compiler turns source code into a program.",
    "Write a short story about a lighthouse keeper who finds a message in a bottle.",
    "What are the main causes of the seasons on Earth?",
    "Give me three tips for writing clear emails, with a sentence on each.",
    "Describe the water cycle to a ten-year-old.",
    "What is the difference between a virus and a bacterium?",
    "Write a polite message asking a neighbour to turn down their music at night.",
    "Explain what a hash table is and why lookups are fast.",
    "List five healthy breakfast ideas and say why each is good.",
    "Why do leaves change colour in autumn?",
    "Summarise the plot of Romeo and Juliet in a few sentences.",
    "How does a bicycle stay upright while moving?",
    "Write a product description for a reusable water bottle.",
    "What should I pack for a weekend hiking trip in the mountains?",
    "Explain the difference between weather and climate.",
    "Describe how to make a cup of tea, step by step.",
    "What are the benefits of learning a second language?",
    "Explain what photosynthesis is and why it matters.",
    "Write a short poem about the sea at night.",
    "How do vaccines help the body fight disease?",
)


@dataclasses.dataclass(frozen=True)
class Settings:
    """The knobs `--quick` shrinks."""

    precisions: tuple[str, ...]
    windows: int  # perplexity windows
    window_tokens: int
    prompts: int  # greedy agreement prompts
    agree_tokens: int
    speed_tokens: int
    streams: int
    single_reps: int
    cap_s: float  # time cap of one speed round
    kernel_check_tokens: int  # tokens of the kernel-vs-dequantised logits check (0: skip)


FULL = Settings(PRECISIONS, 32, 256, 20, 48, 64, 16, 3, 30.0, 32)
QUICK = Settings(("fp32", "int8"), 2, 256, 4, 48, 16, 4, 1, 6.0, 8)


@dataclasses.dataclass
class VariantRun:
    """One precision: its loaded model, what was measured, where it went."""

    precision: str
    model: LlamaPaged
    load_s: float
    metrics: dict[str, float] = dataclasses.field(default_factory=dict)
    notes: list[str] = dataclasses.field(default_factory=list)
    gate: str = ""
    version: str | None = None
    engine: LLMEngine | None = None


# --------------------------------------------------------------------------- all-position logits


def all_logits(model: LlamaPaged, tokens: Sequence[int], first: int = 0) -> torch.Tensor:
    """Logits [len(tokens) - first, vocab] (fp32) after every token from `first` on: one prefill of
    `tokens` through the model's own forward, with every row's logits kept instead of the last's."""
    block = 16
    blocks = -(-len(tokens) // block)
    kv = KVPool(model.shape, blocks, block, model.dtype)
    batch = model.build_batch([SeqInput(list(tokens), 0, list(range(blocks)), True)], block)
    batch = dataclasses.replace(batch, logit_rows=torch.arange(first, len(tokens)))
    return model.forward(batch, kv)


def _weight_attributes(model: LlamaPaged) -> dict[str, Any]:
    """The model's weight attributes that hold a quantised matrix (or a list with some)."""
    quantised = (Int8Linear, Int4Linear)
    out: dict[str, Any] = {}
    for name, value in vars(model).items():
        if isinstance(value, quantised) or (
            isinstance(value, list) and any(isinstance(v, quantised) for v in value)
        ):
            out[name] = value
    return out


def dequantised(variant: LlamaPaged, reference: LlamaPaged) -> LlamaPaged:
    """A shallow copy of `variant` whose quantised matrices are fp32 tensors of exactly the values its
    kernels multiply by (`reference`: the fp32 model, for int4's codes). fp32/bf16: `variant` itself."""
    attributes = _weight_attributes(variant)
    if not attributes:
        return variant
    out = copy.copy(variant)
    for name, value in attributes.items():
        ref = getattr(reference, name)
        if isinstance(value, list):
            setattr(out, name, [_dequantise(w, r) for w, r in zip(value, ref, strict=True)])
        else:
            setattr(out, name, _dequantise(value, ref))
    return out


def _dequantise(weight: Any, reference: torch.Tensor) -> torch.Tensor:
    if isinstance(weight, torch.Tensor):
        return weight
    if isinstance(weight, Int8Linear):
        deq = weight.q.float() * weight.scale[:, None]
    elif isinstance(weight, Int4Linear):
        # quant.py's codes, re-derived from the same fp32 matrix; the variant's own scales and zeros
        w = reference.float()
        n, k = w.shape
        g = w.view(n, k // weight.group, weight.group)
        lo, hi = g.amin(dim=-1), g.amax(dim=-1)
        scale = ((hi - lo) / 15).clamp(min=1e-12)
        q = ((g - lo[..., None]) / scale[..., None]).round().clamp(0, 15)
        sz = weight.scales_zeros.float()  # [k / group, n, 2]: (scale, zero) of each group
        s, z = sz[..., 0].T[..., None], sz[..., 1].T[..., None]
        deq = ((q - 8) * s + z).reshape(n, k).contiguous()
    else:
        raise TypeError(f"cannot dequantise a {type(weight).__name__}")
    _check_kernel(weight, deq)
    return deq


def _check_kernel(weight: Int8Linear | Int4Linear, deq: torch.Tensor) -> None:
    """The kernel and x @ deq.T agree on random inputs (to summation order), or the dequantisation is
    wrong (quant.py changed): refuse to report numbers for weights that are not the variant's."""
    x = torch.randn(2, deq.shape[1], generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        got, want = weight(x), x @ deq.T
    err = float((got - want).abs().max() / want.abs().max().clamp(min=1e-12))
    if err > 1e-3:
        raise RuntimeError(
            f"dequantised {type(weight).__name__} differs from its kernel (rel. error {err:.2e})"
        )


# --------------------------------------------------------------------------- quality


def perplexity_text() -> tuple[str, str]:
    """(text, what it is): the Debian FAQ's English answers, else gensim's Lee background news."""
    from infergraph.optimize import data

    try:
        return "\n\n".join(data.debian_faq("en", max_words=None).passages), "debian-faq-en answers"
    except data.DataUnavailableError as exc:
        log.warning("Debian FAQ unavailable (%s); perplexity on gensim's Lee background corpus", exc)
        from importlib.resources import files

        path = files("gensim") / "test" / "test_data" / "lee_background.cor"
        text = path.read_text(encoding="latin-1")
        return "\n\n".join(line.strip() for line in text.splitlines() if line.strip()), "lee-background"


def windows_of(ids: Sequence[int], size: int, count: int) -> list[list[int]]:
    """`count` consecutive, non-overlapping `size`-token windows spread evenly over `ids`."""
    available = len(ids) // size
    if available < count:
        raise ValueError(f"{len(ids)} tokens hold {available} windows of {size}, fewer than {count}")
    starts = np.linspace(0, available - 1, count).round().astype(int) * size
    return [list(ids[s : s + size]) for s in starts]


def perplexity(model: LlamaPaged, windows: Sequence[Sequence[int]], tick: Callable[[], None]) -> float:
    nll, count = 0.0, 0
    for window in windows:
        logits = all_logits(model, window)[:-1]
        targets = torch.tensor(window[1:])[:, None]
        nll -= float(torch.log_softmax(logits, dim=-1).gather(1, targets).double().sum())
        count += len(window) - 1
        tick()
    return math.exp(nll / count)


def common_prefix(model: LlamaPaged, prompt: Sequence[int], completion: Sequence[int]) -> int:
    """How many of `completion`'s tokens the model's own greedy decode of `prompt` would reproduce:
    teacher-forced, the first position whose argmax differs."""
    seq = list(prompt) + list(completion[:-1])
    predicted = all_logits(model, seq, first=len(prompt) - 1).argmax(dim=-1).tolist()
    for i, (p, t) in enumerate(zip(predicted, completion, strict=True)):
        if p != t:
            return i
    return len(completion)


def agreement(
    model: LlamaPaged, prompts: Sequence[Sequence[int]], references: Sequence[Sequence[int]]
) -> dict[str, float]:
    prefixes = [common_prefix(model, p, r) for p, r in zip(prompts, references, strict=True)]
    fractions = [n / len(r) for n, r in zip(prefixes, references, strict=True)]
    exact = [n == len(r) for n, r in zip(prefixes, references, strict=True)]
    return {
        "agreement_exact": float(np.mean(exact)),
        "agreement_prefix": float(np.mean(fractions)),
        "agreement_prefix_tokens": float(np.mean(prefixes)),
    }


def kernel_check(real: LlamaPaged, deq: LlamaPaged, tokens: Sequence[int]) -> dict[str, float]:
    """The served kernels against the dequantised weights on the same tokens, every position."""
    a, b = all_logits(real, tokens), all_logits(deq, tokens)
    return {
        "kernel_logit_max_abs_diff": float((a - b).abs().max()),
        "kernel_argmax_match": float((a.argmax(-1) == b.argmax(-1)).float().mean()),
    }


# --------------------------------------------------------------------------- speed


@dataclasses.dataclass
class Round:
    """One closed batch of concurrent greedy requests through the engine."""

    tokens: int
    wall_s: float
    ttft_s: list[float]  # of the streams that produced a token
    decode_tokens_per_s: list[float]  # per stream, after its first token
    capped: bool


async def _round(engine: LLMEngine, prompts: Sequence[Sequence[int]], max_tokens: int, cap_s: float) -> Round:
    """Every prompt at once, greedy `max_tokens`; stops at `cap_s` (aborting what is left, then waiting
    for the engine to drain, so no step of this round runs into the next)."""
    stamps: list[list[float]] = [[] for _ in prompts]
    params = SamplingParams(max_tokens=max_tokens, temperature=0)

    async def client(i: int, ids: Sequence[int]) -> None:
        async for event in engine.generate(f"speed-{i}", list(ids), params):
            stamps[i].extend([time.perf_counter()] * len(event.token_ids))

    t0 = time.perf_counter()
    tasks = [asyncio.create_task(client(i, ids)) for i, ids in enumerate(prompts)]
    done, pending = await asyncio.wait(tasks, timeout=cap_s)
    wall = time.perf_counter() - t0
    for task in pending:
        task.cancel()
    await asyncio.gather(*pending, return_exceptions=True)
    for task in done:
        task.result()
    while engine.stats()["running"] or engine.stats()["waiting"]:
        await asyncio.sleep(0.01)
    if not pending:
        wall = max(s[-1] for s in stamps if s) - t0
    return Round(
        tokens=sum(len(s) for s in stamps),
        wall_s=wall,
        ttft_s=[s[0] - t0 for s in stamps if s],
        decode_tokens_per_s=[(len(s) - 1) / (s[-1] - s[0]) for s in stamps if len(s) > 1 and s[-1] > s[0]],
        capped=bool(pending),
    )


def run_round(engine: LLMEngine, prompts: Sequence[Sequence[int]], max_tokens: int, cap_s: float) -> Round:
    return asyncio.run(_round(engine, prompts, max_tokens, cap_s))


def measure_speed(
    runs: Sequence[VariantRun], prompts: Sequence[Sequence[int]], settings: Settings, console: Console
) -> None:
    """Single-stream rounds interleaved across variants (median of `single_reps`; a variant whose
    round hits the cap is not repeated), then one `streams`-stream round each."""
    singles: dict[str, list[Round]] = {r.precision: [] for r in runs}
    cheap_s = settings.cap_s / 4  # a round this long or longer is not repeated
    with _progress(console) as progress:
        task = progress.add_task("speed: 1 stream", total=settings.single_reps * len(runs))
        for run in runs:
            assert run.engine is not None
            run_round(run.engine, [prompts[0][:8]], 2, settings.cap_s)  # warm-up: a tiny prompt, 2 tokens
        for _ in range(settings.single_reps):
            for run in runs:
                assert run.engine is not None
                previous = singles[run.precision]
                if not previous or previous[-1].wall_s < cheap_s:
                    previous.append(run_round(run.engine, prompts[:1], settings.speed_tokens, settings.cap_s))
                progress.advance(task)
        task = progress.add_task(f"speed: {settings.streams} streams", total=len(runs))
        stream_prompts = [prompts[i % len(prompts)] for i in range(settings.streams)]
        for run in runs:
            assert run.engine is not None
            m, rounds = run.metrics, singles[run.precision]
            ttfts = [r.ttft_s[0] for r in rounds if r.ttft_s]
            rates = [r.decode_tokens_per_s[0] for r in rounds if r.decode_tokens_per_s]
            m["single_reps"] = float(len(rounds))
            m["single_capped"] = float(any(r.capped for r in rounds))
            if rates:
                m["tokens_per_s_single"] = statistics.median(rates)
            if not ttfts:
                run.notes.append(f"no token within the {settings.cap_s:.0f} s cap on one stream")
                progress.advance(task)
                continue
            m["ttft_ms_single"] = 1000 * statistics.median(ttfts)
            predicted = settings.streams * statistics.median(ttfts)
            if predicted > settings.cap_s:
                run.notes.append(
                    f"{settings.streams}-stream round skipped: {settings.streams} x the single-stream TTFT "
                    f"= {predicted:.0f} s of prefill, over the {settings.cap_s:.0f} s cap"
                )
            else:
                progress.update(task, description=f"speed: {settings.streams} streams, {run.precision}")
                r = run_round(run.engine, stream_prompts, settings.speed_tokens, settings.cap_s)
                m["tokens_per_s_concurrent"] = r.tokens / r.wall_s
                m["ttft_ms_concurrent_p50"] = 1000 * float(np.median(r.ttft_s)) if r.ttft_s else math.nan
                m["concurrent_tokens"] = float(r.tokens)
                m["concurrent_capped"] = float(r.capped)
                if r.capped:
                    run.notes.append(f"{settings.streams}-stream round capped at {settings.cap_s:.0f} s")
            progress.advance(task)
    base = runs[0].metrics
    for run in runs:
        for key in ("tokens_per_s_single", "tokens_per_s_concurrent"):
            if key in run.metrics and base.get(key):
                run.metrics[f"speedup_{key.removeprefix('tokens_per_s_')}"] = run.metrics[key] / base[key]


# --------------------------------------------------------------------------- the pipeline


def _progress(console: Console) -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
    )


def weights_mb(model: LlamaPaged) -> float:
    """Bytes of every weight as the variant holds it (quantised codes + scales), in MB."""
    total = 0

    def add(value: Any) -> None:
        nonlocal total
        if isinstance(value, torch.Tensor):
            total += value.numel() * value.element_size()
        elif isinstance(value, Int8Linear | Int4Linear):
            total += sum(
                t.numel() * t.element_size() for t in vars(value).values() if isinstance(t, torch.Tensor)
            )
        elif isinstance(value, list):
            for v in value:
                add(v)

    skip = {"cos", "sin"}
    seen: set[int] = set()
    for name, value in vars(model).items():
        if name not in skip and id(value) not in seen:  # a tied head is the embedding: count it once
            seen.add(id(value))
            add(value)
    return total / 1e6


def source_weights(model_dir: Path) -> tuple[dict[str, str], str]:
    """The sha256 of each source weights file (from the conversion manifest when there is one, which
    is verified on every load) and where the weights came from."""
    path = model_dir / MANIFEST
    if path.exists():
        manifest = Manifest.model_validate_json(path.read_text())
        weights = {f: h for f, h in manifest.files.items() if f.endswith(".safetensors")}
        return weights, manifest.notes or manifest.variant
    return {p.name: sha256_file(p) for p in sorted(model_dir.glob("*.safetensors"))}, str(model_dir)


def variant_manifest(
    spec: LLMSpec, precision: str, model_dir: Path, metrics: dict[str, float]
) -> dict[str, Any]:
    """What a registry version of the LLM is: the catalog model at one precision, of these weights."""
    weights, origin = source_weights(model_dir)
    return {
        "kind": "llm-precision",
        "model": spec.name,
        "precision": precision,
        "source": spec.source.model_dump(),
        "source_weights_sha256": weights,
        "source_weights_origin": origin,
        "metrics": {k: v for k, v in metrics.items() if math.isfinite(v)},
        "made_by": "python -m infergraph.optimize.llm",
    }


def eligible(run: VariantRun) -> tuple[bool, str]:
    m = run.metrics
    if RANK_BY not in m:
        return False, "no concurrent-stream throughput (see notes)"
    if m["ppl_ratio"] > MAX_PPL_RATIO:
        return False, f"perplexity {m['ppl_ratio']:.3f}x fp32 > {MAX_PPL_RATIO}x"
    if m["agreement_prefix"] < MIN_AGREEMENT_PREFIX:
        return False, f"greedy prefix agreement {m['agreement_prefix']:.2f} < {MIN_AGREEMENT_PREFIX}"
    return True, "passes"


def choose(runs: Sequence[VariantRun]) -> VariantRun | None:
    passing = [r for r in runs if eligible(r)[0]]
    return max(passing, key=lambda r: r.metrics[RANK_BY], default=None)


def measure(
    spec: LLMSpec, model_dir: Path, settings: Settings, console: Console
) -> tuple[list[VariantRun], dict[str, Any]]:
    """Load every precision, measure its quality against fp32, then the speed of all."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    text, text_name = perplexity_text()
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    windows = windows_of(ids, settings.window_tokens, settings.windows)
    runs: list[VariantRun] = []
    prompts: list[list[int]] = []
    references: list[list[int]] = []
    reference: LlamaPaged | None = None
    if settings.precisions[0] != "fp32":
        raise ValueError("fp32 comes first: it is the reference")
    for precision in settings.precisions:
        with console.status(f"{precision}: loading"):
            t0 = time.perf_counter()
            model = LlamaPaged(model_dir, precision=precision, max_positions=spec.max_context)
            run = VariantRun(precision, model, time.perf_counter() - t0)
            run.engine = build_llm_engine(
                model, tokenizer, model_dir, spec.model_copy(update={"precision": precision})
            )
        if reference is None:  # fp32: the reference completions, from the engine itself
            reference = model
            engine = run.engine
            prompts = [
                engine.chat_prompt([{"role": "user", "content": p}]) for p in PROMPTS[: settings.prompts]
            ]
            with console.status(f"fp32: greedy completions of {len(prompts)} prompts"):
                references = _greedy(engine, prompts, settings.agree_tokens)
        with console.status(f"{precision}: dequantising for the all-position passes"):
            evaluated = dequantised(model, reference)
        with _progress(console) as progress:
            task = progress.add_task(f"{precision}: perplexity", total=len(windows))
            run.metrics["perplexity"] = perplexity(
                evaluated, windows, functools.partial(progress.advance, task)
            )
        with console.status(f"{precision}: greedy agreement with fp32 ({len(prompts)} prompts)"):
            run.metrics |= agreement(evaluated, prompts, references)
        if evaluated is not model and settings.kernel_check_tokens:
            with console.status(f"{precision}: kernels vs dequantised weights"):
                run.metrics |= kernel_check(model, evaluated, windows[0][: settings.kernel_check_tokens])
        del evaluated
        run.metrics["ppl_ratio"] = run.metrics["perplexity"] / runs[0].metrics["perplexity"] if runs else 1.0
        run.metrics["weights_mb"] = weights_mb(model)
        run.metrics["load_s"] = run.load_s
        m = run.metrics
        console.log(
            f"{precision}: perplexity {m['perplexity']:.3f} ({m['ppl_ratio']:.4f}x fp32), "
            f"greedy prefix {m['agreement_prefix']:.3f}, exact {m['agreement_exact']:.2f}"
        )
        runs.append(run)
    measure_speed(runs, prompts, settings, console)
    for run in runs:
        ok, why = eligible(run)
        run.gate = why
    evaluation = {
        "perplexity_text": text_name,
        "perplexity_tokens": sum(len(w) - 1 for w in windows),
        "windows": len(windows),
        "window_tokens": settings.window_tokens,
        "prompts": len(prompts),
        "agree_tokens": settings.agree_tokens,
        "reference_completion_tokens": [len(r) for r in references],
        "speed_tokens": settings.speed_tokens,
        "streams": settings.streams,
        "cap_s": settings.cap_s,
        "threads": torch.get_num_threads(),
    }
    return runs, evaluation


def _greedy(engine: LLMEngine, prompts: Sequence[Sequence[int]], max_tokens: int) -> list[list[int]]:
    async def one(i: int, ids: Sequence[int]) -> list[int]:
        params = SamplingParams(max_tokens=max_tokens, temperature=0)
        return [t async for e in engine.generate(f"ref-{i}", list(ids), params) for t in e.token_ids]

    async def all_of() -> list[list[int]]:
        return list(await asyncio.gather(*(one(i, p) for i, p in enumerate(prompts))))

    return asyncio.run(all_of())


# --------------------------------------------------------------------------- MLflow


def log_and_register(
    client: MlflowClient, spec: LLMSpec, model_dir: Path, run: VariantRun, evaluation: dict[str, Any]
) -> None:
    """A nested run for one precision (params, metrics, its manifest), registered as a version."""
    parent = mlflow.active_run()
    experiment = parent.info.experiment_id if parent else None
    manifest = variant_manifest(spec, run.precision, model_dir, run.metrics)
    with mlflow.start_run(run_name=run.precision, nested=True, experiment_id=experiment) as child:
        mlflow.set_tags(
            {"variant": run.precision, "precision": run.precision, "target": "cpu", "gate": run.gate}
        )
        mlflow.log_params(
            {"precision": run.precision, "engine": "infergraph", **tracking.flat_params(evaluation)}
        )
        mlflow.log_metrics({k: v for k, v in run.metrics.items() if math.isfinite(v)})
        mlflow.log_dict(manifest, f"model/{ARTIFACT_FILE}")
        mlflow.log_dict(evaluation, "evaluation.json")
        if run.notes:
            mlflow.set_tag("mlflow.note.content", "; ".join(run.notes))
        run_id = child.info.run_id
    m = run.metrics
    tags = {
        "kind": "llm",
        "precision": run.precision,
        "perplexity": f"{m['perplexity']:.3f}",
        "ppl_ratio": f"{m['ppl_ratio']:.4f}",
        "agreement_prefix": f"{m['agreement_prefix']:.3f}",
        RANK_BY: f"{m.get(RANK_BY, float('nan')):.1f}",
        "gate": run.gate,
    }
    description = f"precisions of the LLM from `python -m infergraph.optimize.llm` ({ARTIFACT_FILE})"
    run.version = tracking.register_version(client, spec.name, run_id, tags, description)


# --------------------------------------------------------------------------- report


COLUMNS = (
    "precision",
    "perplexity",
    "x fp32",
    "exact match",
    "prefix agreement",
    "decode tok/s (1 stream)",
    "TTFT ms (1 stream)",
    "tok/s (N streams)",
    "TTFT p50 ms (N streams)",
    "x fp32 (N streams)",
    "weights MB",
    "registry",
    "gate",
)


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None or not math.isfinite(value) else format(value, spec)


def table_rows(runs: Sequence[VariantRun], promoted: str | None) -> list[tuple[str, ...]]:
    rows: list[tuple[str, ...]] = []
    for r in runs:
        m = r.metrics
        rows.append(
            (
                r.precision,
                _fmt(m["perplexity"], ".3f"),
                _fmt(m["ppl_ratio"], ".4f"),
                _fmt(m["agreement_exact"], ".2f"),
                _fmt(m["agreement_prefix"], ".3f"),
                _fmt(m.get("tokens_per_s_single"), ".1f"),
                _fmt(m.get("ttft_ms_single"), ".0f"),
                _fmt(m.get("tokens_per_s_concurrent"), ".1f"),
                _fmt(m.get("ttft_ms_concurrent_p50"), ".0f"),
                _fmt(m.get("speedup_concurrent"), ".2f"),
                _fmt(m["weights_mb"], ".0f"),
                f"v{r.version}" if r.version else "-",
                f"{ALIAS} ({r.gate})" if r.precision == promoted else r.gate,
            )
        )
    return rows


def markdown(runs: Sequence[VariantRun], promoted: str | None, evaluation: dict[str, Any], title: str) -> str:
    header = [c.replace("N streams", f"{evaluation['streams']} streams") for c in COLUMNS]
    lines = [f"# {title}", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in table_rows(runs, promoted)]
    lines += [
        "",
        f"- Perplexity: {evaluation['windows']} windows of {evaluation['window_tokens']} tokens "
        f"({evaluation['perplexity_tokens']} scored tokens) of {evaluation['perplexity_text']}.",
        f"- Agreement: greedy {evaluation['agree_tokens']} tokens on {evaluation['prompts']} chat prompts, "
        "teacher-forced on fp32's completions (exact match rate; mean common prefix / fp32's length).",
        f"- Speed: the engine in process, {evaluation['threads']} threads, greedy "
        f"{evaluation['speed_tokens']} tokens; 1 stream median of up to 3, {evaluation['streams']} streams "
        f"one round; cap {evaluation['cap_s']:.0f} s per round. Shared 2-core box: compare within a run.",
        f"- Gate: the fastest by tok/s at {evaluation['streams']} streams with perplexity <= "
        f"{MAX_PPL_RATIO}x fp32 and prefix agreement >= {MIN_AGREEMENT_PREFIX}; "
        f"promoted: {promoted or 'none'}.",
    ]
    for r in runs:
        lines += [f"- {r.precision}: {note}" for note in r.notes]
    return "\n".join(lines) + "\n"


CONSOLE_COLUMNS = ("prec.", "ppl", "x fp32", "exact", "prefix", "tok/s 1", "TTFT 1", "tok/s N", "TTFT N",
                   "x fp32", "MB", "ver.")  # fmt: skip


def console_table(runs: Sequence[VariantRun], promoted: str | None, streams: int, title: str) -> Table:
    """The markdown table's numbers under short headers (a terminal is narrow), the gate as a word."""
    table = Table(title=title, caption="N: streams; TTFT in ms; the gate's reasons are in optimize.md")
    for col in (*CONSOLE_COLUMNS, "gate"):
        table.add_column(
            col.replace(" N", f" {streams}"), justify="left" if col in ("prec.", "gate") else "right"
        )
    for row, r in zip(table_rows(runs, promoted), runs, strict=True):
        word = "promoted" if r.precision == promoted else ("passes" if r.gate == "passes" else "fails")
        table.add_row(*row[: len(CONSOLE_COLUMNS)], word)
    return table


def plot(runs: Sequence[VariantRun], promoted: str | None, streams: int, path: Path) -> Path:
    """Left: tokens/s (log) against perplexity, N streams filled, one stream hollow. Right: greedy
    agreement against perplexity, with the gate's floor. Green: promoted; grey: fails the gate."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (speed, agree) = plt.subplots(1, 2, figsize=(12, 4.8))
    ceiling = runs[0].metrics["perplexity"] * MAX_PPL_RATIO

    def color(r: VariantRun) -> str:
        return "tab:green" if r.precision == promoted else ("tab:blue" if r.gate == "passes" else "tab:gray")

    for r in runs:
        m, c, ppl = r.metrics, color(r), r.metrics["perplexity"]
        if RANK_BY in m:
            speed.scatter(ppl, m[RANK_BY], s=110 if r.precision == promoted else 60, color=c, zorder=3)
            speed.annotate(f"{r.precision}, {streams} streams", (ppl, m[RANK_BY]), fontsize=8, xytext=(6, 2),
                           textcoords="offset points")  # fmt: skip
        if m.get("tokens_per_s_single"):
            speed.scatter(ppl, m["tokens_per_s_single"], s=60, facecolors="none", edgecolors=c, zorder=3)
            speed.annotate(f"{r.precision}, 1 stream", (ppl, m["tokens_per_s_single"]), fontsize=8,
                           xytext=(6, -9), textcoords="offset points")  # fmt: skip
        agree.scatter(ppl, m["agreement_prefix"], s=110 if r.precision == promoted else 60, color=c, zorder=3)
        agree.annotate(f"{r.precision} (exact {m['agreement_exact']:.0%})", (ppl, m["agreement_prefix"]),
                       fontsize=8, xytext=(6, 2), textcoords="offset points")  # fmt: skip
    speed.set_yscale("log")
    speed.set_ylabel("completion tokens/s (this CPU, 2 threads; log)")
    speed.set_title(f"speed (filled: {streams} streams, hollow: 1 stream)")
    agree.axhline(MIN_AGREEMENT_PREFIX, color="tab:red", linestyle="--", linewidth=1, label="gate floor")
    agree.set_ylim(0, 1.05)
    agree.set_ylabel("greedy common prefix with fp32 (fraction)")
    agree.set_title("greedy agreement with fp32")
    agree.legend(loc="lower left")
    for ax in (speed, agree):
        ax.set_xlabel(f"perplexity (gate: <= {ceiling:.2f}, {MAX_PPL_RATIO}x fp32)")
        ax.grid(alpha=0.3, which="both")
        lo, hi = ax.get_xlim()
        ax.set_xlim(lo, hi + 0.25 * (hi - lo))  # room for the labels
    fig.suptitle(f"{MODEL}: precisions; green = promoted ({ALIAS}), grey = fails the gate")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


# --------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fp32 and int8, small samples (~35 s)")
    ap.add_argument(
        "--precisions", nargs="+", choices=PRECISIONS, help="a subset (fp32, the reference, is added)"
    )
    ap.add_argument(
        "--tracking-uri", help="MLflow store (default: configs/optimize.yaml's, a local SQLite file)"
    )
    ap.add_argument(
        "--artifact-root", help="where MLflow keeps run artifacts (default: configs/optimize.yaml's)"
    )
    ap.add_argument("--results-dir", default="results/llm", help="optimize.json, .md and .png")
    ap.add_argument("--cap-s", type=float, help="time cap of one speed round")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--no-promote", action="store_true", help="measure and register, leave the alias alone")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    console = Console()
    torch.set_num_threads(args.threads)

    settings = QUICK if args.quick else FULL
    if args.precisions:
        settings = dataclasses.replace(
            settings, precisions=("fp32", *(p for p in PRECISIONS if p in args.precisions and p != "fp32"))
        )
    if args.cap_s:
        settings = dataclasses.replace(settings, cap_s=args.cap_s)
    config = load_config(project_path("configs/optimize.yaml"))
    tracking_uri = absolute_tracking_uri(args.tracking_uri or config.tracking_uri, PROJECT_ROOT)
    artifact_root = project_path(args.artifact_root or config.artifact_root)
    results_dir = project_path(args.results_dir)
    spec = load_catalog(project_path(config.catalog)).get(MODEL)
    if not isinstance(spec, LLMSpec):
        raise SystemExit(f"{MODEL} is not an llm in the catalog")
    spec = spec.model_copy(update={"max_running": max(spec.max_running, settings.streams, settings.prompts)})
    model_dir = resolve_llm_dir(spec.source)

    client = tracking.connect(tracking_uri, artifact_root)
    experiment = tracking.experiment_for(client, spec.name, artifact_root)
    started = time.monotonic()
    promoted: str | None = None
    with mlflow.start_run(
        experiment_id=experiment, run_name=f"llm precisions{' --quick' if args.quick else ''}"
    ):
        mlflow.log_params(
            {
                "quick": args.quick,
                "precisions": ",".join(settings.precisions),
                "max_ppl_ratio": MAX_PPL_RATIO,
                "min_agreement_prefix": MIN_AGREEMENT_PREFIX,
                "rank_by": RANK_BY,
                "alias": ALIAS,
            }
        )
        runs, evaluation = measure(spec, model_dir, settings, console)
        for run in runs:
            log_and_register(client, spec, model_dir, run, evaluation)
        best = choose(runs)
        if best is None:
            console.print(f"[red]{spec.name}: no precision passes the gate; {ALIAS} alias left as it was")
        elif args.no_promote:
            console.print(
                f"{spec.name}: the gate picks {best.precision} (--no-promote: alias left as it was)"
            )
        else:
            assert best.version is not None
            why = (
                f"fastest at {settings.streams} streams ({best.metrics[RANK_BY]:.1f} tok/s) with perplexity "
                f"<= {MAX_PPL_RATIO}x fp32 and greedy prefix agreement >= {MIN_AGREEMENT_PREFIX}"
            )
            tracking.promote(client, spec.name, ALIAS, best.version, why)
            promoted = best.precision
            console.print(
                f"[green]{spec.name}: models:/{spec.name}@{ALIAS} -> v{best.version} ({best.precision})"
            )
        mlflow.set_tag("promoted", promoted or "none")
        summary_metrics = {"fp32_perplexity": runs[0].metrics["perplexity"]}
        if best is not None:
            summary_metrics |= {
                f"gate_choice_{k}": best.metrics[k] for k in (RANK_BY, "ppl_ratio", "agreement_prefix")
            }
        mlflow.log_metrics(summary_metrics)

        title = (
            f"{spec.name} precisions, {time.strftime('%Y-%m-%d %H:%M')} ({time.monotonic() - started:.0f} s)"
        )
        wide = Console(width=max(console.width, 150))  # piped output is 80 columns: too narrow
        wide.print(console_table(runs, promoted, settings.streams, title))
        results_dir.mkdir(parents=True, exist_ok=True)
        md = atomic_write_text(results_dir / "optimize.md", markdown(runs, promoted, evaluation, title))
        summary = {
            "model": spec.name,
            "quick": args.quick,
            "promoted": promoted,
            "gate": {
                "max_ppl_ratio": MAX_PPL_RATIO,
                "min_agreement_prefix": MIN_AGREEMENT_PREFIX,
                "rank_by": RANK_BY,
            },
            "evaluation": evaluation,
            "machine": {"cpu": platform.processor() or platform.machine(), "torch": torch.__version__},
            "variants": [
                {
                    "precision": r.precision,
                    "version": r.version,
                    "gate": r.gate,
                    "notes": r.notes,
                    **r.metrics,
                }
                for r in runs
            ],
        }
        js = atomic_write_text(results_dir / "optimize.json", json.dumps(summary, indent=2) + "\n")
        png = plot(runs, promoted, settings.streams, results_dir / "optimize.png")
        for path in (md, js, png):
            mlflow.log_artifact(str(path))
    console.print(f"wrote {md}, {js}, {png}; MLflow store {tracking_uri}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
