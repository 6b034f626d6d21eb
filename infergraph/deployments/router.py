"""The router: the FastAPI ingress every request enters through.

Per request: API key -> tenant (401), the tenant's rate limits and quota (429), body validation
(400), model lookup and permission (404/403), then the model's admission queue, which orders work
by tier, refuses what cannot meet its deadline and caps what is in flight to the deployment
(deployments/admission.py). Answers are OpenAI-shaped; every refusal carries Retry-After.
"""

import asyncio
import base64
import logging
import time
from typing import Any

import numpy as np
import orjson
from fastapi import FastAPI, Request
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from ray import serve
from ray.serve.handle import DeploymentHandle
from ray.serve.schema import ReplicaState

from infergraph.deployments.admission import ModelQueue, Ticket
from infergraph.deployments.errors import ApiError, describe_validation_error, install_error_handlers
from infergraph.deployments.metrics import RouterMetrics
from infergraph.deployments.schemas import EmbeddingRequest, EmbedResult, ModelCard
from infergraph.deployments.tenants import Rejection, TenantRegistry, TenantsConfig, TenantState

log = logging.getLogger("ray.serve")

DEFAULT_MAX_BODY_BYTES = 4 * 1024 * 1024

app = FastAPI(
    title="infergraph",
    description="OpenAI-compatible multi-model inference on Ray Serve.",
    version="0.1.0",
)
install_error_handlers(app)


async def read_json_body(request: Request, limit: int) -> Any:
    """Parse the JSON body, refusing more than `limit` bytes before reading them all."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise ApiError(413, f"request body is {declared} bytes; the limit is {limit}", code="body_too_large")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise ApiError(413, f"request body exceeds the limit of {limit} bytes", code="body_too_large")
        chunks.append(chunk)
    try:
        return orjson.loads(b"".join(chunks))
    except orjson.JSONDecodeError:
        raise ApiError(400, "request body is not valid JSON", code="invalid_json") from None


def embedding_payload(req: EmbeddingRequest, result: EmbedResult) -> bytes:
    vectors: np.ndarray = result.embeddings
    if req.encoding_format == "base64":
        rows: list[Any] = [base64.b64encode(v.astype("<f4").tobytes()).decode() for v in vectors]
    else:
        rows = list(vectors)  # orjson writes numpy rows natively
    body = {
        "object": "list",
        "data": [{"object": "embedding", "index": i, "embedding": row} for i, row in enumerate(rows)],
        "model": req.model,
        "usage": {"prompt_tokens": result.prompt_tokens, "total_tokens": result.prompt_tokens},
    }
    return orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY)


class AdmissionConfig(BaseModel):
    """How the router meters work into each model deployment (see deployments/admission.py)."""

    model_config = ConfigDict(extra="forbid")
    max_in_flight_per_replica: int = Field(128, ge=1, description="sentences out at once per replica")
    max_calls_per_replica: int = Field(4, ge=1, description="calls out at once per replica")
    express_calls_per_replica: int = Field(2, ge=0, description="extra calls only premium may use")
    max_group_sentences: int = Field(64, ge=1, description="sentences per grouped call")
    max_group_requests: int = Field(32, ge=1, description="requests per grouped call")
    starvation_guard: int = Field(8, ge=1, description="dispatches a waiting lower tier may be passed over")
    replica_refresh_s: float = Field(2.0, gt=0, description="how often replica counts are re-read")


def rejection_error(rejection: Rejection) -> ApiError:
    headers = {"Retry-After": rejection.retry_after}
    return ApiError(rejection.status, rejection.message, code=rejection.code, headers=headers)


def requested_deadline_ms(request: Request) -> float | None:
    raw = request.headers.get("x-deadline-ms")
    if raw is None:
        return None
    try:
        value = float(raw)
    except ValueError:
        value = -1
    if not value > 0:
        raise ApiError(400, "X-Deadline-Ms must be positive milliseconds", code="invalid_deadline")
    return value


@serve.deployment(ray_actor_options={"num_cpus": 0.5}, max_ongoing_requests=512)
@serve.ingress(app)
class Router:
    def __init__(
        self,
        models: dict[str, DeploymentHandle],
        tenants: dict[str, Any],
        admission: dict[str, Any] | None = None,
        max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    ) -> None:
        self.models = models
        self.max_body_bytes = max_body_bytes
        self.tenants = TenantRegistry(TenantsConfig.model_validate(tenants))
        self.metrics = RouterMetrics(self.tenants.config.price_per_replica_hour)
        self.admission = AdmissionConfig.model_validate(admission or {})
        self.queues = {name: self._queue_for(name, handle) for name, handle in models.items()}
        self.dimensions: dict[str, int] = {}
        self.started = int(time.time())
        self._refresher: asyncio.Task | None = None

    def _queue_for(self, name: str, handle: DeploymentHandle) -> ModelQueue:
        async def send(group: list[Ticket]) -> list[EmbedResult]:
            texts, ranks = [t.texts for t in group], [t.tier.rank for t in group]
            return await handle.embed_many.remote(texts, ranks, [t.deadline for t in group])

        cfg = self.admission
        queue = ModelQueue(
            send,
            self.tenants.config.tiers,
            max_in_flight_per_replica=cfg.max_in_flight_per_replica,
            max_calls_per_replica=cfg.max_calls_per_replica,
            express_calls_per_replica=cfg.express_calls_per_replica,
            max_group_sentences=cfg.max_group_sentences,
            max_group_requests=cfg.max_group_requests,
            starvation_guard=cfg.starvation_guard,
        )
        wait = self.metrics.queue_wait
        queue.on_dispatch = lambda t: wait.labels(name, t.tier.value).observe(t.queued_s)
        dropped = self.metrics.rejections
        queue.on_cancelled = lambda t: dropped.labels(name, t.tier.value, t.tenant, "cancelled").inc()
        return queue

    # --- replica counts: the in-flight cap scales with them ------------------------------------
    def _ensure_refresher(self) -> None:
        if self._refresher is None or self._refresher.done():
            self._refresher = asyncio.get_running_loop().create_task(self._refresh_replicas())

    async def _refresh_replicas(self) -> None:
        while True:
            try:
                status = await asyncio.to_thread(serve.status)
                for app_status in status.applications.values():
                    for name, dep in app_status.deployments.items():
                        if name in self.queues:
                            running = dep.replica_states.get(ReplicaState.RUNNING, 0)
                            self.queues[name].replicas = max(1, running)
                            self.queues[name].pump()
            except Exception as exc:  # status is best effort; the last count stays
                log.warning("could not read replica counts: %s", exc)
            await asyncio.sleep(self.admission.replica_refresh_s)

    def record_autoscaling_stats(self) -> dict[str, float]:
        """Custom autoscaling metrics (Serve pulls them when the Router has an autoscaling_config):
        the router's queue per model, read by deployments/autoscaling.py."""
        stats: dict[str, float] = {}
        for name, queue in self.queues.items():
            stats[f"queued:{name}"] = queue.depth()
            stats[f"queued_sentences:{name}"] = sum(t.sentences for q in queue.queues.values() for t in q)
            stats[f"in_flight:{name}"] = queue.in_flight_sentences
        return stats

    # --- models -----------------------------------------------------------------------------------
    async def card(self, name: str) -> ModelCard:
        """Asked of the deployment each time, so live batching changes show up."""
        info = await self.models[name].info.remote()
        self.dimensions[name] = info["dimensions"]
        return ModelCard(created=self.started, **info)

    async def dimensions_of(self, name: str) -> int:
        if name not in self.dimensions:
            await self.card(name)
        return self.dimensions[name]

    def handle_for(self, model: str) -> DeploymentHandle:
        handle = self.models.get(model)
        if handle is None:
            raise ApiError(
                404,
                f"The model '{model}' does not exist; available: {', '.join(sorted(self.models))}",
                param="model",
                code="model_not_found",
            )
        return handle

    def tenant_of(self, request: Request) -> TenantState:
        try:
            return self.tenants.authenticate(request.headers.get("authorization"))
        except Rejection as rejection:
            raise ApiError(401, rejection.message, code=rejection.code) from None

    def require_admin(self, request: Request) -> None:
        if not self.tenants.is_admin(request.headers.get("authorization")):
            raise ApiError(401, "this endpoint needs the admin key", code="invalid_api_key")

    @app.post(
        "/v1/embeddings",
        openapi_extra={
            "requestBody": {"content": {"application/json": {"schema": EmbeddingRequest.model_json_schema()}}}
        },
    )
    async def embeddings(self, request: Request) -> Response:
        started = time.time()
        self._ensure_refresher()
        tenant = self.tenant_of(request)
        name, tier = tenant.config.name, tenant.config.tier
        try:
            raw = await read_json_body(request, self.max_body_bytes)
            body_read = time.time()  # Serve's FastAPI ingress fetches the body from the proxy
            req = EmbeddingRequest.model_validate(raw)
        except ValidationError as exc:
            message, param = describe_validation_error(exc)
            raise ApiError(400, message, param, "invalid_request") from None
        self.handle_for(req.model)
        if not tenant.config.may_use(req.model):
            message = f"tenant '{name}' may not use {req.model}"
            raise ApiError(403, message, param="model", code="model_not_allowed")
        if req.dimensions is not None and req.dimensions != (dims := await self.dimensions_of(req.model)):
            raise ApiError(400, f"{req.model} only returns {dims} dimensions", param="dimensions")
        deadline = started + self.tenants.deadline_s(tier, requested_deadline_ms(request))
        try:
            tenant.admit(started)
            result, ticket = await self.queues[req.model].submit(req.texts(), tier, deadline, name)
            if result.deadline_exceeded:
                raise Rejection(503, "deadline_exceeded", result.error or "deadline passed", 1)
        except Rejection as rejection:
            self.metrics.rejected(req.model, tier.value, name, rejection.code)
            raise rejection_error(rejection) from None
        if result.error:
            self.metrics.client_error(req.model, tier.value, name)
            raise ApiError(400, result.error, result.error_param, "context_length_exceeded")
        finished = time.time()
        self.queues[req.model].rate.observe(ticket.sentences, result.compute_s)
        tenant.record_tokens(result.prompt_tokens, finished)
        self.metrics.answered(
            req.model,
            tier.value,
            name,
            finished - started,
            result.prompt_tokens,
            result.compute_s,
            result.batch_sentences,
        )
        headers = {  # where the time went, for clients and for bench/router_overhead.py
            "x-infergraph-tier": tier.value,
            "x-infergraph-queue-ms": f"{ticket.queued_s * 1000:.2f}",
            "x-infergraph-model-ms": f"{ticket.model_s * 1000:.2f}",
            "x-infergraph-router-ms": f"{(finished - started) * 1000:.2f}",
            "x-infergraph-body-ms": f"{(body_read - started) * 1000:.2f}",
        }
        return Response(embedding_payload(req, result), media_type="application/json", headers=headers)

    @app.get("/v1/models")
    async def list_models(self) -> dict[str, Any]:
        cards = [await self.card(name) for name in sorted(self.models)]
        return {"object": "list", "data": [c.model_dump() for c in cards]}

    @app.get("/v1/models/{model}")
    async def get_model(self, model: str) -> dict[str, Any]:
        self.handle_for(model)
        return (await self.card(model)).model_dump()

    @app.get("/admin/usage")
    async def usage(self, request: Request) -> dict[str, Any]:
        """Per-tenant usage and cost, and each model's queue (admin key)."""
        self.require_admin(request)
        queues = {
            name: {
                "replicas": q.replicas,
                "queued": {t.value: q.depth(t) for t in q.queues},
                "in_flight_sentences": q.in_flight_sentences,
                "in_flight_calls": q.in_flight_calls,
                "seconds_per_sentence": q.rate.seconds_per_sentence,
            }
            for name, q in self.queues.items()
        }
        return {
            "price_per_replica_hour": self.metrics.price_per_replica_hour,
            "tenants": self.metrics.usage_report(),
            "models": queues,
        }

    @app.get("/metrics")
    async def prometheus(self, request: Request) -> Response:
        """Prometheus text format (admin key: it names tenants)."""
        self.require_admin(request)
        for name, q in self.queues.items():
            for tier in q.queues:
                self.metrics.queue_depth.labels(name, tier.value).set(q.depth(tier))
            self.metrics.in_flight.labels(name).set(q.in_flight_sentences)
            self.metrics.replicas.labels(name).set(q.replicas)
        return Response(self.metrics.exposition(), media_type="text/plain; version=0.0.4")

    @app.get("/healthz")
    async def healthz(self) -> dict[str, Any]:
        return {"status": "ok", "models": sorted(self.models)}
