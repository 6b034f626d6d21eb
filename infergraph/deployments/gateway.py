"""The serving logic every model kind shares, as a plain class the router calls and tests drive
without Ray: authenticate -> rate limits -> read and validate the body -> admit -> submit -> account.

A kind plugs in through an `Endpoint` (its request type, per-model checks and payload encoder); the
tenants, tiers, deadlines, admission queues, usage/cost accounting and metrics stay here, written once.
The API key and the tenant's rate limits and quota are checked before the body is read: a tenant
over its limits cannot make the router read and parse megabytes. A body must then arrive within
`body_timeout_s` (408), and one tenant may have at most `max_bodies_per_tenant` bodies arriving at
once (429): slow or never-finished uploads cannot hold every router slot.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar, Generic, Literal, TypeVar

from pydantic import BaseModel, ValidationError

from infergraph.deployments.admission import ModelQueue, Ticket
from infergraph.deployments.errors import ApiError, describe_validation_error
from infergraph.deployments.metrics import RouterMetrics
from infergraph.deployments.tenants import Rejection, TenantRegistry, TenantState
from infergraph.protocol.common import Job, Outcome
from infergraph.protocol.llm import Completion, LLMEvent

log = logging.getLogger(__name__)

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
    open_stream: Callable[[Job[Any]], AsyncGenerator[Any, None]] | None = None  # streaming kinds (LLM)

    card_at: float = 0.0  # time.monotonic() of `card`

    async def info(self) -> dict[str, Any]:
        self.card, self.card_at = await self.describe(), time.monotonic()
        return self.card

    async def recent_info(self, max_age_s: float) -> dict[str, Any]:
        """The card, asked of the deployment only when the last answer is older than `max_age_s`."""
        if not self.card or time.monotonic() - self.card_at >= max_age_s:
            return await self.info()
        return self.card

    async def cached(self, key: str) -> Any:
        """A card field that does not change while the deployment lives (e.g. dimensions)."""
        if key not in self.card:
            await self.info()
        return self.card.get(key)


class Endpoint(Generic[Req, Res]):
    """One route of one kind. Subclasses set the class attributes and may override the hooks."""

    paths: ClassVar[tuple[str, ...]]  # e.g. ("/v1/embeddings",)
    streams: ClassVar[bool] = False  # True: answered from a stream of events (`completion`)
    kinds: ClassVar[tuple[str, ...]]  # catalog kinds that serve it
    request_type: ClassVar[type[BaseModel]]
    body: ClassVar[Literal["json", "multipart"]] = "json"  # how the router reads the request body

    async def check(self, req: Req, model: ServedModel) -> None:
        """Per-model checks the schema cannot make (dimensions, limits); raise ApiError."""

    def work(self, req: Req) -> Any:
        """What crosses the handle; it must have a `units` property (what the queue meters)."""
        return req.work()  # type: ignore[attr-defined]

    def payload(self, req: Req, result: Res, path: str) -> bytes:
        raise NotImplementedError

    def media_type(self, req: Req) -> str:
        return "application/json"

    def completion(self, req: Req) -> Completion:
        """Streaming kinds: the response being assembled from the replica's events."""
        raise NotImplementedError


@dataclass
class Answer:
    body: bytes
    headers: dict[str, str]
    media_type: str = "application/json"


@dataclass
class StreamAnswer:
    """Server-sent events; the gateway's accounting runs when the stream ends or the client leaves."""

    chunks: AsyncIterator[bytes]
    headers: dict[str, str]


class Gateway:
    def __init__(
        self,
        tenants: TenantRegistry,
        metrics: RouterMetrics,
        models: dict[str, ServedModel],
        clock: Callable[[], float] = time.time,
        body_timeout_s: float = 30.0,
        max_bodies_per_tenant: int = 32,
    ) -> None:
        self.tenants, self.metrics, self.models, self.clock = tenants, metrics, models, clock
        self.body_timeout_s, self.max_bodies_per_tenant = body_timeout_s, max_bodies_per_tenant
        self.bodies_arriving: Counter[str] = Counter()  # per tenant

    # --- before the body -------------------------------------------------------------------------
    def authenticate(self, authorization: str | None) -> TenantState:
        try:
            return self.tenants.authenticate(authorization)
        except Rejection as rejection:
            raise ApiError(401, rejection.message, code=rejection.code) from None

    async def admit(self, tenant: TenantState, now: float) -> None:
        """Charge the request to the tenant's rate limits and quota, or refuse it (429)."""
        try:
            await tenant.acquire(now)
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

    async def _read_body(self, tenant: TenantState, read_body: Callable[[], Awaitable[Any]]) -> Any:
        """The body, within `body_timeout_s`, while the tenant has fewer than `max_bodies_per_tenant`
        other bodies arriving."""
        name = tenant.config.name
        if self.bodies_arriving[name] >= self.max_bodies_per_tenant:
            self.metrics.rejected(NO_MODEL, tenant.config.tier.value, name, "too_many_uploads")
            message = f"tenant '{name}' already has {self.max_bodies_per_tenant} request bodies arriving"
            raise ApiError(429, message, code="too_many_uploads", headers={"Retry-After": "1"})
        self.bodies_arriving[name] += 1
        try:
            async with asyncio.timeout(self.body_timeout_s):
                return await read_body()
        except TimeoutError:
            message = f"the request body did not arrive within {self.body_timeout_s:g} s"
            raise ApiError(408, message, code="body_timeout") from None
        finally:
            self.bodies_arriving[name] -= 1

    # --- the request -----------------------------------------------------------------------------
    async def serve(
        self,
        endpoint: Endpoint[Any, Any],
        path: str,
        authorization: str | None,
        read_body: Callable[[], Awaitable[Any]],
        deadline_ms: float | None = None,
    ) -> Answer | StreamAnswer:
        started = self.clock()
        tenant = self.authenticate(authorization)
        await self.admit(tenant, started)
        raw = await self._read_body(tenant, read_body)
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
        if endpoint.streams:
            return await self._generate(endpoint, req, model, tenant, work, deadline, started)
        try:
            result, ticket = await model.queue.submit(work, work.units, tier, deadline, name)
            if result.deadline_exceeded:
                raise Rejection(503, "deadline_exceeded", result.error or "deadline passed", 1)
        except Rejection as rejection:
            tenant.refund(self.clock())
            self.metrics.rejected(model.name, tier.value, name, rejection.code)
            raise rejection_error(rejection) from None
        if result.error:
            self.metrics.client_error(model.name, tier.value, name)
            raise ApiError(result.error_status, result.error, result.error_param, result.error_code)
        finished = self.clock()
        model.queue.observe_compute(ticket.units, result.compute_s)
        stages = call_stages(result, ticket) if result.batch_s else None  # kinds that report them
        if stages:
            self.metrics.call_timing(model.name, stages)
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
        if stages:  # the model call, stage by stage
            headers["x-infergraph-call-stages-ms"] = ",".join(
                f"{stage}={seconds * 1000:.2f}" for stage, seconds in stages.items()
            )
        return Answer(endpoint.payload(req, result, path), headers, endpoint.media_type(req))

    # --- streamed kinds (LLM) ---------------------------------------------------------------------
    async def _generate(
        self,
        endpoint: Endpoint[Any, Any],
        req: Any,
        model: ServedModel,
        tenant: TenantState,
        work: Any,
        deadline: float,
        started: float,
    ) -> Answer | StreamAnswer:
        """Wait for a slot in the model's queue (tiers, 429/503), open the replica's event stream and
        read its first event: a refusal (over-long prompt, deadline) is still an error status then.
        The slot is held, and usage counted, until the stream ends or the client goes away."""
        name, tier = tenant.config.name, tenant.config.tier
        try:
            ticket = await model.queue.hold(work.units, tier, deadline, name)
        except Rejection as rejection:
            tenant.refund(self.clock())
            self.metrics.rejected(model.name, tier.value, name, rejection.code)
            raise rejection_error(rejection) from None
        assert model.open_stream is not None, f"{model.name} has no stream"
        events = model.open_stream(Job(work, tier, deadline))
        headers = {"x-infergraph-tier": tier.value, "x-infergraph-queue-ms": f"{ticket.queued_s * 1000:.2f}"}
        try:
            try:
                async with asyncio.timeout(model.queue.watchdog_s(deadline)):  # a silent replica
                    first: LLMEvent = await anext(events)
            except TimeoutError:
                silent = Rejection(
                    503, "deadline_exceeded", "no first token from the model by the deadline", 1
                )
                self.metrics.rejected(model.name, tier.value, name, silent.code)
                raise rejection_error(silent) from None
            except Rejection as lost:  # the replica went away before the first event
                tenant.refund(self.clock())
                self.metrics.rejected(model.name, tier.value, name, lost.code)
                raise rejection_error(lost) from None
            if first.deadline_exceeded or first.failed:  # before the first token: 503 either way
                code = "generation_failed" if first.failed else "deadline_exceeded"
                late = Rejection(503, code, first.error or "deadline passed", 1)
                self.metrics.rejected(model.name, tier.value, name, late.code)
                raise rejection_error(late)
            if first.error:
                self.metrics.client_error(model.name, tier.value, name)
                raise ApiError(400, first.error, first.error_param, first.error_code)
            completion = endpoint.completion(req)
            timing = _StreamTiming(started, self.clock())
            completion.add(first)
            if req.stream:  # from here the SSE generator owns the slot and the replica's stream
                return StreamAnswer(
                    self._sse(model, tenant, ticket, events, completion, first, timing), headers
                )
            async for _ in self._follow(events, completion, timing):
                pass
        except BaseException:
            model.queue.release(ticket)
            await events.aclose()
            raise
        model.queue.release(ticket)
        await events.aclose()
        self._account_stream(model.name, tenant, completion, timing)
        if completion.failure is not None:
            raise rejection_error(Rejection(503, "generation_failed", completion.failure, 1))
        return Answer(completion.body(), headers)

    async def _follow(
        self, events: AsyncGenerator[LLMEvent, None], completion: Completion, timing: _StreamTiming
    ) -> AsyncIterator[LLMEvent]:
        """Add the replica's events to `completion` and yield each; stops at the first failure (a
        choice that failed, or the replica's stream broken) with `completion.failure` set."""
        try:
            async for event in events:
                completion.add(event)
                if completion.failure is not None:
                    return
                timing.tick(self.clock())
                yield event
        except Exception as exc:  # the replica went away mid-generation
            log.warning("LLM stream broken after the first token: %r", exc)
            completion.failure = f"the model's replica failed mid-generation: {type(exc).__name__}"

    async def _sse(
        self,
        model: ServedModel,
        tenant: TenantState,
        ticket: Ticket,
        events: AsyncGenerator[LLMEvent, None],
        completion: Completion,
        first: LLMEvent,
        timing: _StreamTiming,
    ) -> AsyncIterator[bytes]:
        try:
            for opening in completion.first_chunks():
                yield opening
            if (head := completion.chunk(first)) is not None:
                yield head
            async for event in self._follow(events, completion, timing):
                if (chunk := completion.chunk(event)) is not None:
                    yield chunk
            if completion.failure is not None:
                yield completion.error_chunk()
                return
            for closing in completion.last_chunks():
                yield closing
        finally:  # ended, failed, or the client went away (the replica then aborts its sequences)
            model.queue.release(ticket)
            await events.aclose()
            self._account_stream(model.name, tenant, completion, timing)

    def _account_stream(
        self, model: str, tenant: TenantState, completion: Completion, timing: _StreamTiming
    ) -> None:
        """Tokens generated count against the tenant's quota either way; the request counts once, as
        answered or (a generation that failed part-way, streamed or not) as `generation_failed`."""
        usage = completion.usage()
        finished = self.clock()
        tenant.record_tokens(usage["total_tokens"], finished)
        name, tier = tenant.config.name, tenant.config.tier.value
        if completion.failure is not None:
            self.metrics.rejected(model, tier, name, "generation_failed")
            return
        self.metrics.answered(model, tier, name, finished - timing.started, usage["total_tokens"], 0.0, 0)
        self.metrics.observe_generation(model, tier, timing.first_s, timing.gaps, usage["completion_tokens"])

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

    async def exposition(self) -> bytes:
        """Prometheus text: the queues, and each LLM engine's state as its replica reports it."""
        for name, model in self.models.items():
            self.metrics.observe_queue(name, model.queue.stats())
            if model.open_stream is not None:
                self.metrics.observe_engine(name, (await model.info()).get("stats", {}))
        return self.metrics.exposition()


def call_stages(result: Outcome, ticket: Ticket) -> dict[str, float]:
    """A model call's time by stage, in seconds, from the router's and the replica's clocks (one
    host's wall clock in a single-node service; across nodes the two transit stages carry their
    clock offset)."""
    dispatched = ticket.dispatched or result.replica_in
    answered = ticket.answered or result.replica_out
    inside = result.replica_out - result.replica_in
    return {
        "outbound": result.replica_in - dispatched,
        "replica_wait": result.replica_wait_s,
        "batch": result.batch_s,
        "replica_other": inside - result.replica_wait_s - result.batch_s,
        "inbound": answered - result.replica_out,
    }


def rejection_error(rejection: Rejection) -> ApiError:
    headers = {"Retry-After": rejection.retry_after}
    return ApiError(rejection.status, rejection.message, code=rejection.code, headers=headers)


@dataclass
class _StreamTiming:
    """Time to first token and the gaps between later events, for the LLM metrics."""

    started: float
    first: float
    last: float = 0.0
    gaps: list[float] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.last = self.first

    @property
    def first_s(self) -> float:
        return self.first - self.started

    def tick(self, now: float) -> None:
        self.gaps.append(now - self.last)
        self.last = now
