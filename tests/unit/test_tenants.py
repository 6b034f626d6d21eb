"""Tenants: keys, token buckets, quotas and deadlines as a caller experiences them."""

from pathlib import Path

import pytest

from infergraph.deployments.tenants import (
    Rejection,
    TenantRegistry,
    TenantsConfig,
    Tier,
    hash_key,
    load_tenants,
    refuse_published_keys,
)

ROOT = Path(__file__).resolve().parents[2]


class Clock:
    def __init__(self, t: float = 1_000_000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def registry(clock: Clock, **tenant) -> TenantRegistry:
    config = {
        "admin_key_sha256": hash_key("admin"),
        "price_per_replica_hour": 1.0,
        "tiers": {t: {"deadline_ms": 1000 * (i + 1), "queue_limit": 10} for i, t in enumerate(Tier)},
        "tenants": [
            {
                "name": "acme",
                "key_sha256": hash_key("acme-key"),
                "tier": "premium",
                "rate": tenant.get("rate", {"requests_per_s": 1, "burst": 2}),
                "quota": tenant.get("quota", {}),
                "models": ["model-a"],
            }
        ],
    }
    return TenantRegistry(TenantsConfig.model_validate(config), clock=clock)


def rejected(fn) -> Rejection:
    with pytest.raises(Rejection) as info:
        fn()
    return info.value


def test_bearer_key_finds_its_tenant_and_bad_keys_get_401():
    reg = registry(Clock())
    assert reg.authenticate("Bearer acme-key").config.name == "acme"
    assert rejected(lambda: reg.authenticate("Bearer nope")).status == 401
    assert rejected(lambda: reg.authenticate(None)).code == "missing_api_key"
    assert rejected(lambda: reg.authenticate("Basic acme-key")).status == 401
    assert reg.is_admin("Bearer admin") and not reg.is_admin("Bearer acme-key")


def test_model_permissions():
    tenant = registry(Clock()).authenticate("Bearer acme-key")
    assert tenant.config.may_use("model-a") and not tenant.config.may_use("model-b")


def test_burst_then_rate_limit_with_retry_after():
    clock = Clock()
    tenant = registry(clock).authenticate("Bearer acme-key")
    tenant.admit(clock())
    tenant.admit(clock())
    refusal = rejected(lambda: tenant.admit(clock()))
    assert (refusal.status, refusal.code) == (429, "rate_limited")
    assert refusal.retry_after == "1"
    clock.t += 1.0
    tenant.admit(clock())  # one request's worth refilled


def test_input_tokens_are_charged_after_the_fact():
    clock = Clock()
    reg = registry(clock, rate={"requests_per_s": 100, "burst": 100, "input_tokens_per_s": 100})
    tenant = reg.authenticate("Bearer acme-key")
    tenant.admit(clock())
    tenant.record_tokens(400, clock())  # 300 tokens in debt: 3 s at 100 tokens/s
    refusal = rejected(lambda: tenant.admit(clock()))
    assert refusal.code == "rate_limited" and refusal.retry_after == "3"
    clock.t += 3.01
    tenant.admit(clock())


def test_daily_quota_resets_the_next_day():
    clock = Clock(86400 * 100 + 3600)
    reg = registry(clock, rate={"requests_per_s": 100, "burst": 100}, quota={"requests_per_day": 2})
    tenant = reg.authenticate("Bearer acme-key")
    tenant.admit(clock())
    tenant.admit(clock())
    refusal = rejected(lambda: tenant.admit(clock()))
    assert refusal.code == "quota_exceeded" and int(refusal.retry_after) == 86400 - 3600
    clock.t += 86400
    tenant.admit(clock())


def test_deadline_is_the_tier_default_or_tighter():
    reg = registry(Clock())
    assert reg.deadline_s(Tier.premium, None) == 1.0
    assert reg.deadline_s(Tier.premium, 250) == 0.25
    assert reg.deadline_s(Tier.premium, 99_999) == 1.0  # a client cannot loosen its tier's deadline


def test_shipped_config_matches_the_documented_keys():
    reg = TenantRegistry(load_tenants(ROOT / "configs" / "tenants.yaml"))
    expected = {"sk-ig-dev": "standard", "sk-ig-demo-premium": "premium", "sk-ig-demo-batch": "batch"}
    for key, tier in expected.items():
        assert reg.authenticate(f"Bearer {key}").config.tier == tier
    assert reg.is_admin("Bearer sk-ig-admin")
    assert Tier.premium.rank < Tier.standard.rank < Tier.batch.rank


def test_anonymous_requests_only_where_configured():
    shipped = load_tenants(ROOT / "configs" / "tenants.yaml")
    assert shipped.anonymous_tenant is None, "the default config must answer 401 without a key"
    open_config = shipped.model_copy(update={"anonymous_tenant": "dev"})
    assert TenantRegistry(open_config).authenticate(None).config.name == "dev"
    with pytest.raises(ValueError):
        TenantsConfig.model_validate({**shipped.model_dump(mode="json"), "anonymous_tenant": "nobody"})


def test_a_time_stamped_earlier_than_the_last_one_takes_no_tokens_away():
    """Requests are stamped when they arrive and charged out of order (a slow upload next to a quick
    request): an earlier time must not count as negative refill (a false 429 rate_limited)."""
    clock = Clock()
    reg = registry(clock, rate={"requests_per_s": 1, "burst": 2, "input_tokens_per_s": 1000})
    tenant = reg.authenticate("Bearer acme-key")
    tenant.admit(clock() + 3.0)  # a quick request finishing 3 s after a slow upload started
    tenant.record_tokens(10, clock() + 3.0)
    tenant.admit(clock())  # the slow one, stamped at its start: one token is still there
    assert tenant.requests.level >= 0


def test_a_refused_request_is_refunded_to_quota_and_rate():
    clock = Clock()
    reg = registry(clock, rate={"requests_per_s": 0.001, "burst": 1}, quota={"requests_per_day": 1})
    tenant = reg.authenticate("Bearer acme-key")
    tenant.admit(clock())
    tenant.refund(clock())  # e.g. the queue was full: 429 queue_full is not a use of the quota
    tenant.admit(clock())  # neither the daily quota nor the bucket counted the refused one
    assert rejected(lambda: tenant.admit(clock())).code == "quota_exceeded"


def shipped_tenants() -> TenantsConfig:
    return load_tenants(ROOT / "configs" / "tenants.yaml")


def test_the_published_keys_are_refused_on_a_public_address():
    with pytest.raises(ValueError, match="published development keys of dev, demo-premium") as refused:
        refuse_published_keys(shipped_tenants(), "0.0.0.0", allowed=False)
    assert "admin" in str(refused.value) and "allow_dev_keys" in str(refused.value)


def test_the_published_keys_are_fine_on_loopback_or_when_allowed():
    refuse_published_keys(shipped_tenants(), "127.0.0.1", allowed=False)
    refuse_published_keys(shipped_tenants(), "0.0.0.0", allowed=True)


def test_own_keys_are_fine_on_a_public_address():
    config = registry(Clock()).config  # acme's own key, an admin key of its own
    refuse_published_keys(config, "0.0.0.0", allowed=False)
