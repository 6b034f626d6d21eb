"""Speech-to-text deployment (`POST /v1/audio/transcriptions`, `/v1/audio/translations`): one per
Whisper model of the catalog.

The router probes the upload's header (not audio: 400; too long: 413) and meters it in audio seconds;
the replica decodes it, cuts it into windows at silences and queues the windows, with the request's
tier and deadline, in the one `WindowScheduler` its engine runs (runtimes/speech/). Windows of all
requests in flight share each batched pass, most urgent first: a premium clip waits for at most the
pass already running. Engine and precision come from `models:/<name>@production` (the variant
`python -m infergraph.optimize.speech` promoted) or else the catalog entry.
"""

from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, ClassVar, Literal

from ray import serve
from ray.serve import Application

from infergraph.deployments.context import BuildContext
from infergraph.deployments.errors import ApiError
from infergraph.deployments.gateway import Endpoint, ServedModel
from infergraph.deployments.variants import promoted_tags
from infergraph.protocol.audio import (
    MEDIA_TYPES,
    Segment,
    TranscribeWork,
    TranscriptionRequest,
    TranscriptionResult,
    Word,
    transcription_payload,
)
from infergraph.protocol.common import Job, Tier
from infergraph.runtimes.catalog import ModelSpec
from infergraph.runtimes.speech.audio import AudioError, probe
from infergraph.runtimes.speech.engine import DecodeOptions
from infergraph.runtimes.speech.scheduler import DeadlineExceeded
from infergraph.runtimes.speech.spec import SpeechSpec

log = logging.getLogger("ray.serve")


@serve.deployment(ray_actor_options={"num_cpus": 0.8}, max_ongoing_requests=256)
class SpeechDeployment:
    def __init__(self, spec: dict[str, Any], tracking_uri: str = "") -> None:
        from infergraph.runtimes.speech.loader import load_speech_engine  # engines stay out of the router
        from infergraph.runtimes.speech.transcriber import Transcriber

        self.spec = SpeechSpec.model_validate(spec)
        self.variant_reason, self.variant_uri = "the catalog's engine and precision", None
        if tracking_uri:
            tags, reason = promoted_tags(self.spec.name, tracking_uri)
            if tags and tags.get("engine") and tags.get("precision"):
                self.spec = self.spec.model_copy(
                    update={"engine": tags["engine"], "precision": tags["precision"]}
                )
                self.variant_reason = self.variant_uri = reason
            else:
                self.variant_reason = f"{reason}: {self.variant_reason}"
        self.engine = load_speech_engine(self.spec)  # threads: runtimes.threads.engine_threads
        self.transcriber = Transcriber(
            self.engine, self.spec.max_windows_per_pass, express_lane=self.spec.express_lane
        )
        # Decoding and voice detection run beside the engine threads, one request at a time per tier:
        # a premium clip's never waits behind a batch hour's.
        self.prepare_pools = {
            tier: ThreadPoolExecutor(1, thread_name_prefix=f"prepare-{tier}") for tier in Tier
        }
        self.requests = self.refused = 0
        log.info(
            "%s: %s %s ready (%s)", self.spec.name, self.spec.engine, self.spec.precision, self.variant_reason
        )

    def info(self) -> dict[str, Any]:
        stats = self.transcriber.scheduler.stats
        return {
            "id": self.spec.name,
            "kind": self.spec.kind,
            "max_input_tokens": 224,  # prompt tokens Whisper conditions on
            "max_audio_s": self.spec.max_audio_s,
            "multilingual": self.engine.multilingual,
            "engine": self.spec.engine,
            "precision": self.spec.precision,
            "variant": f"{self.spec.engine}-{self.spec.precision}",
            "variant_uri": self.variant_uri,
            "variant_source": "registry" if self.variant_uri else "base",
            "variant_reason": self.variant_reason,
            "batching": {"max_windows_per_pass": self.spec.max_windows_per_pass},
            "stats": {
                "requests": self.requests,
                "refused": self.refused + stats.refused,
                "passes": stats.passes,
                "windows": stats.windows,
                "queued_windows": self.transcriber.scheduler.queued_windows(),
            },
        }

    async def run(self, jobs: list[Job[TranscribeWork]]) -> list[TranscriptionResult]:
        return list(await asyncio.gather(*(self._transcribe(job) for job in jobs)))

    async def _transcribe(self, job: Job[TranscribeWork]) -> TranscriptionResult:
        work = job.work
        self.requests += 1
        options = DecodeOptions(
            work.language, work.task, work.prompt, work.temperature, work.timestamps, work.words
        )
        loop = asyncio.get_running_loop()
        try:
            self.transcriber.check(options)
            if time.time() > job.deadline:
                raise DeadlineExceeded("deadline passed before decoding")
            pool = self.prepare_pools[job.tier]
            prepared = await loop.run_in_executor(pool, self.transcriber.prepare, work.audio)
            if prepared.duration_s > self.spec.max_audio_s:
                limit = self.spec.max_audio_s
                message = f"the audio is {prepared.duration_s:.0f} s; this model takes at most {limit:.0f} s"
                raise AudioError(message, "audio_too_long", 413)
            future = self.transcriber.submit(prepared, options, job.tier.rank, job.deadline)
            outputs, compute_s = await asyncio.wrap_future(future)
        except AudioError as exc:
            param = "language" if exc.code == "unsupported_language" else "file"
            param = "model" if exc.code == "model_not_supported" else param
            param = "timestamp_granularities[]" if exc.code == "unsupported_option" else param
            return TranscriptionResult(
                error=exc.message, error_param=param, error_code=exc.code, error_status=exc.status
            )
        except DeadlineExceeded as exc:
            self.refused += 1
            return TranscriptionResult(deadline_exceeded=True, error=str(exc))
        transcript = self.transcriber.stitch(prepared, outputs, work.language)
        return TranscriptionResult(
            text=transcript.text,
            language=transcript.language,
            duration_s=transcript.duration_s,
            segments=[
                Segment(s.id, s.start, s.end, s.text, s.tokens, s.avg_logprob) for s in transcript.segments
            ],
            words=[Word(w.word, w.start, w.end) for w in transcript.words] if work.words else None,
            usage_tokens=sum(len(s.tokens) for s in transcript.segments),
            batch_size=len(prepared.windows),
            compute_s=compute_s,
        )

    def __del__(self) -> None:
        self.transcriber.close()


class TranscriptionsEndpoint(Endpoint[TranscriptionRequest, TranscriptionResult]):
    """OpenAI `POST /v1/audio/transcriptions` (multipart)."""

    paths = ("/v1/audio/transcriptions",)
    kinds = ("speech-to-text",)
    request_type = TranscriptionRequest
    body = "multipart"
    task: ClassVar[Literal["transcribe", "translate"]] = "transcribe"

    async def check(self, req: TranscriptionRequest, model: ServedModel) -> None:
        """The header, read here: what is not audio is refused before it is queued, and the request is
        metered in seconds of audio."""
        try:
            info = probe(req.file.data)
        except AudioError as exc:
            raise ApiError(exc.status, exc.message, "file", exc.code) from None
        limit = await model.cached("max_audio_s")
        if limit and info.duration_s > limit:
            message = f"the audio is {info.duration_s:.0f} s; {model.name} takes at most {limit:.0f} s"
            raise ApiError(413, message, "file", "audio_too_long")
        if self.task == "translate" and not await model.cached("multilingual"):
            raise ApiError(
                400, f"{model.name} is English-only and cannot translate", "model", "model_not_supported"
            )
        req._duration_s = info.duration_s

    def work(self, req: TranscriptionRequest) -> TranscribeWork:
        return req.work(self.task, req._duration_s)

    def media_type(self, req: TranscriptionRequest) -> str:
        return MEDIA_TYPES[req.response_format]

    def payload(self, req: TranscriptionRequest, result: TranscriptionResult, path: str) -> bytes:
        return transcription_payload(req, result, self.task)


class TranslationsEndpoint(TranscriptionsEndpoint):
    """OpenAI `POST /v1/audio/translations`: speech in any language -> English text (multilingual
    models only)."""

    paths = ("/v1/audio/translations",)
    task = "translate"


def bind_speech(spec: ModelSpec, ctx: BuildContext, bound: dict[str, Application]) -> Application:
    assert isinstance(spec, SpeechSpec)
    deployment = SpeechDeployment.options(name=spec.name)  # type: ignore[attr-defined]
    tracking_uri = "" if ctx.default_variant == "base" else ctx.tracking_uri
    return deployment.bind(spec.model_dump(mode="json"), tracking_uri=tracking_uri)
