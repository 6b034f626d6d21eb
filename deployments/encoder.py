"""Text-encoder deployment: one per embedding model, with dynamic batching inside Serve.

Requests are tokenized (and checked) on arrival, then Serve's `@serve.batch` gathers them; a
batch's size counts sentences, not requests, so one 32-sentence request weighs as much as 32
single ones. The runtime then cuts the batch into length-sorted forward passes.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections import Counter
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, Field
from ray import serve

from deployments.schemas import EmbedResult
from runtimes.catalog import ModelSpec
from runtimes.text_encoder import BatchLimits, InputTooLongError

log = logging.getLogger("ray.serve")


class BatchingConfig(BaseModel):
    """The deployment's `user_config`; changed live through `reconfigure`, no restart."""

    model_config = ConfigDict(extra="forbid")
    max_batch_sentences: int = Field(64, ge=1, description="sentences gathered into one Serve batch")
    batch_wait_timeout_s: float = Field(0.004, ge=0, description="how long a batch waits to fill")
    max_forward_sequences: int = Field(16, ge=1, description="sequences per engine forward pass")
    max_forward_tokens: int = Field(512, ge=1, description="padded tokens per engine forward pass")


@dataclass
class EncodeJob:
    """One request's token ids on their way through the batch queue."""

    ids: list[list[int]]
    weight: int  # sentences, capped at the batch size so a big request still fits alone


def _batch_weight(jobs: list[EncodeJob]) -> int:
    return sum(job.weight for job in jobs)


@serve.deployment(ray_actor_options={"num_cpus": 1.0}, max_ongoing_requests=128)
class TextEncoderDeployment:
    def __init__(self, spec: dict[str, Any], engine: str = "onnx", threads: int | None = None) -> None:
        from runtimes.loader import load_text_encoder  # engine imports stay out of the app builder

        self.spec = ModelSpec.model_validate(spec)
        threads = threads or int(os.environ.get("INFERGRAPH_ENGINE_THREADS", os.cpu_count() or 1))
        self.encoder = load_text_encoder(self.spec, engine=engine, threads=threads)  # type: ignore[arg-type]
        self.config = BatchingConfig()
        self.stats = Counter[str]()  # requests, coalesced_calls, batches, sentences: is batching working?
        self.encoder.encode(["warm-up sentence so the first real request is not slow"])
        log.info("%s ready on %s (base model, no registry variant)", self.spec.name, self.encoder.engine.name)

    def reconfigure(self, user_config: dict[str, Any]) -> None:
        self.config = BatchingConfig.model_validate(user_config or {})
        self._encode_batch.set_max_batch_size(self.config.max_batch_sentences)  # type: ignore[attr-defined]
        self._encode_batch.set_batch_wait_timeout_s(self.config.batch_wait_timeout_s)  # type: ignore[attr-defined]
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

    async def embed(self, texts: list[str]) -> EmbedResult:
        """Embed one request's texts; an over-long input is a client error, not an exception."""
        self.stats["requests"] += 1
        try:
            ids = self.encoder.tokenize(texts)
        except InputTooLongError as exc:
            return EmbedResult(error=str(exc), error_param="input")
        weight = min(len(ids), self.config.max_batch_sentences)
        vectors = await self._encode_batch(EncodeJob(ids, weight))
        return EmbedResult(embeddings=vectors, prompt_tokens=sum(len(row) for row in ids))

    async def embed_many(self, requests: list[list[str]]) -> list[EmbedResult]:
        """Several requests in one call: the router coalesces small ones to save per-call overhead."""
        self.stats["coalesced_calls"] += 1
        return list(await asyncio.gather(*(self.embed(texts) for texts in requests)))

    @serve.batch(max_batch_size=64, batch_wait_timeout_s=0.004, batch_size_fn=_batch_weight)
    async def _encode_batch(self, jobs: list[EncodeJob]) -> list[Any]:
        flat = [row for job in jobs for row in job.ids]
        self.stats["batches"] += 1
        self.stats["sentences"] += len(flat)
        # In a thread: the event loop keeps accepting requests (the next batch) during compute.
        vectors = await asyncio.to_thread(self.encoder.encode_ids, flat)
        out, start = [], 0
        for job in jobs:
            out.append(vectors[start : start + len(job.ids)])
            start += len(job.ids)
        return out
