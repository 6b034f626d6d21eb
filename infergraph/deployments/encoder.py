"""Text-encoder deployment: one per embedding model, with priority-aware dynamic batching.

Requests are tokenized (and checked) on arrival, then a `PriorityBatcher` gathers them: the next
batch takes premium work before batch-tier work (Serve's `@serve.batch` is FIFO), and a batch's
size counts sentences, not requests. The runtime then cuts the batch into length-sorted forward
passes. Each answer says how big its batch was and its share of the compute time, for metrics and
cost accounting in the router.

What it serves is a *variant* (deployments/variants.py): by default the registry's
`models:/<name>@production`, else the base model; `user_config.variant` switches it live. The new
variant is downloaded, verified, loaded and warmed in a thread while the old one keeps serving,
then swapped in; a request is always computed by the encoder that tokenized it. When the variant is
an alias, the replica checks every `alias_refresh_s` where it points, and follows it the same way
when the optimize pipeline moves it.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from ray import serve
from ray.serve import Application

from infergraph.deployments.context import BuildContext
from infergraph.deployments.errors import ApiError
from infergraph.deployments.gateway import Endpoint, ServedModel
from infergraph.deployments.variants import (
    BASE,
    ResolvedVariant,
    alias_version,
    promoted_gpu_precision,
    resolve_variant,
)
from infergraph.protocol.common import Job
from infergraph.protocol.embeddings import EmbeddingRequest, EmbedResult, EmbedWork, embeddings_payload
from infergraph.runtimes.batching import DeadlineExceededError, PriorityBatcher
from infergraph.runtimes.catalog import EncoderSpec, ModelSpec
from infergraph.runtimes.text_encoder import BatchLimits, InputTooLongError, TextEncoder
from infergraph.runtimes.threads import engine_threads

log = logging.getLogger("ray.serve")

WARM_UP = ["warm-up sentence so the first real request is not slow"]
# A request of this many texts tokenizes in a worker thread (the tokenizer releases the GIL), so the
# event loop keeps taking requests and feeding the engine meanwhile: on a GPU replica one call of 256
# took 20 ms to tokenize (results/gpu/serve-log.txt). Smaller ones cost less than the thread hop.
TOKENIZE_IN_THREAD_TEXTS = 64


class BatchingConfig(BaseModel):
    """The batching half of the deployment's `user_config`; changed live through `reconfigure`."""

    model_config = ConfigDict(extra="forbid")
    max_batch_sentences: int = Field(64, ge=1, description="sentences gathered into one batch")
    batch_wait_timeout_s: float = Field(0.004, ge=0, description="how long a batch waits to fill")
    max_forward_sequences: int = Field(16, ge=1, description="sequences per engine forward pass")
    max_forward_tokens: int = Field(512, ge=1, description="padded tokens per engine forward pass")
    max_forward_padding_ratio: float = Field(
        1.15, ge=1.0, description="padded / real tokens per forward pass; more padding: another pass"
    )
    concurrent_batches: int = Field(
        1, ge=1, description="batches computing at once (their passes share the lanes)"
    )

    def limits(self) -> BatchLimits:
        return BatchLimits(
            self.max_forward_sequences, self.max_forward_tokens, self.max_forward_padding_ratio
        )


class EncoderConfig(BatchingConfig):
    """The deployment's whole `user_config`: batching settings plus which variant to serve."""

    variant: str | None = Field(
        None,
        description="'base', models:/<name>@<alias>, models:/<name>/<version> or an artifact folder; "
        "unset: the application's registry.default_variant",
    )

    def batching(self) -> dict[str, Any]:
        return self.model_dump(exclude={"variant"})


@dataclass
class EncodedJob:
    """One request's vectors out of a batch."""

    vectors: Any
    batch_sentences: int
    compute_s: float  # this job's share of its batch's compute time
    started: float  # time.perf_counter() when its batch began
    batch_s: float  # the batch's compute time


@dataclass
class _Tokenized:
    """A request waiting for a batch, with the encoder that tokenized it (and must compute it)."""

    encoder: TextEncoder
    ids: list[list[int]]


def _initial_user_config() -> dict[str, Any]:
    """The user_config this replica starts with (Serve sets the context before the constructor runs),
    so the variant it names is loaded once instead of the default first; {} when unavailable."""
    try:
        config = serve.get_replica_context()._deployment_config.user_config
        return dict(config) if isinstance(config, dict) else {}
    except Exception:
        return {}


class TextEncoderReplica:
    """One replica's encoder, batcher and variant; Serve runs it as `TextEncoderDeployment`, and the
    router runs it in its own process for the models it computes itself (deployments/in_router.py).

    `user_config`: the settings to start with; by default the deployment's, as Serve set them.
    """

    def __init__(
        self,
        spec: dict[str, Any],
        engine: str = "onnx",
        threads: int | None = None,
        tracking_uri: str = "",
        default_variant: str = BASE,
        registry_cache: str | None = None,
        alias_refresh_s: float = 0.0,
        user_config: dict[str, Any] | None = None,
    ) -> None:
        self.spec = EncoderSpec.model_validate(spec)
        self.engine_kind = engine
        self.threads = engine_threads(threads or None)
        # ONNX runs this many forward passes at once (default: one single-threaded pass per thread).
        self.lanes = (
            int(os.environ["INFERGRAPH_ENGINE_LANES"]) if os.environ.get("INFERGRAPH_ENGINE_LANES") else None
        )
        self.tracking_uri = tracking_uri
        self.default_variant = default_variant
        self.registry_cache = Path(registry_cache) if registry_cache else None
        try:
            initial = _initial_user_config() if user_config is None else user_config
            self.config = EncoderConfig.model_validate(initial)
        except ValidationError:  # Serve's first reconfigure reports it
            self.config = EncoderConfig()
        self.stats = Counter[str]()  # requests, grouped_calls, batches, sentences: is batching working?
        self.variant_error: str | None = None
        self._switching = asyncio.Lock()
        self.alias_refresh_s = alias_refresh_s  # 0: a moved alias is noticed at the next start or deploy
        self._alias_task: asyncio.Task | None = None
        self._alias_failed: str | None = None  # the alias's version that failed to load: not retried
        # On a GPU the torch engine runs the base weights at the precision the GPU gate promoted.
        self.gpu_precision: str | None = None
        self.gpu_precision_reason = ""
        if engine == "torch" and os.environ.get("INFERGRAPH_DEVICE", "cpu").startswith("cuda"):
            promoted, reason = promoted_gpu_precision(self.spec.name, tracking_uri)
            self.gpu_precision = promoted or "fp16"
            self.gpu_precision_reason = reason if promoted else f"{reason}: fp16, the GPU default"
        # At start a variant that cannot be served fails the replica (except a default with no
        # registry entry, which serves the base model): there is nothing older to keep serving.
        self.resolved = self._resolve(self.config.variant)
        self.encoder = self._load(self.resolved)
        self.batcher = PriorityBatcher(
            self._encode_batch,
            self.config.max_batch_sentences,
            self.config.batch_wait_timeout_s,
            max_running=self.config.concurrent_batches,
        )
        self._log_serving(self.resolved)

    # --- variants ---------------------------------------------------------------------------------
    def _requested(self, variant: str | None) -> str:
        return variant or self.default_variant

    def _resolve(self, variant: str | None) -> ResolvedVariant:
        """Resolve what `variant` (None: the default) names; blocking (MLflow, downloads, hashing)."""
        return resolve_variant(
            self.spec.name,
            self._requested(variant),
            self.tracking_uri,
            self.registry_cache,
            allow_base_fallback=variant is None,
        )

    def _load(self, resolved: ResolvedVariant) -> TextEncoder:
        """Build, and warm, the encoder for a resolved variant; blocking."""
        from infergraph.runtimes.loader import (  # engines stay out of the app
            load_artifact_encoder,
            load_text_encoder,
        )

        limits = self.config.limits()
        if resolved.artifact_dir is None:
            encoder = load_text_encoder(
                self.spec,
                engine=self.engine_kind,  # type: ignore[arg-type]
                threads=self.threads,
                limits=limits,
                lanes=self.lanes,
                gpu_precision=self.gpu_precision or "fp16",
            )
        else:
            encoder, _ = load_artifact_encoder(
                self.spec, resolved.artifact_dir, threads=self.threads, limits=limits, lanes=self.lanes
            )
        encoder.encode(WARM_UP)
        return encoder

    def _log_serving(self, resolved: ResolvedVariant) -> None:
        engine = self.encoder.engine.name
        if resolved.source == "base" and resolved.requested != BASE:
            log.warning("%s serves the base model on %s: %s", self.spec.name, engine, resolved.reason)
        else:
            log.info("%s serves %s on %s: %s", self.spec.name, resolved.variant, engine, resolved.reason)

    async def _switch_variant(self, variant: str | None, moved_alias: bool = False) -> bool:
        """Resolve + load + warm in a thread while the current encoder serves, then swap it in.

        `moved_alias`: the same request string now names another version. False when nothing changed.
        """
        requested = self._requested(variant)
        if requested == self.resolved.requested and not moved_alias:
            self.variant_error = None  # asked for what is served (again): nothing to load
            return False
        log.info("%s: switching variant %s -> %s", self.spec.name, self.resolved.requested, requested)
        try:
            resolved = await asyncio.to_thread(self._resolve, variant)
            if moved_alias and resolved.uri == self.resolved.uri:
                return False
            encoder = await asyncio.to_thread(self._load, resolved)
        except Exception as exc:  # keep serving what is loaded; say why in logs and the card
            self.variant_error = (
                f"variant {requested!r} not loaded, still serving {self.resolved.requested!r}: {exc}"
            )
            log.error("%s: %s", self.spec.name, self.variant_error)
            return False
        # One assignment each, no await between them: batches that started keep their encoder.
        encoder.limits = self.config.limits()
        self.encoder, self.resolved, self.variant_error = encoder, resolved, None
        self.stats["variant_switches"] += 1
        self._log_serving(resolved)
        return True

    def _follow_alias(self) -> None:
        """Start, once, the check that follows a moved alias (it needs the replica's event loop)."""
        if self.alias_refresh_s > 0 and (self._alias_task is None or self._alias_task.done()):
            self._alias_task = asyncio.get_running_loop().create_task(self._alias_loop())

    async def _alias_loop(self) -> None:
        while True:
            await asyncio.sleep(self.alias_refresh_s)
            requested = self._requested(self.config.variant)
            try:
                version = await asyncio.to_thread(alias_version, requested, self.tracking_uri)
            except Exception as exc:  # a store that cannot be read now: keep serving, ask again
                log.warning("%s: could not read where %s points: %s", self.spec.name, requested, exc)
                continue
            if version is None or version in (self.resolved.version, self._alias_failed):
                continue  # not an alias, gone (keep what serves), unmoved, or already failed
            log.info("%s: %s moved to version %s", self.spec.name, requested, version)
            async with self._switching:
                if await self._switch_variant(self.config.variant, moved_alias=True):
                    self._alias_failed = None
                elif self.variant_error:
                    self._alias_failed = version

    async def reconfigure(self, user_config: dict[str, Any]) -> None:
        self._follow_alias()
        config = EncoderConfig.model_validate(user_config or {})
        previous_variant = self.config.variant
        self.config = config
        self.batcher.max_weight = config.max_batch_sentences
        self.batcher.wait_s = config.batch_wait_timeout_s
        self.batcher.max_running = config.concurrent_batches
        self.encoder.limits = config.limits()
        if config.variant != previous_variant:  # batching-only changes reload nothing
            async with self._switching:
                await self._switch_variant(config.variant)

    def info(self) -> dict[str, Any]:
        resolved = self.resolved
        return {
            "id": self.spec.name,
            "kind": self.spec.kind,
            "dimensions": self.encoder.dim,
            "max_input_tokens": self.spec.max_length,
            "engine": self.encoder.engine.name,
            "forward_lanes": self.encoder.lanes,
            "variant": resolved.variant,
            "variant_uri": resolved.uri,
            "variant_source": resolved.source,
            "variant_requested": resolved.requested,
            "precision": resolved.precision,
            "variant_reason": resolved.reason,
            "variant_error": self.variant_error,
            "gpu_precision": self.gpu_precision,
            "gpu_precision_reason": self.gpu_precision_reason or None,
            "batching": self.config.batching(),
            "stats": dict(self.stats),
        }

    # --- requests ---------------------------------------------------------------------------------
    async def run(self, jobs: list[Job[EmbedWork]]) -> list[EmbedResult]:
        """Several requests in one call: the router groups queued ones to save per-call overhead."""
        self.stats["grouped_calls"] += 1
        received = time.time()
        results = list(await asyncio.gather(*(self.embed(job) for job in jobs)))
        returned = time.time()
        for result in results:
            result.replica_in, result.replica_out = received, returned
        return results

    async def embed(self, job: Job[EmbedWork]) -> EmbedResult:
        """Embed one request's texts; an over-long input is a client error (unless it asked to be
        truncated), not an exception. The tier and deadline order the batch queue, and work still
        queued at its deadline is refused without being computed."""
        self.stats["requests"] += 1
        self._follow_alias()
        encoder = self.encoder  # the one that tokenizes is the one that computes, across a swap
        work = job.work
        try:
            if len(work.texts) >= TOKENIZE_IN_THREAD_TEXTS:
                ids, truncated = await asyncio.to_thread(_tokenize, encoder, work)
            else:
                ids, truncated = _tokenize(encoder, work)
        except InputTooLongError as exc:
            return EmbedResult(error=str(exc), error_param="input", error_code="context_length_exceeded")
        self.stats["truncated"] += truncated
        submitted = time.perf_counter()
        try:
            done: EncodedJob = await self.batcher.submit(
                _Tokenized(encoder, ids), len(ids), job.tier.rank, job.deadline
            )
        except DeadlineExceededError:
            self.stats["deadline_drops"] += 1
            return EmbedResult(error="deadline passed while queued in the replica", deadline_exceeded=True)
        return EmbedResult(
            embeddings=done.vectors,
            usage_tokens=sum(len(row) for row in ids),
            batch_size=done.batch_sentences,
            compute_s=done.compute_s,
            replica_wait_s=done.started - submitted,
            batch_s=done.batch_s,
            truncated=truncated,
        )

    async def _encode_batch(self, jobs: list[_Tokenized]) -> list[EncodedJob]:
        flat = [row for job in jobs for row in job.ids]
        self.stats["batches"] += 1
        self.stats["sentences"] += len(flat)
        started = time.perf_counter()
        # In a thread: the event loop keeps accepting requests (the next batch) during compute.
        # A batch straddling a variant swap runs each request on the encoder that tokenized it.
        encoders = list({id(job.encoder): job.encoder for job in jobs}.values())
        if len(encoders) == 1:
            vectors = await asyncio.to_thread(encoders[0].encode_ids, flat)
            parts = _split(vectors, jobs)
        else:
            parts = [await asyncio.to_thread(job.encoder.encode_ids, job.ids) for job in jobs]
        batch_s = time.perf_counter() - started
        per_sentence = batch_s / len(flat)
        return [
            EncodedJob(part, len(flat), per_sentence * len(job.ids), started, batch_s)
            for part, job in zip(parts, jobs, strict=True)
        ]


TextEncoderDeployment = serve.deployment(ray_actor_options={"num_cpus": 1.0}, max_ongoing_requests=128)(
    TextEncoderReplica
)


def _tokenize(encoder: TextEncoder, work: EmbedWork) -> tuple[list[list[int]], int]:
    """(token ids per text, how many texts were truncated)."""
    if work.truncate:
        return encoder.tokenize_truncating(work.texts, work.truncation_direction)
    return encoder.tokenize(work.texts), 0


def _split(vectors: Any, jobs: list[_Tokenized]) -> list[Any]:
    out, start = [], 0
    for job in jobs:
        out.append(vectors[start : start + len(job.ids)])
        start += len(job.ids)
    return out


class EmbeddingsEndpoint(Endpoint[EmbeddingRequest, EmbedResult]):
    """`POST /v1/embeddings` on text-encoder models."""

    paths = ("/v1/embeddings",)
    kinds = ("text-encoder",)
    request_type = EmbeddingRequest

    async def check(self, req: EmbeddingRequest, model: ServedModel) -> None:
        if req.dimensions is not None and req.dimensions != (dims := await model.cached("dimensions")):
            raise ApiError(400, f"{req.model} only returns {dims} dimensions", param="dimensions")

    def payload(self, req: EmbeddingRequest, result: EmbedResult, path: str) -> bytes:
        return embeddings_payload(req, result)


def encoder_arguments(spec: ModelSpec, ctx: BuildContext) -> dict[str, Any]:
    """What a `TextEncoderReplica` of one catalog entry is built with (by Serve, or by the router)."""
    return {
        "spec": spec.model_dump(),
        "engine": ctx.engine,
        "tracking_uri": ctx.tracking_uri,
        "default_variant": ctx.default_variant.format(name=spec.name),
        "registry_cache": ctx.registry_cache,
        "alias_refresh_s": ctx.alias_refresh_s,
    }


def bind_encoder(spec: ModelSpec, ctx: BuildContext, bound: dict[str, Application]) -> Application:
    """The text-encoder deployment for one catalog entry, named after the model."""
    deployment = TextEncoderDeployment.options(name=spec.name)
    return deployment.bind(**encoder_arguments(spec, ctx))
