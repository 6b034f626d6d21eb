"""Tenant limits across router replicas: several routers leasing from one ledger admit, together,
the tenant's configured rate; none of them waits on the ledger while its lease lasts.

The ledger here is `ledger.grant` over one `TenantState` in this process, called the way the
TenantLedger deployment is (an async call); the routers are `LeasedTenantState`s."""

from __future__ import annotations

import asyncio
import time

import pytest

from infergraph.deployments.ledger import Grant, LeasedTenantState, grant
from infergraph.deployments.tenants import Rejection, TenantConfig, TenantState, Tier, hash_key


def tenant(rps: float, burst: int, tokens_per_s: float | None = None) -> TenantConfig:
    rate = {"requests_per_s": rps, "burst": burst, "input_tokens_per_s": tokens_per_s}
    return TenantConfig.model_validate(
        {"name": "acme", "key_sha256": hash_key("k"), "tier": Tier.standard, "rate": rate}
    )


class InProcessLedger:
    """The TenantLedger deployment's logic, called as the routers call it; counts the calls."""

    def __init__(self, config: TenantConfig) -> None:
        self.state = TenantState(config, time.time())
        self.calls = 0
        self.down = False

    async def lease(self, name: str, want: int, returned: int, tokens: int) -> Grant:
        self.calls += 1
        await asyncio.sleep(0.001)  # a remote call
        if self.down:
            raise TimeoutError("ledger unreachable")
        return grant(self.state, want, returned, tokens, time.time())


def routers(ledger: InProcessLedger, n: int, **kw) -> list[LeasedTenantState]:
    return [LeasedTenantState(ledger.state.config, time.time(), ledger.lease, **kw) for _ in range(n)]


async def hammer(router: LeasedTenantState, seconds: float) -> int:
    """Requests back to back for `seconds`; returns how many were admitted."""
    admitted, end = 0, time.monotonic() + seconds
    while time.monotonic() < end:
        try:
            await router.acquire(time.time())
            admitted += 1
        except Rejection:
            await asyncio.sleep(0.002)
    return admitted


@pytest.mark.parametrize("replicas", [1, 3])
def test_routers_together_admit_the_tenants_rate_not_a_multiple_of_it(replicas):
    ledger = InProcessLedger(tenant(rps=50, burst=10))

    async def scenario():
        started = time.monotonic()
        counts = await asyncio.gather(*(hammer(r, 1.5) for r in routers(ledger, replicas)))
        return sum(counts), time.monotonic() - started

    admitted, seconds = asyncio.run(scenario())
    allowed = 10 + 50 * seconds  # the burst, then the rate
    assert 0.9 * allowed <= admitted <= allowed + 1, (admitted, allowed)


def test_per_replica_states_would_admit_the_rate_once_per_router():
    """What the ledger fixes: three routers with their own `TenantState` admit three times the rate."""
    config = tenant(rps=50, burst=10)
    states = [TenantState(config, time.time()) for _ in range(3)]
    admitted = 0
    end = time.monotonic() + 1.0
    while time.monotonic() < end:
        for s in states:
            try:
                s.admit(time.time())
                admitted += 1
            except Rejection:
                pass
    assert admitted > 2 * (10 + 50 * 1.0)


def test_a_lease_serves_many_requests_without_asking_the_ledger_each_time():
    ledger = InProcessLedger(tenant(rps=1000, burst=2000))
    (router,) = routers(ledger, 1)

    async def scenario():
        for _ in range(500):
            await router.acquire(time.time())
            await asyncio.sleep(0.0005)

    asyncio.run(scenario())
    assert ledger.calls < 100, f"{ledger.calls} ledger calls for 500 requests"


def test_a_burst_at_cold_start_is_admitted_not_refused_for_lack_of_a_lease():
    ledger = InProcessLedger(tenant(rps=100, burst=200))
    (router,) = routers(ledger, 1)

    async def scenario():
        return await asyncio.gather(
            *(router.acquire(time.time()) for _ in range(150)), return_exceptions=True
        )

    outcomes = asyncio.run(scenario())
    assert [o for o in outcomes if o is not None] == []


def test_an_idle_routers_lease_goes_back_for_the_others():
    ledger = InProcessLedger(tenant(rps=1, burst=40))
    busy, idle = routers(ledger, 2, idle_return_s=0.05)

    async def scenario():
        for _ in range(20):  # `idle` sees a fast stream, then nothing: it leased ahead
            await idle.acquire(time.time())
        held = idle.allowance
        await asyncio.sleep(0.1)
        await idle.tidy(time.time())
        admitted = 0
        for _ in range(40):
            try:
                await busy.acquire(time.time())
                admitted += 1
            except Rejection:
                break
        return held, admitted

    held, admitted = asyncio.run(scenario())
    # 40 in the bucket, 20 used by `idle`: `busy` gets the other 20 only if `idle`'s lease came back
    assert held > 0 and admitted >= 20


def test_input_tokens_used_on_one_router_limit_the_others():
    ledger = InProcessLedger(tenant(rps=100, burst=100, tokens_per_s=1000))
    a, b = routers(ledger, 2)

    async def scenario():
        await a.acquire(time.time())
        a.record_tokens(5000, time.time())  # five seconds' worth of tokens at once
        await a.tidy(time.time())
        b.allowance = 0
        with pytest.raises(Rejection) as refused:
            await b.acquire(time.time())
        return refused.value

    refused = asyncio.run(scenario())
    assert (refused.status, refused.code) == (429, "rate_limited") and refused.retry_after_s > 0


def test_refusal_carries_the_ledgers_reason_and_retry_after():
    ledger = InProcessLedger(tenant(rps=1, burst=1))
    (router,) = routers(ledger, 1)

    async def scenario():
        await router.acquire(time.time())
        with pytest.raises(Rejection) as refused:
            await router.acquire(time.time())
        return refused.value

    refused = asyncio.run(scenario())
    assert refused.code == "rate_limited" and 0 < refused.retry_after_s <= 1.0


def test_without_the_ledger_a_router_falls_back_to_its_own_limits():
    ledger = InProcessLedger(tenant(rps=1, burst=3))
    ledger.down = True
    (router,) = routers(ledger, 1)

    async def scenario():
        admitted = 0
        for _ in range(5):
            try:
                await router.acquire(time.time())
                admitted += 1
            except Rejection:
                pass
        return admitted

    assert asyncio.run(scenario()) == 3
