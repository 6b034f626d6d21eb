"""LLM deployment (`POST /v1/chat/completions`, `/v1/completions`): one per LLM of the catalog.

The replica owns one engine (runtimes/llm/): continuous batching at the iteration level, a paged KV
cache, tiers in the scheduler. A request arrives as one typed `Job` on a streaming handle call and
leaves as `LLMEvent`s: the first one is a refusal (prompt over the context window, deadline on the
first token) or text; `n` choices run as `n` sequences whose events interleave. When the router
closes the stream (the client went away), the sequences are aborted at the engine's next step.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any

from ray import serve
from ray.serve import Application

from infergraph.deployments.context import BuildContext
from infergraph.deployments.gateway import Endpoint
from infergraph.deployments.variants import promoted_tags
from infergraph.protocol.common import Job
from infergraph.protocol.llm import ChatCompletionRequest, Completion, CompletionRequest, LLMEvent, LLMWork
from infergraph.runtimes.catalog import ModelSpec
from infergraph.runtimes.llm.spec import LLMSpec
from infergraph.runtimes.threads import engine_threads

log = logging.getLogger("ray.serve")

_DONE = object()


def promoted_precision(name: str, tracking_uri: str) -> tuple[str | None, str]:
    """The precision `python -m infergraph.optimize.llm` promoted (`models:/<name>@production`, the
    version's `precision` tag), and how it was found; None when the registry has no such entry."""
    tags, reason = promoted_tags(name, tracking_uri)
    return (tags or {}).get("precision"), reason if tags else f"{reason}: the catalog's precision"


@serve.deployment(ray_actor_options={"num_cpus": 0.8}, max_ongoing_requests=1024)
class LLMDeployment:
    def __init__(self, spec: dict[str, Any], mode: str | None = None, tracking_uri: str = "") -> None:
        from infergraph.runtimes.llm.engine import load_llm_engine  # torch stays out of the router

        self.spec = LLMSpec.model_validate(spec)
        self.variant_reason = "the catalog's precision"
        self.variant_uri: str | None = None
        if self.spec.engine == "infergraph":
            precision, self.variant_reason = promoted_precision(self.spec.name, tracking_uri)
            if precision is not None:
                self.spec = self.spec.model_copy(update={"precision": precision})
                self.variant_uri = self.variant_reason
        self.engine: Any
        if self.spec.engine == "vllm":  # GPU clusters; unrun here (runtimes/llm/vllm_engine.py)
            from infergraph.runtimes.llm.vllm_engine import load_vllm_engine
            from infergraph.runtimes.llm.weights import resolve_llm_dir

            self.engine = load_vllm_engine(self.spec, resolve_llm_dir(self.spec.source))
        else:
            self.engine = load_llm_engine(self.spec, threads=engine_threads(self.spec.threads), mode=mode)
        log.info(
            "%s: LLM engine ready (max context %d, %s: %s)",
            self.spec.name,
            self.engine.max_context,
            getattr(self.spec, "precision", "fp32"),
            self.variant_reason,
        )

    def info(self) -> dict[str, Any]:
        stats = self.engine.stats()
        return {
            "id": self.spec.name,
            "kind": self.spec.kind,
            "max_input_tokens": self.engine.max_context,
            "engine": "vllm" if self.spec.engine == "vllm" else f"infergraph-llm ({self.spec.mode})",
            "precision": getattr(self.spec, "precision", "fp32"),
            "variant": getattr(self.spec, "precision", "fp32"),
            "variant_uri": self.variant_uri,
            "variant_source": "registry" if self.variant_uri else "base",
            "variant_reason": self.variant_reason,
            "stats": {k: int(v) for k, v in stats.items() if isinstance(v, int | float)},
        }

    def _prompt(self, work: LLMWork) -> list[int]:
        if work.messages is not None:
            return self.engine.chat_prompt(work.messages)
        return self.engine.text_prompt(work.prompt or "")

    async def generate(self, job: Job[LLMWork]) -> AsyncIterator[LLMEvent]:
        """Stream one request's events; `n` sequences share the prompt and interleave their text."""
        from infergraph.runtimes.llm.engine import (
            ContextLengthExceededError,
            DeadlineExceededError,
            SamplingParams,
        )

        work = job.work
        param = "messages" if work.messages is not None else "prompt"
        try:
            prompt = self._prompt(work)
            room = self.engine.max_context - len(prompt)
            max_tokens = work.max_tokens if work.max_tokens is not None else max(1, room)
            if len(prompt) + max_tokens > self.engine.max_context:
                raise ContextLengthExceededError(
                    f"this model's maximum context length is {self.engine.max_context} tokens; the "
                    f"{param} has {len(prompt)} tokens and max_tokens is {max_tokens}"
                )
        except ContextLengthExceededError as exc:
            yield LLMEvent(error=str(exc), error_param=param, error_code="context_length_exceeded")
            return
        if not prompt:  # e.g. /v1/completions with prompt "": nothing to continue, the client's to fix
            yield LLMEvent(error=f"the {param} is empty", error_param=param, error_code="invalid_value")
            return
        base = SamplingParams(max_tokens, work.temperature, work.top_p, work.seed, work.stop)
        ids = [f"{uuid.uuid4().hex}-{i}" for i in range(work.n)]
        events: asyncio.Queue[Any] = asyncio.Queue()

        async def run(index: int, request_id: str) -> None:
            seed = None if base.seed is None else base.seed + index
            try:
                stream = self.engine.generate(
                    request_id, prompt, replace(base, seed=seed), job.tier.rank, job.deadline
                )
                async for token in stream:
                    await events.put(_event(index, token))
            except DeadlineExceededError:
                await events.put(
                    LLMEvent(index, deadline_exceeded=True, error="deadline passed before the first token")
                )
            except ContextLengthExceededError as exc:
                await events.put(
                    LLMEvent(index, error=str(exc), error_param=param, error_code="context_length_exceeded")
                )
            except Exception as exc:  # the engine failed: an explicit 503, never a silent end
                log.exception("%s: generation failed", self.spec.name)
                error = f"generation failed: {exc}"  # the gateway answers 503 generation_failed
                await events.put(LLMEvent(index, error=error, failed=True))
            finally:
                await events.put(_DONE)

        tasks = [asyncio.create_task(run(i, rid)) for i, rid in enumerate(ids)]
        try:
            running = len(tasks)
            while running:
                event = await events.get()
                if event is _DONE:
                    running -= 1
                    continue
                yield event
        finally:  # finished, or the router closed the stream: free every sequence
            for rid in ids:
                self.engine.abort(rid)
            for task in tasks:
                task.cancel()


def _event(index: int, token: Any) -> LLMEvent:
    """The wire event for one engine `TokenEvent`."""
    return LLMEvent(
        index=index,
        text=token.text,
        finish_reason=token.finish_reason,
        prompt_tokens=token.prompt_tokens,
        completion_tokens=token.completion_tokens,
    )


class ChatCompletionsEndpoint(Endpoint[ChatCompletionRequest, Any]):
    """OpenAI `POST /v1/chat/completions`, streamed or not."""

    paths = ("/v1/chat/completions",)
    kinds = ("llm",)
    request_type = ChatCompletionRequest
    streams = True

    def completion(self, req: ChatCompletionRequest) -> Completion:
        return Completion(req, chat=True)


class CompletionsEndpoint(Endpoint[CompletionRequest, Any]):
    """OpenAI `POST /v1/completions` (legacy text completions), streamed or not."""

    paths = ("/v1/completions",)
    kinds = ("llm",)
    request_type = CompletionRequest
    streams = True

    def completion(self, req: CompletionRequest) -> Completion:
        return Completion(req, chat=False)


def bind_llm(spec: ModelSpec, ctx: BuildContext, bound: dict[str, Application]) -> Application:
    assert isinstance(spec, LLMSpec)
    deployment = LLMDeployment.options(name=spec.name)  # type: ignore[attr-defined]
    tracking_uri = "" if ctx.default_variant == "base" else ctx.tracking_uri
    return deployment.bind(spec.model_dump(mode="json"), tracking_uri=tracking_uri)
