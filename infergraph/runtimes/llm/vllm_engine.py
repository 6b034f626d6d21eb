"""The LLM engine API on vLLM, for GPU clusters: `engine: vllm` in an LLM's catalog entry.

UNRUN HERE: vLLM installs neither on these CPU machines nor on the lent GPU box, so this adapter is
kept thin and everything around it is tested with a stand-in (tests/unit/test_vllm_adapter.py).
It gives the serving side the same surface as `engine.LLMEngine`: prompts through the model's chat
template, `generate()` yielding `TokenEvent`s, `abort()`, `stats()`. vLLM's own scheduler does the
continuous batching and paged KV cache; our tiers become its request `priority` (its
`scheduling_policy="priority"`: lower runs first, like our ranks), and the deadline on the first
token is enforced here (vLLM has none): a request still silent at its deadline is aborted.

Install on a GPU image: `uv sync --no-default-groups --group vllm` (pyproject.toml keeps the group
apart from the others with uv's `conflicts`).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from infergraph.runtimes.batching import DeadlineExceededError
from infergraph.runtimes.llm.engine import TokenEvent
from infergraph.runtimes.llm.sampling import SamplingParams
from infergraph.runtimes.llm.spec import LLMSpec


def sampling_kwargs(params: SamplingParams) -> dict[str, Any]:
    """Our sampling settings as vLLM's `SamplingParams` keywords (deltas, one sequence each)."""
    return {
        "n": 1,
        "max_tokens": params.max_tokens,
        "temperature": params.temperature,  # 0: greedy in vLLM too
        "top_p": params.top_p,
        "seed": params.seed,
        "stop": list(params.stop),
    }


def token_event(output: Any, prompt_tokens: int, completion_tokens: int) -> TokenEvent:
    """One vLLM `RequestOutput` (delta kind) as our `TokenEvent`; `completion_tokens` so far."""
    choice = output.outputs[0]
    return TokenEvent(
        text=choice.text,
        token_ids=list(choice.token_ids),
        finish_reason=choice.finish_reason if output.finished else None,
        prompt_tokens=prompt_tokens,
        completion_tokens=completion_tokens,
    )


class VllmEngine:
    """`LLMEngine`'s surface over a vLLM `AsyncLLM`."""

    def __init__(self, engine: Any, tokenizer: Any, max_context: int, vllm: Any) -> None:
        self.engine, self.tokenizer, self.max_context, self._vllm = engine, tokenizer, max_context, vllm
        self._running: dict[str, asyncio.Task[Any] | None] = {}
        self.counters = {"requests": 0, "tokens_generated": 0, "deadline_exceeded": 0, "aborted": 0}

    def chat_prompt(self, messages: list[dict[str, str]]) -> list[int]:
        return list(self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True))

    def text_prompt(self, text: str) -> list[int]:
        return list(self.tokenizer.encode(text))

    async def generate(
        self,
        request_id: str,
        prompt_ids: list[int],
        params: SamplingParams,
        tier_rank: int = 1,
        deadline: float = float("inf"),
    ) -> AsyncIterator[TokenEvent]:
        vllm = self._vllm
        sampling = vllm.SamplingParams(**sampling_kwargs(params), output_kind=vllm.RequestOutputKind.DELTA)
        stream = self.engine.generate(
            {"prompt_token_ids": prompt_ids}, sampling, request_id, priority=tier_rank
        )
        self.counters["requests"] += 1
        self._running[request_id] = None
        produced = 0
        try:
            wait = deadline - time.time()
            try:
                first = await asyncio.wait_for(anext(stream), None if wait == float("inf") else max(wait, 0))
            except TimeoutError:
                self.counters["deadline_exceeded"] += 1
                raise DeadlineExceededError() from None
            produced += len(first.outputs[0].token_ids)
            yield token_event(first, len(prompt_ids), produced)
            async for output in stream:
                produced += len(output.outputs[0].token_ids)
                yield token_event(output, len(prompt_ids), produced)
        finally:
            self.counters["tokens_generated"] += produced
            self._running.pop(request_id, None)
            with contextlib.suppress(Exception):
                await stream.aclose()  # vLLM aborts a request whose generator is closed early

    def abort(self, request_id: str) -> None:
        """Free a request's sequence (its client went away)."""
        if request_id in self._running:
            self.counters["aborted"] += 1
            asyncio.get_running_loop().create_task(self.engine.abort(request_id))

    def stats(self) -> dict[str, float]:
        return {"running": float(len(self._running)), **{k: float(v) for k, v in self.counters.items()}}


def load_vllm_engine(spec: LLMSpec, model_dir: Path) -> VllmEngine:
    """A vLLM `AsyncLLM` on `model_dir` with priority scheduling, `spec.vllm_args` passed through."""
    import vllm  # the optional `vllm` dependency group
    from transformers import AutoTokenizer
    from vllm.engine.arg_utils import AsyncEngineArgs
    from vllm.v1.engine.async_llm import AsyncLLM

    args = AsyncEngineArgs(
        model=str(model_dir),
        max_model_len=spec.max_context,
        scheduling_policy="priority",
        **spec.vllm_args,
    )
    engine = AsyncLLM.from_engine_args(args)
    return VllmEngine(engine, AutoTokenizer.from_pretrained(model_dir), spec.max_context, vllm)
