"""Tenant limits that hold for the tenant as a whole when the router runs as several replicas.

Each router replica keeps its own `TenantState`, so N replicas would grant a tenant N times its rate
and quota. The `TenantLedger` deployment (one replica) holds the one true state per tenant; router
replicas lease requests from it in batches (`LeasedTenantState`) and admit from their lease locally,
so a request waits on the ledger only when its router's lease is empty (a tenant's first request,
or a burst beyond what the router expected). Every admitted request was granted by the ledger: the
tenant's admitted rate is its configured rate, however many routers there are. Unused leases go
back after `idle_return_s`; input tokens used are reported with the next lease call.

Leases are sized from the rate each router sees (`horizon_s` of it), so a router that serves a
tenant 100 times a second asks about 4 times a second, and one that sees it once a minute holds one.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from ray import serve

from infergraph.deployments.tenants import Rejection, TenantConfig, TenantRegistry, TenantsConfig, TenantState

log = logging.getLogger("ray.serve")


@dataclass
class Grant:
    granted: int
    code: str = ""  # why fewer than asked: rate_limited or quota_exceeded
    message: str = ""
    retry_after_s: float = 0.0


def grant(state: TenantState, want: int, returned: int, tokens: int, now: float) -> Grant:
    """Apply a router's report (leased requests it gives back, input tokens it used) to the tenant's
    one state, then lease it up to `want` requests by the tenant's own rules (`TenantState.admit`)."""
    for _ in range(returned):
        state.refund(now)
    if tokens:
        state.record_tokens(tokens, now)
    granted = 0
    for _ in range(want):
        try:
            state.admit(now)
        except Rejection as refused:
            return Grant(granted, refused.code, refused.message, refused.retry_after_s)
        granted += 1
    return Grant(granted)


@serve.deployment(ray_actor_options={"num_cpus": 0.01}, max_ongoing_requests=1024)
class TenantLedger:
    """The tenants' rates and quotas as a whole, for every router replica."""

    def __init__(self, tenants: dict[str, Any]) -> None:
        registry = TenantRegistry(TenantsConfig.model_validate(tenants))
        self.states = {s.config.name: s for s in registry.by_hash.values()}

    async def lease(self, tenant: str, want: int, returned: int = 0, tokens: int = 0) -> Grant:
        return grant(self.states[tenant], want, returned, tokens, time.time())


Lease = Callable[[str, int, int, int], Awaitable[Grant]]


class LeasedTenantState(TenantState):
    """A tenant as one router replica sees it: admits from requests leased from the ledger.

    `refund` and `record_tokens` stay local until the next lease call reports them. When the ledger
    cannot be reached the router falls back to its own state (`TenantState`: limits per replica) and
    logs it, so an outage of the ledger does not refuse every request."""

    def __init__(
        self,
        config: TenantConfig,
        now: float,
        lease: Lease,
        horizon_s: float = 0.25,
        idle_return_s: float = 2.0,
    ) -> None:
        super().__init__(config, now)
        self.lease, self.horizon_s, self.idle_return_s = lease, horizon_s, idle_return_s
        self.allowance = 0
        self.pending_tokens = 0
        self.refused: Grant | None = None  # the ledger's last refusal, until its retry time
        self.refused_until = 0.0
        self.rate = 0.0  # requests/s this router sees for the tenant (EWMA)
        self.last_admit = now
        self.refill: asyncio.Task[None] | None = None

    def want(self) -> int:
        return max(1, math.ceil(self.rate * self.horizon_s))

    async def acquire(self, now: float) -> None:
        """Admit one request from the lease, refilling it first only when it is empty."""
        gap = max(now - self.last_admit, 0.0)
        self.rate = self.rate * math.exp(-gap) + 1  # ~ requests in the last second
        self.last_admit = now
        while self.allowance == 0:  # the ledger grants, or refuses: then this request is refused
            if self.refused is not None and time.time() < self.refused_until:
                wait = self.refused_until - time.time()
                raise Rejection(429, self.refused.code, self.refused.message, wait)
            self._refill_soon()
            assert self.refill is not None
            await asyncio.shield(self.refill)
        self.allowance -= 1
        if self.allowance < self.want() / 2:
            self._refill_soon()

    def _refill_soon(self) -> None:
        if self.refill is None or self.refill.done():
            self.refill = asyncio.get_running_loop().create_task(self._sync(self.want(), 0))

    async def _sync(self, want: int, returned: int) -> None:
        tokens, self.pending_tokens = self.pending_tokens, 0
        try:
            got = await self.lease(self.config.name, want, returned, tokens)
        except Exception as exc:  # the ledger is away: this replica's own limits, by the same rules
            log.warning("tenant ledger unreachable (%s): per-replica limits for %s", exc, self.config.name)
            got = grant(self, want, 0, 0, time.time())  # `admit` here is TenantState's own
        self.allowance += got.granted
        if got.granted < want:
            self.refused, self.refused_until = got, time.time() + got.retry_after_s
        else:
            self.refused = None

    def refund(self, now: float) -> None:
        self.allowance += 1  # back into the lease: used by the next request, or returned when idle

    def record_tokens(self, tokens: int, now: float) -> None:
        self.pending_tokens += tokens

    async def tidy(self, now: float) -> None:
        """Give an idle tenant's lease back, and report tokens used (the router calls this every second)."""
        idle = now - self.last_admit > self.idle_return_s
        if (idle and self.allowance) or self.pending_tokens:
            if self.refill is not None and not self.refill.done():
                return
            returned = self.allowance if idle else 0
            self.allowance -= returned
            if idle:
                self.rate = 0.0
            self.refill = asyncio.get_running_loop().create_task(self._sync(0, returned))
            await asyncio.shield(self.refill)
