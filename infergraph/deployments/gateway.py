"""The serving logic every model kind shares, as a plain class the router calls and tests drive
without Ray: authenticate -> rate limits -> read and validate the body -> admit -> submit -> account.

A kind plugs in through an `Endpoint` (its request type, per-model checks and payload encoder); the
tenants, tiers, deadlines, admission queues, usage/cost accounting and metrics stay here, written once.
The API key and the tenant's rate limits and quota are checked before the body is read: a tenant
over its limits cannot make the router read and parse megabytes.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar, Generic, TypeVar

from pydantic import BaseModel, ValidationError

from infergraph.deployments.admission import ModelQueue
from infergraph.deployments.errors import ApiError, describe_validation_error
from infergraph.deployments.metrics import RouterMetrics
from infergraph.deployments.tenants import Rejection, TenantRegistry, TenantState
from infergraph.protocol.common import Outcome

Req = TypeVar("Req", bound=BaseModel)
Res = TypeVar("Res", bound=Outcome)
NO_MODEL = "-"  # metrics label of a request refused before its body said which model


@dataclass
class ServedModel:
    """One model deployment as the gateway sees it: its kind, its admission queue and its card."""

    name: str
    kind: str
    queue: ModelQueue
    describe: Callable[[], Awaitable[dict[str, Any]]]  # the deployment's info(), asked each time
    card: dict[str, Any] = field(default_factory=dict)  # the last info() answer

    async def info(self) -> dict[str, Any]:
        self.card = await self.describe()
        return self.card

    async def cached(self, key: str) -> Any:
        """A card field that does not change while the deployment lives (e.g. dimensions)."""
        if key not in self.card:
            await self.info()
        return self.card.get(key)


class Endpoint(Generic[Req, Res]):
    """One route of one kind. Subclasses set the class attributes and may override the hooks."""

    paths: ClassVar[tuple[str, ...]]  # e.g. ("/v1/embeddings",)
    kinds: ClassVar[tuple[str, ...]]  # catalog kinds that serve it
    request_type: ClassVar[type[BaseModel]]

    async def check(self, req: Req, model: ServedModel) -> None:
        """Per-model checks the schema cannot make (dimensions, limits); raise ApiError."""

    def work(self, req: Req) -> Any:
        """What crosses the handle; it must have a `units` property (what the queue meters)."""
        return req.work()  # type: ignore[attr-defined]

    def payload(self, req: Req, result: Res, path: str) -> bytes:
        raise NotImplementedError


@dataclass
class Answer:
    body: bytes
    headers: dict[str, str]


class Gateway:
    def __init__(
        self,
        tenants: TenantRegistry,
        metrics: RouterMetrics,
        models: dict[str, ServedModel],
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.tenants, self.metrics, self.models, self.clock = tenants, metrics, models, clock

    # --- before the body -------------------------------------------------------------------------
    def authenticate(self, authorization: str | None) -> TenantState:
        try:
            return self.tenants.authenticate(authorization)
        except Rejection as rejection:
            raise ApiError(401, rejection.message, code=rejection.code) from None

    def admit(self, tenant: TenantState, now: float) -> None:
        """Charge the request to the tenant's rate limits and quota, or refuse it (429)."""
        try:
            tenant.admit(now)
        except Rejection as rejection:
            self.metrics.rejected(NO_MODEL, tenant.config.tier.value, tenant.config.name, rejection.code)
            raise rejection_error(rejection) from None

    def model_for(self, name: str, endpoint: Endpoint[Any, Any], path: str) -> ServedModel:
        model = self.models.get(name)
        if model is None:
            available = ", ".join(sorted(self.models))
            message = f"The model '{name}' does not exist; available: {available}"
            raise ApiError(404, message, param="model", code="model_not_found")
        if model.kind not in endpoint.kinds:
            suited = sorted(n for n, m in self.models.items() if m.kind in endpoint.kinds)
            message = f"'{name}' is a {model.kind} model; {path} needs one of: {', '.join(suited) or 'none'}"
            raise ApiError(400, message, param="model", code="model_not_supported")
        return model

    # --- the request -----------------------------------------------------------------------------
    async def serve(
        self,
        endpoint: Endpoint[Any, Any],
        path: str,
        authorization: str | None,
        read_body: Callable[[], Awaitable[Any]],
        deadline_ms: float | None = None,
    ) -> Answer:
        started = self.clock()
        tenant = self.authenticate(authorization)
        self.admit(tenant, started)
        raw = await read_body()
        body_read = self.clock()
        try:
            req = endpoint.request_type.model_validate(raw)
        except ValidationError as exc:
            message, param = describe_validation_error(exc)
            raise ApiError(400, message, param, "invalid_request") from None
        name, tier = tenant.config.name, tenant.config.tier
        model = self.model_for(req.model, endpoint, path)  # type: ignore[attr-defined]
        if not tenant.config.may_use(model.name):
            raise ApiError(403, f"tenant '{name}' may not use {model.name}", "model", "model_not_allowed")
        await endpoint.check(req, model)
        deadline = started + self.tenants.deadline_s(tier, deadline_ms)
        work = endpoint.work(req)
        try:
            result, ticket = await model.queue.submit(work, work.units, tier, deadline, name)
            if result.deadline_exceeded:
                raise Rejection(503, "deadline_exceeded", result.error or "deadline passed", 1)
        except Rejection as rejection:
            self.metrics.rejected(model.name, tier.value, name, rejection.code)
            raise rejection_error(rejection) from None
        if result.error:
            self.metrics.client_error(model.name, tier.value, name)
            raise ApiError(400, result.error, result.error_param, result.error_code)
        finished = self.clock()
        model.queue.observe_compute(ticket.units, result.compute_s)
        tenant.record_tokens(result.usage_tokens, finished)
        self.metrics.answered(
            model.name,
            tier.value,
            name,
            finished - started,
            result.usage_tokens,
            result.compute_s,
            result.batch_size,
        )
        headers = {  # where the time went, for clients and for bench/router_overhead.py
            "x-infergraph-tier": tier.value,
            "x-infergraph-queue-ms": f"{ticket.queued_s * 1000:.2f}",
            "x-infergraph-model-ms": f"{ticket.model_s * 1000:.2f}",
            "x-infergraph-router-ms": f"{(finished - started) * 1000:.2f}",
            "x-infergraph-body-ms": f"{(body_read - started) * 1000:.2f}",
        }
        return Answer(endpoint.payload(req, result, path), headers)

    # --- reports ---------------------------------------------------------------------------------
    def autoscaling_stats(self) -> dict[str, float]:
        """The router's queue per model, for deployments/autoscaling.py."""
        stats: dict[str, float] = {}
        for name, model in self.models.items():
            stats[f"queued:{name}"] = model.queue.depth()
            stats[f"queued_units:{name}"] = model.queue.queued_units()
            stats[f"in_flight:{name}"] = model.queue.in_flight_units
        return stats

    def usage(self) -> dict[str, Any]:
        return {
            "price_per_replica_hour": self.metrics.price_per_replica_hour,
            "tenants": self.metrics.usage_report(),
            "models": {name: m.queue.stats() for name, m in self.models.items()},
        }

    def exposition(self) -> bytes:
        for name, model in self.models.items():
            self.metrics.observe_queue(name, model.queue.stats())
        return self.metrics.exposition()


def rejection_error(rejection: Rejection) -> ApiError:
    headers = {"Retry-After": rejection.retry_after}
    return ApiError(rejection.status, rejection.message, code=rejection.code, headers=headers)
