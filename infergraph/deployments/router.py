"""The router: the FastAPI ingress every request enters through. HTTP only; the work is elsewhere.

POST routes come from the kinds' endpoints (deployments/kinds.py) and go through the shared
`Gateway` (deployments/gateway.py): API key (401) and rate limits (429) before the body is read,
then validation (400), model and permission (404/403), the model's admission queue (tiers,
deadlines, 429/503 with Retry-After) and accounting. Answers and errors are OpenAI-shaped.
"""

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import AsyncGenerator, Awaitable, Callable
from typing import Any

import orjson
from fastapi import FastAPI, Request
from fastapi.responses import Response, StreamingResponse
from ray import serve
from ray.serve.handle import DeploymentHandle, DeploymentResponseGenerator
from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser

from infergraph.deploy.haproxy import MAX_REQUEST_DEFAULT, MAX_REQUEST_ENV
from infergraph.deployments.admission import AdmissionConfig, ModelQueue, Ticket
from infergraph.deployments.encoder import TextEncoderReplica
from infergraph.deployments.errors import ApiError, install_error_handlers, mark_body_read
from infergraph.deployments.gateway import Gateway, ServedModel, StreamAnswer
from infergraph.deployments.in_router import InRouterModel, follow_deployments
from infergraph.deployments.kinds import endpoints_by_path, kind_streams
from infergraph.deployments.ledger import Grant, Lease, LeasedTenantState
from infergraph.deployments.metrics import RouterMetrics
from infergraph.deployments.openapi import build_openapi
from infergraph.deployments.replicas import (
    REPLICA_LOST,
    call_with_failover,
    follow_replica_counts,
    replica_lost,
)
from infergraph.deployments.tenants import TenantRegistry, TenantsConfig
from infergraph.protocol.common import Job, ModelCard

DEFAULT_MAX_BODY_BYTES = 4 * 1024 * 1024
DEFAULT_MAX_UPLOAD_BYTES = 25 * 1024 * 1024  # multipart uploads (audio); OpenAI's limit
CARD_MAX_AGE_S = 1.0  # GET /v1/models (all models) answers from cards at most this old
ENDPOINTS = endpoints_by_path()

app = FastAPI(
    title="infergraph",
    description="OpenAI-compatible multi-model inference on Ray Serve.",
    version="0.1.0",
)
install_error_handlers(app)


def _openapi() -> dict[str, Any]:
    if app.openapi_schema is None:
        app.openapi_schema = build_openapi(app, ENDPOINTS)
    return app.openapi_schema


app.openapi = _openapi  # type: ignore[method-assign]


async def read_bounded(request: Request, limit: int) -> bytes:
    """The body, refusing more than `limit` bytes before reading them all."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise ApiError(413, f"request body is {declared} bytes; the limit is {limit}", code="body_too_large")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise ApiError(413, f"request body exceeds the limit of {limit} bytes", code="body_too_large")
        chunks.append(chunk)
    mark_body_read(request)
    return b"".join(chunks)


async def read_json_body(request: Request, limit: int) -> Any:
    body = await read_bounded(request, limit)
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        raise ApiError(400, "request body is not valid JSON", code="invalid_json") from None


async def read_form_body(request: Request, limit: int) -> dict[str, Any]:
    """A multipart/form-data body as a dict: the file part as `{filename, content_type, data}`, other
    fields as strings (lists for repeated `name[]` fields). Parsed by Starlette's multipart parser
    from the bounded bytes."""
    if not request.headers.get("content-type", "").startswith("multipart/form-data"):
        raise ApiError(400, "this endpoint takes multipart/form-data", code="invalid_content_type")
    body = await read_bounded(request, limit)

    async def stream() -> AsyncGenerator[bytes, None]:
        yield body

    try:
        form = await MultiPartParser(request.headers, stream(), max_files=1, max_fields=32).parse()
    except MultiPartException as exc:
        raise ApiError(
            400, f"the multipart body could not be parsed: {exc.message}", code="invalid_multipart"
        ) from None
    fields: dict[str, Any] = {}
    for key, value in form.multi_items():
        if isinstance(value, UploadFile):
            fields[key] = {
                "filename": value.filename or "audio",
                "content_type": value.content_type,
                "data": await value.read(),
            }
        elif key.endswith("[]"):
            fields.setdefault(key, []).append(value)
        else:
            fields[key] = value
    return fields


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


def model_queue(
    handle: DeploymentHandle, tiers: Any, admission: AdmissionConfig, copy: InRouterModel | None = None
) -> ModelQueue:
    """The admission queue in front of one deployment: each call carries typed jobs to `run`, of the
    router's own copy of the model when it has one that serves (deployments/in_router.py)."""

    async def send(group: list[Ticket]) -> list[Any]:
        jobs = [Job(t.work, t.tier, t.deadline) for t in group]
        if copy is not None and copy.serving:
            return await copy.run(jobs)
        return await call_with_failover(lambda: handle.run.remote(jobs), min(t.deadline for t in group))

    cfg = admission
    return ModelQueue(
        send,
        tiers,
        max_in_flight_per_replica=cfg.max_in_flight_per_replica,
        max_calls_per_replica=cfg.max_calls_per_replica,
        express_calls_per_replica=cfg.express_calls_per_replica,
        max_group_units=cfg.max_group_units,
        max_group_requests=cfg.max_group_requests,
        starvation_guard=cfg.starvation_guard,
    )


def in_router_copy(name: str, init_kwargs: dict[str, Any]) -> InRouterModel:
    """The router's copy of an encoder deployment, built with the deployment's own arguments."""
    return InRouterModel(name, lambda user_config: TextEncoderReplica(**init_kwargs, user_config=user_config))


def deployment_card(handle: DeploymentHandle) -> Callable[[], Awaitable[dict[str, Any]]]:
    async def card() -> dict[str, Any]:
        info: dict[str, Any] = await handle.info.remote()
        return info

    return card


def served_card(handle: DeploymentHandle, copy: InRouterModel) -> Callable[[], Awaitable[dict[str, Any]]]:
    """The card of what answers an in-router model's requests: the router's copy, or its deployment."""
    ask_deployment = deployment_card(handle)

    async def describe() -> dict[str, Any]:
        return copy.info() if copy.serving else await ask_deployment()  # the card's default: replica

    return describe


def stream_opener(handle: DeploymentHandle) -> Callable[[Job[Any]], AsyncGenerator[Any, None]]:
    """A streaming call to the deployment's `generate`; closing the generator cancels the call, so
    the replica frees the request's sequences (the client went away)."""
    streaming = handle.options(stream=True)

    async def open_stream(job: Job[Any]) -> AsyncGenerator[Any, None]:
        response: DeploymentResponseGenerator = streaming.generate.remote(job)  # type: ignore[assignment]
        try:
            async for event in response:
                yield event
        except REPLICA_LOST as exc:  # before the first event: a 503 the gateway answers; later: the end
            raise replica_lost(exc) from None
        finally:
            response.cancel()

    return open_stream


def ledger_lease(ledger: DeploymentHandle, timeout_s: float = 1.0) -> Lease:
    """Lease calls to the TenantLedger deployment, given up after `timeout_s` (then the router uses
    its own limits until the ledger answers again)."""

    async def lease(tenant: str, want: int, returned: int, tokens: int) -> Grant:
        async with asyncio.timeout(timeout_s):
            grant: Grant = await ledger.lease.remote(tenant, want, returned, tokens)
            return grant

    return lease


async def tidy_leases(states: list[LeasedTenantState], interval_s: float = 1.0) -> None:
    """Give idle tenants' leases back to the ledger and report tokens used, every `interval_s`."""
    while True:
        await asyncio.sleep(interval_s)
        for state in states:
            await state.tidy(time.time())


@serve.deployment(ray_actor_options={"num_cpus": 0.5}, max_ongoing_requests=512)
@serve.ingress(app)
class Router:
    def __init__(
        self,
        models: dict[str, DeploymentHandle],
        kinds: dict[str, str],
        tenants: dict[str, Any],
        admission: dict[str, Any] | None = None,
        max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
        max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES,
        model_admission: dict[str, dict[str, Any]] | None = None,
        body_timeout_s: float = 30.0,
        max_bodies_per_tenant: int = 32,
        ledger: DeploymentHandle | None = None,
        in_router: dict[str, dict[str, Any]] | None = None,
        in_router_sync_s: float = 2.0,
    ) -> None:
        tenants_config = TenantsConfig.model_validate(tenants)
        if ledger is None:  # limits per router replica
            registry = TenantRegistry(tenants_config)
        else:  # limits for each tenant as a whole, however many router replicas run (ledger.py)
            lease = ledger_lease(ledger)
            registry = TenantRegistry(
                tenants_config, make_state=lambda c, now: LeasedTenantState(c, now, lease)
            )
        metrics = RouterMetrics(registry.config.price_per_replica_hour)
        self.admission = AdmissionConfig.model_validate(admission or {})
        # Encoders this router also computes itself, each built from its deployment's arguments.
        self.copies = {name: in_router_copy(name, kwargs) for name, kwargs in (in_router or {}).items()}
        self.in_router_sync_s = in_router_sync_s
        self.deployment_cards = {name: deployment_card(models[name]) for name in self.copies}
        served = {}
        for name, handle in models.items():
            own = (model_admission or {}).get(name, {})
            config = self.admission.model_copy(
                update=AdmissionConfig.model_validate(own).model_dump(exclude_unset=True)
            )
            copy = self.copies.get(name)
            queue = model_queue(handle, registry.config.tiers, config, copy)
            metrics.watch_queue(name, queue)
            opener = stream_opener(handle) if kind_streams(kinds[name]) else None
            describe = handle.info.remote if copy is None else served_card(handle, copy)
            served[name] = ServedModel(name, kinds[name], queue, describe, open_stream=opener)
        self.gateway = Gateway(
            registry,
            metrics,
            served,
            body_timeout_s=body_timeout_s,
            max_bodies_per_tenant=max_bodies_per_tenant,
        )
        self.max_body_bytes, self.max_upload_bytes = max_body_bytes, max_upload_bytes
        front_cap = int(os.environ.get(MAX_REQUEST_ENV, MAX_REQUEST_DEFAULT))
        if 0 < front_cap < max(max_body_bytes, max_upload_bytes):
            logging.getLogger(__name__).warning(
                "max_body_bytes/max_upload_bytes (%d/%d) are over HAProxy's %s (%d): larger bodies get "
                "HAProxy's 413; raise it in configs/serve.env",
                max_body_bytes, max_upload_bytes, MAX_REQUEST_ENV, front_cap,
            )  # fmt: skip
        self.started = int(time.time())
        self._replica_counts: asyncio.Task | None = None
        self._leases: asyncio.Task | None = None
        self._copies_sync: asyncio.Task | None = None
        with contextlib.suppress(RuntimeError):  # Serve builds it on its event loop: start loading now
            self._start_background_loops()

    def _start_background_loops(self) -> None:
        """Start the background loops (replica counts, lease upkeep) once a loop runs."""
        loop = asyncio.get_running_loop()
        if self._replica_counts is None or self._replica_counts.done():
            # An in-router model's capacity is the router's copy, not its deployment's replicas.
            queues = {n: m.queue for n, m in self.gateway.models.items() if n not in self.copies}
            interval = self.admission.replica_refresh_s
            self._replica_counts = loop.create_task(follow_replica_counts(queues, interval))
        if self.copies and (self._copies_sync is None or self._copies_sync.done()):
            self._copies_sync = loop.create_task(
                follow_deployments(self.copies, self.deployment_cards, self.in_router_sync_s)
            )
        leased = [s for s in self.gateway.tenants.by_hash.values() if isinstance(s, LeasedTenantState)]
        if leased and (self._leases is None or self._leases.done()):
            self._leases = loop.create_task(tidy_leases(leased))

    def record_autoscaling_stats(self) -> dict[str, float]:
        """Custom autoscaling metrics (Serve pulls them when the Router has an autoscaling_config)."""
        return self.gateway.autoscaling_stats()

    def require_admin(self, request: Request) -> None:
        if not self.gateway.tenants.is_admin(request.headers.get("authorization")):
            raise ApiError(401, "this endpoint needs the admin key", code="invalid_api_key")

    async def card(self, name: str, max_age_s: float = 0.0) -> ModelCard:
        """From the deployment, at most `max_age_s` old (0: asked now, so live changes show up)."""
        info = await self.gateway.models[name].recent_info(max_age_s)
        return ModelCard(created=self.started, **info)

    # --- routes -----------------------------------------------------------------------------------
    @app.post("/{path:path}", include_in_schema=False)
    async def post(self, path: str, request: Request) -> Response:
        """Every kind's POST endpoint (deployments/kinds.py), through the shared gateway."""
        self._start_background_loops()
        route = "/" + path.strip("/")
        endpoint = ENDPOINTS.get(route)
        if endpoint is None:
            raise ApiError(404, f"no endpoint POST {route}; see /docs", code="not_found")
        if endpoint.body == "multipart":
            read_body = lambda: read_form_body(request, self.max_upload_bytes)  # noqa: E731
        else:
            read_body = lambda: read_json_body(request, self.max_body_bytes)  # noqa: E731
        answer = await self.gateway.serve(
            endpoint, route, request.headers.get("authorization"), read_body, requested_deadline_ms(request)
        )
        if isinstance(answer, StreamAnswer):
            return StreamingResponse(answer.chunks, media_type="text/event-stream", headers=answer.headers)
        return Response(answer.body, media_type=answer.media_type, headers=answer.headers)

    @app.get("/v1/models")
    async def list_models(self, request: Request) -> dict[str, Any]:
        self.gateway.authenticate(request.headers.get("authorization"))
        # The listing fans out to every model: a flood of it must not load the replicas.
        cards = [await self.card(name, CARD_MAX_AGE_S) for name in sorted(self.gateway.models)]
        return {"object": "list", "data": [c.model_dump() for c in cards]}

    @app.get("/v1/models/{model}")
    async def get_model(self, model: str, request: Request) -> dict[str, Any]:
        self.gateway.authenticate(request.headers.get("authorization"))
        if model not in self.gateway.models:
            available = ", ".join(sorted(self.gateway.models))
            message = f"The model '{model}' does not exist; available: {available}"
            raise ApiError(404, message, param="model", code="model_not_found")
        return (await self.card(model)).model_dump()

    @app.get("/admin/usage")
    async def usage(self, request: Request) -> dict[str, Any]:
        """Per-tenant usage and cost, and each model's queue (admin key)."""
        self.require_admin(request)
        return self.gateway.usage()

    @app.get("/metrics")
    async def prometheus(self, request: Request) -> Response:
        """Prometheus text format (admin key: it names tenants)."""
        self.require_admin(request)
        return Response(await self.gateway.exposition(), media_type="text/plain; version=0.0.4")

    @app.get("/healthz")
    async def healthz(self) -> dict[str, Any]:
        return {"status": "ok", "models": sorted(self.gateway.models)}

    @app.get("/{path:path}", include_in_schema=False)
    async def not_a_get(self, path: str) -> Response:
        """Last GET route: a kind's POST endpoint asked with GET is 405, anything else 404."""
        route = "/" + path.strip("/")
        if route in ENDPOINTS:
            raise ApiError(405, f"{route} takes POST", code="method_not_allowed", headers={"Allow": "POST"})
        raise ApiError(404, f"no endpoint GET {route}; see /docs", code="not_found")
