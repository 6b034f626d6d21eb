"""Text-encoder deployment: one per embedding model, with priority-aware dynamic batching.

Requests are tokenized (and checked) on arrival, then a `PriorityBatcher` gathers them: the next
batch takes premium work before batch-tier work (Serve's `@serve.batch` is FIFO), and a batch's
size counts sentences, not requests. The runtime then cuts the batch into length-sorted forward
passes. Each answer says how big its batch was and its share of the compute time, for metrics and
cost accounting in the router.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, Field
from ray import serve

from deployments.schemas import EmbedResult
from runtimes.batching import DeadlineExceededError, PriorityBatcher
from runtimes.catalog import ModelSpec
from runtimes.text_encoder import BatchLimits, InputTooLongError

log = logging.getLogger("ray.serve")


class BatchingConfig(BaseModel):
    """The deployment's `user_config`; changed live through `reconfigure`, no restart."""

    model_config = ConfigDict(extra="forbid")
    max_batch_sentences: int = Field(64, ge=1, description="sentences gathered into one batch")
    batch_wait_timeout_s: float = Field(0.004, ge=0, description="how long a batch waits to fill")
    max_forward_sequences: int = Field(16, ge=1, description="sequences per engine forward pass")
    max_forward_tokens: int = Field(512, ge=1, description="padded tokens per engine forward pass")


@dataclass
class EncodedJob:
    """One request's vectors out of a batch."""

    vectors: Any
    batch_sentences: int
    compute_s: float  # this job's share of its batch's compute time


STANDARD_RANK = 1  # a direct handle call without a tier is treated as standard


@serve.deployment(ray_actor_options={"num_cpus": 1.0}, max_ongoing_requests=128)
class TextEncoderDeployment:
    def __init__(self, spec: dict[str, Any], engine: str = "onnx", threads: int | None = None) -> None:
        from runtimes.loader import load_text_encoder  # engine imports stay out of the app builder

        self.spec = ModelSpec.model_validate(spec)
        threads = threads or int(os.environ.get("INFERGRAPH_ENGINE_THREADS", os.cpu_count() or 1))
        self.encoder = load_text_encoder(self.spec, engine=engine, threads=threads)  # type: ignore[arg-type]
        self.config = BatchingConfig()
        self.batcher = PriorityBatcher(self._encode_batch, self.config.max_batch_sentences, 0.004)
        self.stats = Counter[str]()  # requests, grouped_calls, batches, sentences: is batching working?
        self.encoder.encode(["warm-up sentence so the first real request is not slow"])
        log.info("%s ready on %s (base model, no registry variant)", self.spec.name, self.encoder.engine.name)

    def reconfigure(self, user_config: dict[str, Any]) -> None:
        self.config = BatchingConfig.model_validate(user_config or {})
        self.batcher.max_weight = self.config.max_batch_sentences
        self.batcher.wait_s = self.config.batch_wait_timeout_s
        self.encoder.limits = BatchLimits(self.config.max_forward_sequences, self.config.max_forward_tokens)

    def info(self) -> dict[str, Any]:
        return {
            "id": self.spec.name,
            "kind": self.spec.kind,
            "dimensions": self.encoder.dim,
            "max_input_tokens": self.spec.max_length,
            "engine": self.encoder.engine.name,
            "variant": "base",
            "batching": self.config.model_dump(),
            "stats": dict(self.stats),
        }

    async def embed(
        self, texts: list[str], rank: int = STANDARD_RANK, deadline: float = float("inf")
    ) -> EmbedResult:
        """Embed one request's texts; an over-long input is a client error, not an exception.

        `rank` is the tier (0 = premium) and `deadline` a `time.time()` instant: both order the
        batch queue, and work still queued at its deadline is refused without being computed.
        """
        self.stats["requests"] += 1
        try:
            ids = self.encoder.tokenize(texts)
        except InputTooLongError as exc:
            return EmbedResult(error=str(exc), error_param="input")
        try:
            done: EncodedJob = await self.batcher.submit(ids, len(ids), rank, deadline)
        except DeadlineExceededError:
            self.stats["deadline_drops"] += 1
            return EmbedResult(error="deadline passed while queued in the replica", deadline_exceeded=True)
        return EmbedResult(
            embeddings=done.vectors,
            prompt_tokens=sum(len(row) for row in ids),
            batch_sentences=done.batch_sentences,
            compute_s=done.compute_s,
        )

    async def embed_many(
        self, requests: list[list[str]], ranks: list[int] | None = None, deadlines: list[float] | None = None
    ) -> list[EmbedResult]:
        """Several requests in one call: the router groups queued ones to save per-call overhead."""
        self.stats["grouped_calls"] += 1
        ranks = ranks or [STANDARD_RANK] * len(requests)
        deadlines = deadlines or [float("inf")] * len(requests)
        calls = (self.embed(t, r, d) for t, r, d in zip(requests, ranks, deadlines, strict=True))
        return list(await asyncio.gather(*calls))

    async def _encode_batch(self, jobs: list[list[list[int]]]) -> list[EncodedJob]:
        flat = [row for ids in jobs for row in ids]
        self.stats["batches"] += 1
        self.stats["sentences"] += len(flat)
        started = time.perf_counter()
        # In a thread: the event loop keeps accepting requests (the next batch) during compute.
        vectors = await asyncio.to_thread(self.encoder.encode_ids, flat)
        per_sentence = (time.perf_counter() - started) / len(flat)
        out, start = [], 0
        for ids in jobs:
            out.append(EncodedJob(vectors[start : start + len(ids)], len(flat), per_sentence * len(ids)))
            start += len(ids)
        return out
