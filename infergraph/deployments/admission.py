"""Admission control for one model: bounded per-tier queues, deadlines and a cap on work in flight.

Ray's own queues (handle, replica) are FIFO, so the router keeps requests here until the model
deployment has room: at most `max_in_flight` units (sentences, document pairs) per replica are out
at once (about two of its batches: one computing, one filling) in at most `max_calls_per_replica`
calls. Waiting therefore happens where priority still applies, and under load the queued requests
leave in groups, one call each, which saves the per-call overhead of Serve's handles.

Dispatch rule (strict priority with a starvation guard): the next call takes requests of the most
urgent non-empty tier, FIFO within a tier, except that a waiting tier passed over `starvation_guard`
times in a row goes next. So under any overload a waiting lower tier still gets at least one of
every `starvation_guard + 1` calls, while premium keeps the rest. A call carries one tier only.

Refusals happen before a request costs compute: a full tier queue (429), or a deadline that the
current backlog makes unreachable (503), both with the seconds after which a retry may succeed. On an
idle model a request is always tried: refusing it would send a client into retries that meet the same
estimate.
Queued requests whose deadline passes are failed at dispatch.

A watchdog keeps every accepted request's promise: one whose model has not answered `answer_grace_s`
after its deadline (a hung or lost replica) gets 503 `deadline_exceeded` then, and a call that outlives
the last deadline it carries is cancelled, so a silent replica cannot hold the model's capacity.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from infergraph.deployments.tenants import Rejection, TierPolicy
from infergraph.protocol.common import Tier


class AdmissionConfig(BaseModel):
    """How the router meters work into each model deployment (`admission:` in serve.yaml)."""

    model_config = ConfigDict(extra="forbid")
    max_in_flight_per_replica: int = Field(128, ge=1, description="units out at once per replica")
    max_calls_per_replica: int = Field(4, ge=1, description="calls out at once per replica")
    express_calls_per_replica: int = Field(2, ge=0, description="extra calls only premium may use")
    max_group_units: int = Field(64, ge=1, description="units per grouped call")
    max_group_requests: int = Field(32, ge=1, description="requests per grouped call")
    starvation_guard: int = Field(8, ge=1, description="dispatches a waiting lower tier may be passed over")
    replica_refresh_s: float = Field(2.0, gt=0, description="how often replica counts are re-read")


@dataclass(eq=False)
class Ticket:
    """One admitted request waiting for (or riding in) a call to the model deployment."""

    work: Any  # the kind's payload (EmbedWork, RerankWork, ...), sent as it is
    units: int  # what it weighs: sentences, document pairs
    tier: Tier
    deadline: float  # time.time() instant
    enqueued: float
    future: asyncio.Future = field(repr=False)
    tenant: str = ""
    dispatched: float | None = None
    answered: float | None = None
    held: bool = False  # a slot for a stream: granted alone, released by the holder (`release`)

    @property
    def queued_s(self) -> float:
        """Time spent waiting in the router's queue (0 until dispatched)."""
        return (self.dispatched or self.enqueued) - self.enqueued

    @property
    def model_s(self) -> float:
        """Time the model deployment's handle call took (0 until answered)."""
        return (self.answered or 0) - (self.dispatched or 0) if self.answered else 0.0


Send = Callable[[list[Ticket]], Awaitable[list[Any]]]


class ComputeRate:
    """Seconds of model compute per unit (EWMA of what the replicas report per request).

    Compute, not completion spacing: the replica's batcher serves urgent work first and in full
    batches, so that is the rate at which the work ahead of an urgent request drains.
    """

    def __init__(self, prior_s: float, alpha: float = 0.1) -> None:
        self.seconds_per_unit = prior_s
        self.alpha = alpha

    def observe(self, units: int, compute_s: float) -> None:
        if units and compute_s > 0:
            sample = compute_s / units
            self.seconds_per_unit += self.alpha * (sample - self.seconds_per_unit)


class ModelQueue:
    """The router's queue for one model deployment."""

    def __init__(
        self,
        send: Send,
        tiers: dict[Tier, TierPolicy],
        max_in_flight_per_replica: int = 128,
        max_calls_per_replica: int = 4,
        express_calls_per_replica: int = 2,
        max_group_units: int = 64,
        max_group_requests: int = 32,
        starvation_guard: int = 8,
        prior_s_per_unit: float = 0.01,
        prior_call_s: float = 0.05,
        clock: Callable[[], float] = time.time,
        answer_grace_s: float = 0.25,
    ) -> None:
        self.send, self.tiers, self.clock = send, tiers, clock
        self.answer_grace_s = answer_grace_s
        self.max_in_flight_per_replica = max_in_flight_per_replica
        self.max_calls_per_replica = max_calls_per_replica
        self.express_calls_per_replica = express_calls_per_replica
        self.max_group_units, self.max_group_requests = max_group_units, max_group_requests
        self.starvation_guard = starvation_guard
        self.replicas = 1
        self.queues: dict[Tier, deque[Ticket]] = {t: deque() for t in Tier}
        self.passed_over = dict.fromkeys(Tier, 0)
        self.in_flight_units = 0
        self.in_flight_calls = 0
        self.rate = ComputeRate(prior_s_per_unit)
        self.call_s = dict.fromkeys(Tier, prior_call_s)  # recent model call time per tier (EWMA)
        self.on_dispatch: Callable[[Ticket], None] = lambda _: None
        self.on_cancelled: Callable[[Ticket], None] = lambda _: None

    # --- what the router asks -------------------------------------------------------------------
    @property
    def max_in_flight(self) -> int:
        return self.max_in_flight_per_replica * max(1, self.replicas)

    @property
    def max_calls(self) -> int:
        return self.max_calls_per_replica * max(1, self.replicas)

    @property
    def express_calls(self) -> int:
        return self.express_calls_per_replica * max(1, self.replicas)

    def has_room(self) -> bool:
        return self.in_flight_units < self.max_in_flight and self.in_flight_calls < self.max_calls

    def depth(self, tier: Tier | None = None) -> int:
        return sum(len(q) for t, q in self.queues.items() if tier in (None, t))

    def estimated_wait_s(self, tier: Tier, extra_units: int = 0) -> float:
        """Time until a new `tier` request of `extra_units` would be answered: the queued work
        of its tier and above at the replicas' measured compute rate, plus one model call.

        A call's time is the fastest tier's recent average: the replica's batcher serves by tier,
        so urgent work does not wait for everything in flight, and a tier that has been refused
        for a while cannot lock itself out with a stale figure.
        """
        ahead = sum(t.units for tr in Tier if tr.rank <= tier.rank for t in self.queues[tr])
        drain_s = (ahead + extra_units) * self.rate.seconds_per_unit / max(1, self.replicas)
        return drain_s + min(self.call_s.values())

    async def submit(
        self, work: Any, units: int, tier: Tier, deadline: float, tenant: str = ""
    ) -> tuple[Any, Ticket]:
        """Queue one request; returns the deployment's answer and the ticket (for its timings).

        Raises `Rejection` (full queue, unreachable or passed deadline, no answer by the deadline).
        If the caller is cancelled (client went away) while the request waits, it leaves the queue.
        """
        ticket = self._admit(work, units, tier, deadline, tenant)
        queue = self.queues[tier]
        queue.append(ticket)
        self.pump()
        try:
            async with asyncio.timeout(self.watchdog_s(deadline)):
                return await asyncio.shield(ticket.future), ticket
        except TimeoutError:
            if ticket in queue:
                queue.remove(ticket)
            raise Rejection(503, "deadline_exceeded", "no answer from the model by the deadline", 1) from None
        except asyncio.CancelledError:
            if ticket in queue:  # not yet dispatched
                queue.remove(ticket)
                self.on_cancelled(ticket)
            raise

    def watchdog_s(self, deadline: float) -> float:
        """Seconds from now until a request of `deadline` is answered 503 whatever its model does."""
        return max(0.0, deadline - self.clock()) + self.answer_grace_s

    async def hold(self, units: int, tier: Tier, deadline: float, tenant: str = "") -> Ticket:
        """Wait for room for a streamed request (an LLM generation) and return its granted ticket.

        Same admission as `submit` (full queue 429, unreachable deadline 503, tier order), but the
        caller runs the stream itself and must `release` the ticket when it ends: its units count as
        in flight until then. A caller cancelled while waiting leaves the queue.
        """
        ticket = self._admit(None, units, tier, deadline, tenant)
        ticket.held = True
        self.queues[tier].append(ticket)
        self.pump()
        try:
            await ticket.future
        except asyncio.CancelledError:
            if ticket in self.queues[tier]:
                self.queues[tier].remove(ticket)
                self.on_cancelled(ticket)
            elif ticket.dispatched is not None:
                self.release(ticket)
            raise
        return ticket

    def _admit(self, work: Any, units: int, tier: Tier, deadline: float, tenant: str) -> Ticket:
        """A ticket for a new request, or a `Rejection` (full tier queue, unreachable deadline)."""
        now = self.clock()
        if len(self.queues[tier]) >= self.tiers[tier].queue_limit:
            raise Rejection(
                429, "queue_full", f"the {tier} queue for this model is full", self.estimated_wait_s(tier)
            )
        wait = self.estimated_wait_s(tier, extra_units=units)
        idle = not self.depth() and self.in_flight_units == 0
        # On an idle model nothing can be done sooner: the request is tried rather than refused
        # with a 503 that no retry could ever fix (it would only meet the same estimate again).
        if now + wait > deadline and not idle:
            budget_ms = (deadline - now) * 1000
            message = f"the backlog (~{wait * 1000:.0f} ms) exceeds the deadline ({budget_ms:.0f} ms)"
            raise Rejection(503, "deadline_exceeded", message, wait)
        return Ticket(work, units, tier, deadline, now, asyncio.get_running_loop().create_future(), tenant)

    def release(self, ticket: Ticket) -> None:
        """A held stream ended (answered, failed or abandoned): its units leave the in-flight count."""
        if ticket.answered is None:
            ticket.answered = self.clock()
            self.in_flight_units -= ticket.units
            self.pump()

    # --- what the router reads and tells ----------------------------------------------------------
    def set_replicas(self, running: int) -> None:
        """The deployment's running replicas changed: the in-flight cap scales with them."""
        self.replicas = max(1, running)
        self.pump()

    def observe_compute(self, units: int, compute_s: float) -> None:
        """An answered request's share of replica compute: the rate deadlines are judged by."""
        self.rate.observe(units, compute_s)

    def queued_units(self) -> int:
        return sum(t.units for q in self.queues.values() for t in q)

    def stats(self) -> dict[str, Any]:
        """A snapshot for `/admin/usage`."""
        return {
            "replicas": self.replicas,
            "queued": {t.value: self.depth(t) for t in Tier},
            "queued_units": self.queued_units(),
            "in_flight_units": self.in_flight_units,
            "in_flight_calls": self.in_flight_calls,
            "seconds_per_unit": self.rate.seconds_per_unit,
        }

    # --- dispatch -------------------------------------------------------------------------------
    def pump(self) -> None:
        """Send groups of queued requests while the deployment has room."""
        while (tier := self._dispatchable_tier()) is not None:
            room = max(self.max_in_flight - self.in_flight_units, 1)
            group = self._take_group(tier, room)
            if group and group[0].held:  # a stream's slot: granted, not sent
                if not group[0].future.done():  # else its caller is gone
                    self.in_flight_units += group[0].units
                    group[0].future.set_result(None)
            elif group:
                self.in_flight_units += sum(t.units for t in group)
                self.in_flight_calls += 1
                asyncio.get_running_loop().create_task(self._call(group))

    def _dispatchable_tier(self) -> Tier | None:
        """The tier of the next call, or None while the deployment is full.

        Premium has an express lane of `express_calls_per_replica` extra calls (for held stream
        slots: as many extra units): it never waits in the router behind bulk work already in flight
        (the replica's batcher or scheduler puts it first)."""
        if not self.depth():
            return None
        if self.has_room():
            return self._next_tier()
        premium = self.queues[Tier.premium]
        if premium and premium[0].held:
            return Tier.premium if self.in_flight_units < self.max_in_flight + self.express_calls else None
        if premium and self.in_flight_calls < self.max_calls + self.express_calls:
            return Tier.premium
        return None

    def _take_group(self, tier: Tier, room: int) -> list[Ticket]:
        """One call's worth of queued requests, all of one tier: a call answers when its slowest
        request is done, so urgent work never rides in a call with bulk work."""
        queue = self.queues[tier]
        group: list[Ticket] = []
        units = 0
        limit = min(room, self.max_group_units)
        while queue and len(group) < self.max_group_requests:
            head = queue[0]
            if group and (head.held or units + head.units > limit):
                break  # a held slot is granted alone
            queue.popleft()
            now = self.clock()
            busy = self.in_flight_units > 0 or bool(group)  # else it starts now: only a passed deadline
            if head.deadline < now + (head.units * self.rate.seconds_per_unit if busy else 0.0):
                head.future.set_exception(
                    Rejection(503, "deadline_exceeded", "the deadline passed while the request was queued", 1)
                )
                continue
            head.dispatched = now
            self.on_dispatch(head)
            group.append(head)
            units += head.units
            if head.held:
                break
        return group

    def _next_tier(self) -> Tier:
        waiting = [t for t in Tier if self.queues[t]]
        starving = [t for t in waiting[1:] if self.passed_over[t] >= self.starvation_guard]
        chosen = starving[0] if starving else waiting[0]
        for t in waiting:
            self.passed_over[t] = 0 if t == chosen else self.passed_over[t] + (t.rank > chosen.rank)
        return chosen

    async def _call(self, group: list[Ticket]) -> None:
        units = sum(t.units for t in group)
        try:
            async with asyncio.timeout(self.watchdog_s(max(t.deadline for t in group))):
                results = await self.send(group)
        except TimeoutError:  # the watchdog: cancels the call (Serve cancels it on the replica)
            late = Rejection(503, "deadline_exceeded", "no answer from the model by the deadline", 1)
            for t in group:
                if not t.future.done():
                    t.future.set_exception(late)
        except Exception as exc:
            for t in group:
                if not t.future.done():
                    t.future.set_exception(exc)
        else:
            answered = self.clock()
            for t, result in zip(group, results, strict=True):
                t.answered = answered
                self.call_s[t.tier] += 0.2 * (t.model_s - self.call_s[t.tier])
                if not t.future.done():
                    t.future.set_result(result)
        finally:
            self.in_flight_units -= units
            self.in_flight_calls -= 1
            self.pump()
