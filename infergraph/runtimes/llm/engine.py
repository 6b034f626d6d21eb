"""The LLM engine: requests in, token events out, one model step at a time for all of them.

A step loop (an asyncio task started by the first request) asks the scheduler what to compute, runs
the forward pass and sampling on a worker thread (so the event loop keeps accepting requests and
streaming tokens), then turns each new token into a `TokenEvent` on its request's queue. The worker
is a single thread: steps never overlap, and the KV pool has one writer.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import time
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from infergraph.runtimes.batching import DeadlineExceededError
from infergraph.runtimes.llm.detokenizer import IncrementalText
from infergraph.runtimes.llm.model import KVPool, LlamaPaged, SeqInput
from infergraph.runtimes.llm.sampling import SamplingParams, choose_tokens
from infergraph.runtimes.llm.scheduler import Mode, Scheduler, Sequence, Step

if TYPE_CHECKING:  # pydantic and the weight resolver stay out of a bare GPU box (bench.gpu_llm)
    from infergraph.runtimes.llm.spec import LLMSpec

__all__ = [
    "ContextLengthExceededError",
    "DeadlineExceededError",
    "LLMEngine",
    "SamplingParams",
    "TokenEvent",
    "load_llm_engine",
]

log = logging.getLogger(__name__)

SMALL_STEP_TOKENS = 4  # steps of at most this many tokens run single-threaded (see LLMEngine._execute)


class ContextLengthExceededError(ValueError):
    """The prompt plus `max_tokens` does not fit the model's context."""


@dataclass
class TokenEvent:
    """What one step produced for one request (the last one carries `finish_reason`)."""

    text: str  # new text since the previous event (may be empty: held back mid-character or stop string)
    token_ids: list[int]
    finish_reason: str | None  # None while running; "stop" (EOS or stop string) | "length"
    prompt_tokens: int
    completion_tokens: int


@dataclass(eq=False)
class _Request:
    params: SamplingParams
    generator: torch.Generator | None
    text: IncrementalText
    queue: asyncio.Queue[TokenEvent | BaseException | None] = field(default_factory=asyncio.Queue)
    first_token_at: float | None = None
    last_token_at: float | None = None


class LLMEngine:
    def __init__(
        self,
        model: LlamaPaged,
        kv: KVPool,
        tokenizer: Any,
        scheduler: Scheduler,
        max_context: int,
        eos_ids: set[int],
        threads: int | None = None,
    ) -> None:
        self.model, self.kv, self.tokenizer, self.scheduler = model, kv, tokenizer, scheduler
        self.max_context, self.eos_ids = max_context, eos_ids
        self.threads = threads or torch.get_num_threads()
        self._decoder = tokenizer.backend_tokenizer  # fast decode, no clean-up of spaces
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="llm-step")
        self._task: asyncio.Task | None = None
        self._wake: asyncio.Event | None = None
        self._timing: dict[str, float] = dict.fromkeys(
            ("step_seconds", "ttft_seconds", "ttft_count", "itl_seconds", "itl_count", "requests"), 0.0
        )

    @property
    def mode(self) -> Mode:
        return self.scheduler.mode

    # ------------------------------------------------------------------ prompts

    def chat_prompt(self, messages: list[dict[str, str]]) -> list[int]:
        """Token ids of `messages` through the model's chat template, ready for the assistant's turn."""
        ids = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
        return [int(i) for i in ids]

    def text_prompt(self, text: str) -> list[int]:
        return [int(i) for i in self.tokenizer(text)["input_ids"]]

    def decode(self, token_ids: list[int]) -> str:
        return self._decoder.decode(token_ids, skip_special_tokens=True)

    # ------------------------------------------------------------------ requests

    async def generate(
        self,
        request_id: str,
        prompt_ids: list[int],
        params: SamplingParams,
        tier_rank: int = 1,
        deadline: float = math.inf,
    ) -> AsyncIterator[TokenEvent]:
        """Stream the completion of `prompt_ids`. Raises ContextLengthExceededError (before queueing)
        and DeadlineExceededError (no token came before `deadline`, a time.time() instant). Leaving
        the loop early aborts the request."""
        self._check(prompt_ids, params)
        req = _Request(params, params.generator(), IncrementalText(self.decode, params.stop))
        seq = Sequence(
            request_id, list(prompt_ids), params.max_tokens, tier_rank, deadline, time.time(), data=req
        )
        self.scheduler.add(seq)
        self._timing["requests"] += 1
        wake = self._ensure_loop()
        wake.set()
        done = False
        try:
            while True:
                item = await req.queue.get()
                if item is None:  # aborted
                    done = True
                    return
                if isinstance(item, BaseException):
                    done = True
                    raise item
                yield item
                if item.finish_reason is not None:
                    done = True
                    return
        finally:
            if not done:
                self.abort(request_id)

    def abort(self, request_id: str) -> None:
        """Stop a request (its client went away); its blocks are freed at the next step.
        Call from the event loop that runs the engine."""
        if self.scheduler.abort(request_id) and self._wake is not None:
            self._wake.set()

    def stats(self) -> dict[str, float]:
        s, c, t = self.scheduler, self.scheduler.counters, self._timing
        return {
            "running": float(len(s.running)),
            "waiting": float(len(s.waiting)),
            "kv_blocks_used": float(s.blocks.total - s.blocks.num_free),
            "kv_blocks_total": float(s.blocks.total),
            "requests": t["requests"],
            "steps": float(c["steps"]),
            "step_seconds": t["step_seconds"],
            "tokens_generated": float(c["tokens_generated"]),
            "tokens_computed": float(c["tokens_computed"]),  # prompt + recomputed tokens fed to the model
            "prefix_hit_tokens": float(c["prefix_hit_tokens"]),  # prompt tokens whose KV came from the cache
            "kv_blocks_cached": float(s.blocks.num_cached),
            "preemptions": float(c["preemptions"]),
            "preemptions_premium": float(c["preemptions_tier0"]),
            "preemptions_standard": float(c["preemptions_tier1"]),
            "preemptions_batch": float(c["preemptions_tier2"]),
            "deadline_exceeded": float(c["deadline_exceeded"]),
            "aborted": float(c["aborted"]),
            "ttft_seconds_mean": t["ttft_seconds"] / t["ttft_count"] if t["ttft_count"] else 0.0,
            "itl_seconds_mean": t["itl_seconds"] / t["itl_count"] if t["itl_count"] else 0.0,
        }

    def _check(self, prompt_ids: list[int], params: SamplingParams) -> None:
        if not prompt_ids:
            raise ValueError("the prompt is empty")
        if len(prompt_ids) + params.max_tokens > self.max_context:
            raise ContextLengthExceededError(
                f"{len(prompt_ids)} prompt tokens + max_tokens {params.max_tokens} exceed the context of "
                f"{self.max_context} tokens"
            )
        if min(prompt_ids) < 0 or max(prompt_ids) >= self.model.shape.vocab:
            raise ValueError("prompt token ids outside the vocabulary")

    # ------------------------------------------------------------------ the step loop

    def _ensure_loop(self) -> asyncio.Event:
        """Start the step loop in the running event loop (again, if an earlier loop has gone)."""
        if self._task is None or self._task.done() or self._task.get_loop() is not asyncio.get_running_loop():
            self._wake = asyncio.Event()
            self._task = asyncio.get_running_loop().create_task(self._run(), name="llm-step-loop")
        assert self._wake is not None
        return self._wake

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        wake = self._wake
        assert wake is not None
        try:
            while True:
                step = self.scheduler.schedule(time.time())
                for seq in step.expired:
                    seq.data.queue.put_nowait(DeadlineExceededError("deadline passed before the first token"))
                for seq in step.aborted:
                    seq.data.queue.put_nowait(None)
                if not step.chunks:
                    if not (step.expired or step.aborted):
                        await self._idle(wake)
                    continue
                inputs = [SeqInput(c.tokens, c.start, list(c.seq.blocks), c.samples) for c in step.chunks]
                sampling = [(c.seq.data.params, c.seq.data.generator) for c in step.chunks if c.samples]
                t0 = time.perf_counter()
                try:
                    tokens = await loop.run_in_executor(self._executor, self._execute, inputs, sampling)
                except Exception as exc:  # a failed step fails its requests, not the engine
                    log.exception("LLM step failed")
                    for c in step.chunks:
                        self.scheduler.finish(c.seq)
                        c.seq.data.queue.put_nowait(exc)
                    continue
                self._timing["step_seconds"] += time.perf_counter() - t0
                self._deliver(step, tokens)
        finally:
            for seq in self.scheduler.reset():
                seq.data.queue.put_nowait(RuntimeError("the LLM engine's step loop stopped"))

    async def _idle(self, wake: asyncio.Event) -> None:
        """Nothing to compute: sleep until a request arrives or is aborted, or waiting work needs a
        look (a deadline, a dynamic batch's wait); poll if work is stuck for any other reason."""
        wake.clear()
        timeout = self.scheduler.next_wakeup(time.time())
        if timeout is None and self.scheduler.has_work():
            timeout = 0.05
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(wake.wait(), timeout)

    def _execute(self, inputs: list[SeqInput], sampling: list[tuple[SamplingParams, Any]]) -> list[int]:
        """Worker thread: one forward pass and the next token of each sequence that samples.

        A step of a few tokens is hundreds of tiny ops; off the main thread, waking a second OpenMP
        thread for each costs more than it saves (measured: 1 decoding stream, 2 cores: ~17 ms per
        step on one thread, ~23 ms on two), so small steps run on one thread.
        """
        if self.model.device.type == "cpu":
            tokens = sum(len(i.tokens) for i in inputs)
            torch.set_num_threads(self.threads if tokens > SMALL_STEP_TOKENS else 1)
        logits = self.model.compute(inputs, self.kv)
        if not sampling:
            return []
        return choose_tokens(logits, [p for p, _ in sampling], [g for _, g in sampling])

    def _deliver(self, step: Step, tokens: list[int]) -> None:
        now = time.time()
        sampled = iter(tokens)
        for chunk in step.chunks:
            token = next(sampled) if chunk.samples else None
            self.scheduler.complete(chunk, token)
            if token is None:
                continue
            seq, req = chunk.seq, chunk.seq.data
            if req.first_token_at is None:
                req.first_token_at = now
                self._timing["ttft_seconds"] += now - seq.arrived_at
                self._timing["ttft_count"] += 1
            else:
                self._timing["itl_seconds"] += now - (req.last_token_at or now)
                self._timing["itl_count"] += 1
            req.last_token_at = now
            text, stopped = req.text.push([token])
            finish = None
            if stopped or token in self.eos_ids:
                finish = "stop"
            elif len(seq.output_ids) >= req.params.max_tokens:
                finish = "length"
            if finish is not None:
                if not stopped:
                    text += req.text.flush()
                self.scheduler.finish(seq)
            req.queue.put_nowait(TokenEvent(text, [token], finish, len(seq.prompt_ids), len(seq.output_ids)))


def load_llm_engine(
    spec: LLMSpec, threads: int | None = None, cache: Path | None = None, mode: str | None = None
) -> LLMEngine:
    """Resolve (convert once) the weights, size the KV pool from `spec.kv_budget_mb`, build the engine."""
    from transformers import AutoTokenizer

    from infergraph.runtimes.llm.weights import resolve_llm_dir

    if threads:
        torch.set_num_threads(threads)
    model_dir = resolve_llm_dir(spec.source, cache)
    model = paged_model(spec, model_dir)
    return build_llm_engine(model, AutoTokenizer.from_pretrained(model_dir), model_dir, spec, mode, threads)


def paged_model(spec: LLMSpec, model_dir: Path) -> LlamaPaged:
    """The model at `spec`'s precision; `int4_rows` only where it applies (bf16: with no registry
    the catalog's fp32 is served, and the setting waits for the promoted bf16)."""
    int4_rows = spec.int4_rows if spec.precision == "bf16" else 0
    return LlamaPaged(model_dir, spec.precision, max_positions=spec.max_context, int4_rows=int4_rows)


def build_llm_engine(
    model: LlamaPaged,
    tokenizer: Any,
    model_dir: Path,
    spec: LLMSpec,
    mode: str | None = None,
    threads: int | None = None,
) -> LLMEngine:
    """An engine with its own KV pool and scheduler around already loaded weights (several engines
    may share one model, e.g. to compare batching modes)."""
    max_context = min(spec.max_context, model.max_positions)
    num_blocks = KVPool.blocks_for_budget(model.shape, spec.kv_budget_mb, spec.block_size, model.dtype)
    if num_blocks * spec.block_size < max_context:
        raise ValueError(
            f"kv_budget_mb={spec.kv_budget_mb} holds {num_blocks * spec.block_size} tokens, fewer than "
            f"max_context={max_context}: raise the budget or lower max_context"
        )
    kv = KVPool(model.shape, num_blocks, spec.block_size, model.dtype, model.device)
    scheduler = Scheduler(
        num_blocks,
        spec.block_size,
        spec.max_batch_tokens,
        spec.max_running,
        mode=(mode or spec.mode),  # type: ignore[arg-type]
        batch_wait_s=spec.batch_wait_ms / 1000,
        prefix_caching=spec.prefix_caching,
    )
    eos = eos_token_ids(model_dir, tokenizer)
    return LLMEngine(model, kv, tokenizer, scheduler, max_context, eos, threads)


def eos_token_ids(model_dir: Path, tokenizer: Any) -> set[int]:
    """End-of-sequence ids: the generation config's (what `generate` stops on), else the config's and
    the tokenizer's."""
    ids: set[int] = set()
    for name in ("generation_config.json", "config.json"):
        path = model_dir / name
        value = json.loads(path.read_text()).get("eos_token_id") if path.exists() else None
        ids.update([value] if isinstance(value, int) else value or [])
        if ids:
            return ids
    if tokenizer.eos_token_id is not None:
        ids.add(int(tokenizer.eos_token_id))
    return ids
