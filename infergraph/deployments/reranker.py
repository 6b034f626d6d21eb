"""Re-ranker deployment (`POST /v1/rerank`): one per re-ranker model of the catalog.

Two scorers, chosen per model in configs/models.yaml:
- `hybrid` (the offline default, no new weights): the query and the documents are embedded by a
  served text-encoder through its handle, in one call that carries the request's tier and deadline
  into the encoder's priority batcher; cosine similarity is fused with BM25 over the request's
  documents (runtimes/reranking.py), with a weight measured by `python -m infergraph.optimize.rerank`.
  Documents are cut to the encoder's limit; a query over it is refused (400).
- `cross-encoder`: any Hugging Face sequence-classification model scores (query, document) pairs
  in this replica (runtimes/cross_encoder.py), batched by a `PriorityBatcher` like the encoders.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field
from ray import serve
from ray.serve import Application
from ray.serve.handle import DeploymentHandle

from infergraph.deployments.context import BuildContext
from infergraph.deployments.errors import ApiError
from infergraph.deployments.gateway import Endpoint, ServedModel
from infergraph.protocol.common import Job
from infergraph.protocol.embeddings import EmbedResult, EmbedWork
from infergraph.protocol.rerank import RerankRequest, RerankResult, RerankWork, rerank_payload
from infergraph.runtimes.batching import DeadlineExceededError, PriorityBatcher
from infergraph.runtimes.catalog import CrossEncoderScorer, HybridScorer, ModelSpec, RerankerSpec
from infergraph.runtimes.reranking import hybrid_scores
from infergraph.runtimes.threads import engine_threads

log = logging.getLogger("ray.serve")


class RerankerConfig(BaseModel):
    """The deployment's `user_config`, changed live through `reconfigure`."""

    model_config = ConfigDict(extra="forbid")
    lexical_weight: float | None = Field(None, ge=0, le=1, description="hybrid: overrides the catalog's")
    max_batch_pairs: int = Field(64, ge=1, description="cross-encoder: pairs gathered into one batch")
    batch_wait_timeout_s: float = Field(0.004, ge=0, description="cross-encoder: how long a batch waits")


@dataclass
class _Pairs:
    """A cross-encoder request waiting for a batch: its tokenized pairs."""

    tokenized: Any


@serve.deployment(ray_actor_options={"num_cpus": 0.1}, max_ongoing_requests=256)
class RerankerDeployment:
    def __init__(self, spec: dict[str, Any], encoder: DeploymentHandle | None = None) -> None:
        self.spec = RerankerSpec.model_validate(spec)
        self.config = RerankerConfig()
        self.stats = Counter[str]()
        self.encoder = encoder
        self.cross_encoder: Any = None
        self.batcher: PriorityBatcher[Any, Any] | None = None
        scorer = self.spec.scorer
        if isinstance(scorer, CrossEncoderScorer):
            from infergraph.runtimes.cross_encoder import load_cross_encoder  # engines stay out of the app

            self.cross_encoder = load_cross_encoder(
                scorer, self.spec.max_length, self.spec.max_query_tokens, threads=engine_threads()
            )
            self.batcher = PriorityBatcher(
                self._score_batch, self.config.max_batch_pairs, self.config.batch_wait_timeout_s
            )
        elif encoder is None:
            raise ValueError(f"{self.spec.name}: a hybrid scorer needs its encoder's handle")

    @property
    def lexical_weight(self) -> float:
        scorer = self.spec.scorer
        assert isinstance(scorer, HybridScorer)
        return scorer.lexical_weight if self.config.lexical_weight is None else self.config.lexical_weight

    async def reconfigure(self, user_config: dict[str, Any]) -> None:
        self.config = RerankerConfig.model_validate(user_config or {})
        if self.batcher is not None:
            self.batcher.max_weight = self.config.max_batch_pairs
            self.batcher.wait_s = self.config.batch_wait_timeout_s

    def info(self) -> dict[str, Any]:
        scorer = self.spec.scorer
        if isinstance(scorer, HybridScorer):
            scoring: dict[str, Any] = {**scorer.model_dump(), "lexical_weight": self.lexical_weight}
            engine = f"hybrid({scorer.encoder} + bm25)"
        else:
            scoring = scorer.model_dump(mode="json")
            engine = getattr(self.cross_encoder, "engine_name", "cross-encoder")
        return {
            "id": self.spec.name,
            "kind": self.spec.kind,
            "max_input_tokens": self.spec.max_length,
            "max_documents": self.spec.max_documents,
            "engine": engine,
            "precision": getattr(scorer, "precision", "fp32"),
            "scorer": scoring,
            "batching": self.config.model_dump(exclude_none=True),
            "stats": dict(self.stats),
        }

    # --- requests ---------------------------------------------------------------------------------
    async def run(self, jobs: list[Job[RerankWork]]) -> list[RerankResult]:
        self.stats["grouped_calls"] += 1
        score = self._hybrid if self.cross_encoder is None else self._cross
        return list(await asyncio.gather(*(score(job) for job in jobs)))

    async def _hybrid(self, job: Job[RerankWork]) -> RerankResult:
        """Embed the query and the documents in one encoder call, then fuse with BM25."""
        self.stats["requests"] += 1
        scorer = self.spec.scorer
        assert isinstance(scorer, HybridScorer) and self.encoder is not None
        work = job.work
        query = Job(EmbedWork([scorer.query_prefix + work.query]), job.tier, job.deadline)
        documents = Job(
            EmbedWork([scorer.document_prefix + d for d in work.documents], truncate=True),
            job.tier,
            job.deadline,
        )
        q, d = await self.encoder.run.remote([query, documents])
        if q.deadline_exceeded or d.deadline_exceeded:
            self.stats["deadline_drops"] += 1
            return RerankResult(error="deadline passed while queued", deadline_exceeded=True)
        if q.error or d.error:
            failed: EmbedResult = q if q.error else d
            param = "query" if q.error else "documents"
            message = (failed.error or "").replace("input[0]", "the query") if q.error else failed.error
            return RerankResult(error=message, error_param=param, error_code=failed.error_code)
        started = time.perf_counter()
        scores = await asyncio.to_thread(
            hybrid_scores, work.query, work.documents, q.embeddings[0], d.embeddings, self.lexical_weight
        )
        fuse_s = time.perf_counter() - started
        return RerankResult(
            scores=np.asarray(scores, dtype=np.float32),
            usage_tokens=q.usage_tokens + d.usage_tokens,
            batch_size=d.batch_size,
            compute_s=q.compute_s + d.compute_s + fuse_s,
        )

    async def _cross(self, job: Job[RerankWork]) -> RerankResult:
        """Tokenize the pairs here (a too-long query is a client error), score them in a batch."""
        from infergraph.runtimes.cross_encoder import QueryTooLongError

        self.stats["requests"] += 1
        assert self.batcher is not None
        try:
            tokenized = self.cross_encoder.tokenize(job.work.query, job.work.documents)
        except QueryTooLongError as exc:
            return RerankResult(error=str(exc), error_param="query", error_code="context_length_exceeded")
        try:
            scores, batch_size, compute_s = await self.batcher.submit(
                _Pairs(tokenized), len(job.work.documents), job.tier.rank, job.deadline
            )
        except DeadlineExceededError:
            self.stats["deadline_drops"] += 1
            return RerankResult(error="deadline passed while queued in the replica", deadline_exceeded=True)
        return RerankResult(
            scores=scores, usage_tokens=tokenized.tokens, batch_size=batch_size, compute_s=compute_s
        )

    async def _score_batch(self, jobs: list[_Pairs]) -> list[tuple[np.ndarray, int, float]]:
        pairs = sum(len(j.tokenized) for j in jobs)
        self.stats["batches"] += 1
        self.stats["pairs"] += pairs
        started = time.perf_counter()
        results = await asyncio.to_thread(self.cross_encoder.score_tokenized, [j.tokenized for j in jobs])
        per_pair = (time.perf_counter() - started) / max(1, pairs)
        return [(r, pairs, per_pair * len(j.tokenized)) for r, j in zip(results, jobs, strict=True)]


class RerankEndpoint(Endpoint[RerankRequest, RerankResult]):
    """Cohere-style `POST /v1/rerank` (and `/v2/rerank`, `/rerank` as Infinity and TEI route it)."""

    paths = ("/v1/rerank", "/v2/rerank", "/rerank")
    kinds = ("reranker",)
    request_type = RerankRequest

    async def check(self, req: RerankRequest, model: ServedModel) -> None:
        limit = await model.cached("max_documents")
        if limit is not None and len(req.documents) > limit:
            message = f"{req.model} takes at most {limit} documents per request, got {len(req.documents)}"
            raise ApiError(400, message, param="documents", code="too_many_documents")

    def payload(self, req: RerankRequest, result: RerankResult, path: str) -> bytes:
        return rerank_payload(req, result, api_version="2" if path.startswith("/v2/") else "1")


def rerank_encoders(spec: ModelSpec) -> list[str]:
    """The models a re-ranker calls (served alongside it)."""
    scorer = getattr(spec, "scorer", None)
    return [scorer.encoder] if isinstance(scorer, HybridScorer) else []


def bind_reranker(spec: ModelSpec, ctx: BuildContext, bound: dict[str, Application]) -> Application:
    assert isinstance(spec, RerankerSpec)
    encoder = [bound[name] for name in rerank_encoders(spec)]
    deployment = RerankerDeployment.options(name=spec.name)  # type: ignore[attr-defined]
    return deployment.bind(spec.model_dump(mode="json"), *encoder)
