"""Tenants: who is calling (API key -> tenant), which tier they get and how much they may send.

Keys are stored as SHA-256 hashes, so the config file is not a secret store. Limits are per router
replica (a token bucket lives in memory); with N router replicas a tenant gets up to N times its
rate. Rejections carry the seconds after which a retry can succeed, for `Retry-After`.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import time
from collections.abc import Callable
from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from infergraph.protocol.common import Tier


class Rejection(Exception):
    """A request refused before it costs compute; the router answers `status` with Retry-After."""

    def __init__(self, status: int, code: str, message: str, retry_after_s: float) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message
        self.retry_after_s = retry_after_s

    @property
    def retry_after(self) -> str:
        """Whole seconds, at least 1 (what HTTP's Retry-After accepts)."""
        return str(max(1, math.ceil(self.retry_after_s)))


class TierPolicy(BaseModel):
    model_config = ConfigDict(extra="forbid")
    deadline_ms: int = Field(gt=0, description="default deadline; a request may ask for a tighter one")
    queue_limit: int = Field(gt=0, description="requests of this tier that may wait per model")


class RateLimit(BaseModel):
    model_config = ConfigDict(extra="forbid")
    requests_per_s: float = Field(gt=0)
    burst: int = Field(gt=0, description="requests allowed at once after an idle spell")
    input_tokens_per_s: float | None = Field(default=None, gt=0, description="prompt tokens per second")


class Quota(BaseModel):
    """Daily allowance (UTC days)."""

    model_config = ConfigDict(extra="forbid")
    requests_per_day: int | None = Field(default=None, gt=0)
    input_tokens_per_day: int | None = Field(default=None, gt=0)


class TenantConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str
    key_sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    tier: Tier
    rate: RateLimit
    quota: Quota = Quota()
    models: list[str] = Field(default=["*"], description='models this tenant may call; "*" is all')

    def may_use(self, model: str) -> bool:
        return "*" in self.models or model in self.models


class TenantsConfig(BaseModel):
    """`configs/tenants.yaml`."""

    model_config = ConfigDict(extra="forbid")
    admin_key_sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    price_per_replica_hour: float = Field(ge=0, description="what one model replica costs, for cost reports")
    tiers: dict[Tier, TierPolicy]
    tenants: list[TenantConfig]
    anonymous_tenant: str | None = Field(
        default=None, description="tenant for requests without a key (benchmarks whose clients send none)"
    )

    @field_validator("tiers")
    @classmethod
    def _every_tier(cls, tiers: dict[Tier, TierPolicy]) -> dict[Tier, TierPolicy]:
        missing = set(Tier) - set(tiers)
        if missing:
            raise ValueError(f"tiers lacks {sorted(t.value for t in missing)}")
        return tiers

    @field_validator("tenants")
    @classmethod
    def _unique(cls, tenants: list[TenantConfig]) -> list[TenantConfig]:
        for attr in ("name", "key_sha256"):
            values = [getattr(t, attr) for t in tenants]
            if len(values) != len(set(values)):
                raise ValueError(f"two tenants share a {attr}")
        return tenants

    @model_validator(mode="after")
    def _anonymous_is_a_tenant(self) -> TenantsConfig:
        if self.anonymous_tenant and self.anonymous_tenant not in {t.name for t in self.tenants}:
            raise ValueError(f"anonymous_tenant '{self.anonymous_tenant}' is not a tenant")
        return self


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


# The development keys configs/tenants.yaml ships with; the README publishes them.
PUBLISHED_KEYS = ("sk-ig-dev", "sk-ig-demo-premium", "sk-ig-demo-standard", "sk-ig-demo-batch", "sk-ig-admin")
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")


def published_keys_in(config: TenantsConfig) -> list[str]:
    """Tenants (and `admin`) whose key is one of the published development keys."""
    published = {hash_key(k) for k in PUBLISHED_KEYS}
    found = [t.name for t in config.tenants if t.key_sha256 in published]
    return found + (["admin"] if config.admin_key_sha256 in published else [])


def refuse_published_keys(config: TenantsConfig, host: str | None, allowed: bool) -> None:
    """A service others can reach must not accept keys anyone can read in the README."""
    if allowed or host is None or host in LOOPBACK_HOSTS:
        return
    found = published_keys_in(config)
    if found:
        raise ValueError(
            f"the service binds to {host}, and the tenants file still has the published development keys of "
            f"{', '.join(found)}: replace them (docs/kubernetes.md, 'API keys'), or set the application's "
            "`allow_dev_keys: true` to serve them anyway"
        )


def load_tenants(path: Path) -> TenantsConfig:
    return TenantsConfig.model_validate(yaml.safe_load(path.read_text()))


class TokenBucket:
    """Classic token bucket; `debit` may drive it negative (a cost known only after the fact)."""

    def __init__(self, rate: float, capacity: float, now: float) -> None:
        self.rate, self.capacity = rate, capacity
        self.level, self.stamp = capacity, now

    def _refill(self, now: float) -> None:
        """Add what accrued since the last call; a time earlier than that (requests are stamped when
        they arrive, and finish out of order) accrues nothing and takes nothing away."""
        if now > self.stamp:
            self.level = min(self.capacity, self.level + (now - self.stamp) * self.rate)
            self.stamp = now

    def wait_s(self, amount: float, now: float) -> float:
        """Seconds until `amount` is available (0 if it is now)."""
        self._refill(now)
        return max(0.0, (amount - self.level) / self.rate)

    def credit(self, amount: float, now: float) -> None:
        """Give `amount` back, never above the capacity."""
        self._refill(now)
        self.level = min(self.capacity, self.level + amount)

    def debit(self, amount: float, now: float) -> None:
        self._refill(now)
        self.level -= amount


class TenantState:
    """One tenant's live limits: request bucket, token bucket, today's quota counters."""

    def __init__(self, config: TenantConfig, now: float) -> None:
        self.config = config
        self.requests = TokenBucket(config.rate.requests_per_s, config.rate.burst, now)
        tps = config.rate.input_tokens_per_s
        self.tokens = TokenBucket(tps, tps, now) if tps else None  # one second of tokens as burst
        self.day = self._day(now)
        self.day_requests = self.day_tokens = 0

    @staticmethod
    def _day(now: float) -> int:
        return int(now // 86400)

    def admit(self, now: float) -> None:
        """Charge one request or raise a 429 `Rejection`; tokens are charged later by `record_tokens`."""
        if self._day(now) != self.day:
            self.day, self.day_requests, self.day_tokens = self._day(now), 0, 0
        quota = self.config.quota
        to_midnight = (self.day + 1) * 86400 - now
        if quota.requests_per_day is not None and self.day_requests >= quota.requests_per_day:
            raise Rejection(429, "quota_exceeded", "daily request quota used up", to_midnight)
        if quota.input_tokens_per_day is not None and self.day_tokens >= quota.input_tokens_per_day:
            raise Rejection(429, "quota_exceeded", "daily input-token quota used up", to_midnight)
        if self.tokens is not None and (wait := self.tokens.wait_s(0, now)) > 0:
            raise Rejection(429, "rate_limited", "input-token rate limit reached", wait)
        if (wait := self.requests.wait_s(1, now)) > 0:
            raise Rejection(429, "rate_limited", "request rate limit reached", wait)
        self.requests.debit(1, now)
        self.day_requests += 1

    async def acquire(self, now: float) -> None:
        """`admit`, as the gateway calls it (a `LeasedTenantState` may have to ask the ledger)."""
        self.admit(now)

    def refund(self, now: float) -> None:
        """Give back a request that was refused after `admit` (a full queue, a deadline the backlog
        makes unreachable): a refusal is not a use of the tenant's quota or rate."""
        self.requests.credit(1, now)
        self.day_requests = max(0, self.day_requests - 1)

    def record_tokens(self, tokens: int, now: float) -> None:
        self.day_tokens += tokens
        if self.tokens is not None:
            self.tokens.debit(tokens, now)


class TenantRegistry:
    """API key -> tenant, with each tenant's live limits."""

    def __init__(
        self,
        config: TenantsConfig,
        clock: Callable[[], float] = time.time,
        make_state: Callable[[TenantConfig, float], TenantState] = TenantState,
    ) -> None:
        self.config = config
        self.clock = clock
        now = clock()
        self.by_hash = {t.key_sha256: make_state(t, now) for t in config.tenants}
        by_name = {state.config.name: state for state in self.by_hash.values()}
        self.anonymous = by_name.get(config.anonymous_tenant or "")

    def authenticate(self, authorization: str | None) -> TenantState:
        """`Authorization: Bearer <key>` -> tenant, or a 401 `Rejection`."""
        key = _bearer(authorization)
        if key is None and self.anonymous is not None and not authorization:
            return self.anonymous
        if key is None:
            raise Rejection(401, "missing_api_key", "send your API key as 'Authorization: Bearer <key>'", 0)
        state = self.by_hash.get(hash_key(key))
        if state is None:
            raise Rejection(401, "invalid_api_key", "the API key is not valid", 0)
        return state

    def is_admin(self, authorization: str | None) -> bool:
        key = _bearer(authorization)
        return key is not None and hmac.compare_digest(hash_key(key), self.config.admin_key_sha256)

    def deadline_s(self, tier: Tier, asked_ms: float | None) -> float:
        """The request's budget: the tier's default, or tighter if the client asked."""
        default = self.config.tiers[tier].deadline_ms
        return (min(default, asked_ms) if asked_ms else default) / 1000


def _bearer(authorization: str | None) -> str | None:
    if not authorization:
        return None
    scheme, _, key = authorization.partition(" ")
    return key.strip() or None if scheme.lower() == "bearer" else None
