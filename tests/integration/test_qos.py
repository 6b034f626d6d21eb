"""QoS through the real service: keys, limits, tiers under overload, deadlines, cancellation, metrics.

The service runs `configs/serve.yaml` with only the English encoder and a tenants file made for the
test (small queues, a throttled tenant, a tenant with a quota), so limits are reached quickly.
"""

import asyncio
import os
import tempfile
import time
from pathlib import Path

import httpx
import openai
import pytest
import yaml

from infergraph.deployments.tenants import hash_key
from infergraph.testing import DEV_KEY
from infergraph.testing.service import serving_only, start_service

MINILM = "all-MiniLM-L6-v2"
PREMIUM_DEADLINE_MS = 8000  # generous: CI shares 2 cores with Ray itself
KEYS = {"premium": "sk-qos-premium", "batch": "sk-qos-batch", "slow": "sk-qos-slow", "quota": "sk-qos-quota"}
KEYS["e5-only"] = "sk-qos-e5-only"


def tenants_file(path: Path) -> Path:
    fast = {"requests_per_s": 1000, "burst": 1000}

    def tenant(name: str, key: str, tier: str, **extra) -> dict:
        return {"name": name, "key_sha256": hash_key(key), "tier": tier, "rate": fast, **extra}

    config = {
        "admin_key_sha256": hash_key("sk-qos-admin"),
        "price_per_replica_hour": 3.6,  # 0.001 per compute-second
        "tiers": {
            "premium": {"deadline_ms": PREMIUM_DEADLINE_MS, "queue_limit": 64},
            "standard": {"deadline_ms": 20000, "queue_limit": 64},
            "batch": {"deadline_ms": 60000, "queue_limit": 4},
        },
        "tenants": [
            tenant("dev", DEV_KEY, "standard"),
            tenant("premium", KEYS["premium"], "premium"),
            tenant("batch", KEYS["batch"], "batch"),
            {**tenant("slow", KEYS["slow"], "standard"), "rate": {"requests_per_s": 0.2, "burst": 2}},
            tenant("quota", KEYS["quota"], "standard", quota={"requests_per_day": 2}),
            tenant("e5-only", KEYS["e5-only"], "standard", models=["multilingual-e5-small"]),
        ],
    }
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.fixture(scope="module")
def qos_service():
    os.environ.setdefault("RAY_TMPDIR", tempfile.mkdtemp(prefix="igt-ray-"))
    workdir = Path(tempfile.mkdtemp(prefix="ig-qos-"))
    config = serving_only([MINILM])
    config["applications"][0]["args"]["tenants"] = str(tenants_file(workdir / "tenants.yaml"))
    path = workdir / "serve.yaml"
    path.write_text(yaml.safe_dump(config))
    running = start_service(path)
    try:
        yield running.base_url
    finally:
        running.stop()


def client(base: str, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{base}/v1", api_key=key, max_retries=0, timeout=60)


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def test_keys_and_model_permissions(qos_service):
    with pytest.raises(openai.AuthenticationError):
        client(qos_service, "sk-wrong").embeddings.create(model=MINILM, input="x")
    r = httpx.post(f"{qos_service}/v1/embeddings", json={"model": MINILM, "input": "x"}, timeout=30)
    assert r.status_code == 401 and r.json()["error"]["code"] == "missing_api_key"
    with pytest.raises(openai.PermissionDeniedError):
        client(qos_service, KEYS["e5-only"]).embeddings.create(model=MINILM, input="x")


def test_rate_limit_and_quota_answer_429_with_retry_after(qos_service):
    slow = client(qos_service, KEYS["slow"])
    slow.embeddings.create(model=MINILM, input="one")
    slow.embeddings.create(model=MINILM, input="two")  # the burst of 2
    with pytest.raises(openai.RateLimitError) as info:
        slow.embeddings.create(model=MINILM, input="three")
    assert info.value.body["code"] == "rate_limited"
    assert int(info.value.response.headers["retry-after"]) >= 1

    quota = client(qos_service, KEYS["quota"])
    quota.embeddings.create(model=MINILM, input="one")
    quota.embeddings.create(model=MINILM, input="two")
    with pytest.raises(openai.RateLimitError) as info:
        quota.embeddings.create(model=MINILM, input="three")
    assert info.value.body["code"] == "quota_exceeded"


def test_bad_deadline_header_is_a_400(qos_service):
    headers = {**auth(DEV_KEY), "X-Deadline-Ms": "soon"}
    r = httpx.post(f"{qos_service}/v1/embeddings", json={"model": MINILM, "input": "x"}, headers=headers)
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_deadline"


Outcome = tuple[int, float, httpx.Response]


async def post(http: httpx.AsyncClient, base: str, key: str, texts: list[str]) -> Outcome:
    t0 = time.perf_counter()
    r = await http.post(f"{base}/v1/embeddings", json={"model": MINILM, "input": texts}, headers=auth(key))
    return r.status_code, time.perf_counter() - t0, r


def test_overload_sheds_batch_and_keeps_premium_within_its_deadline(qos_service):
    """A flood of big batch-tier requests, then premium traffic: premium is answered in time,
    batch gets 429 queue_full with Retry-After, and nothing is left unanswered."""
    big = [f"batch sentence {i} about the weather in a city far away" for i in range(32)]

    async def scenario():
        async with httpx.AsyncClient(timeout=120) as http:
            flood = [asyncio.create_task(post(http, qos_service, KEYS["batch"], big)) for _ in range(24)]
            await asyncio.sleep(0.3)
            premium = []
            for i in range(12):
                premium.append(await post(http, qos_service, KEYS["premium"], [f"premium question {i}"]))
            return premium, await asyncio.gather(*flood)

    premium, flood = asyncio.run(scenario())
    refused = [r.text for status, _, r in premium if status != 200]
    assert not refused, refused
    assert max(latency for _, latency, _ in premium) < PREMIUM_DEADLINE_MS / 1000
    assert premium[0][2].headers["x-infergraph-tier"] == "premium"
    statuses = [status for status, _, _ in flood]
    assert set(statuses) <= {200, 429}, statuses
    shed = [r for status, _, r in flood if status == 429]
    assert shed, "a batch queue of 4 cannot hold 24 requests"
    assert all(r.json()["error"]["code"] == "queue_full" and int(r.headers["retry-after"]) >= 1 for r in shed)
    assert 200 in statuses, "batch work still gets served"
    answered_batch = sorted(latency for status, latency, _ in flood if status == 200)
    premium_latencies = sorted(latency for _, latency, _ in premium)
    assert premium_latencies[len(premium_latencies) // 2] < answered_batch[len(answered_batch) // 2]


def test_a_tighter_deadline_that_the_backlog_cannot_meet_is_refused_up_front(qos_service):
    big = [f"standard sentence {i} " + "with a few more words to embed " * 8 for i in range(64)]

    async def scenario():
        async with httpx.AsyncClient(timeout=120) as http:
            backlog = [asyncio.create_task(post(http, qos_service, DEV_KEY, big)) for _ in range(12)]
            await asyncio.sleep(0.2)
            headers = {**auth(DEV_KEY), "X-Deadline-Ms": "1"}
            hurried = await http.post(
                f"{qos_service}/v1/embeddings", json={"model": MINILM, "input": "now"}, headers=headers
            )
            await asyncio.gather(*backlog)
            return hurried

    hurried = asyncio.run(scenario())
    assert hurried.status_code == 503, hurried.text
    assert hurried.json()["error"]["code"] == "deadline_exceeded" and "retry-after" in hurried.headers


def metrics_text(base: str) -> str:
    r = httpx.get(f"{base}/metrics", headers=auth("sk-qos-admin"), timeout=30)
    r.raise_for_status()
    return r.text


def test_a_client_that_disconnects_leaves_the_queue(qos_service):
    # Long enough to take seconds on any box: a backlog that drains before the impatient clients
    # arrive would let them be answered within their 0.2 s.
    big = [f"standard sentence {i} " + "with a few more words to embed " * 8 for i in range(64)]

    async def scenario():
        async with httpx.AsyncClient(timeout=120) as http, httpx.AsyncClient(timeout=0.2) as impatient:
            backlog = [asyncio.create_task(post(http, qos_service, DEV_KEY, big)) for _ in range(12)]
            await asyncio.sleep(0.2)
            for i in range(5):
                with pytest.raises(httpx.TimeoutException):
                    await post(impatient, qos_service, DEV_KEY, [f"gone {i}"])
            await asyncio.gather(*backlog)

    asyncio.run(scenario())
    lines = metrics_text(qos_service).splitlines()
    cancelled = [x for x in lines if x.startswith("infergraph_rejections_total{") and "cancelled" in x]
    assert cancelled and sum(float(line.rsplit(" ", 1)[1]) for line in cancelled) >= 1


def test_metrics_and_usage_need_the_admin_key_and_report_per_tenant(qos_service):
    client(qos_service, KEYS["premium"]).embeddings.create(model=MINILM, input="count me")
    assert httpx.get(f"{qos_service}/metrics", headers=auth(DEV_KEY)).status_code == 401
    assert httpx.get(f"{qos_service}/admin/usage").status_code == 401
    text = metrics_text(qos_service)
    labels = f'model="{MINILM}",outcome="ok",tenant="premium",tier="premium"'
    assert f"infergraph_requests_total{{{labels}}}" in text
    assert "infergraph_queue_wait_seconds_bucket" in text and "infergraph_batch_units_bucket" in text
    assert 'infergraph_tenant_cost_per_1k_requests{tenant="premium"}' in text
    usage = httpx.get(f"{qos_service}/admin/usage", headers=auth("sk-qos-admin")).json()
    premium = usage["tenants"]["premium"]
    assert premium["answered"] >= 1 and premium["input_tokens"] > 0 and premium["compute_s"] > 0
    assert premium["cost_per_1k_requests"] > 0
    assert usage["models"][MINILM]["replicas"] >= 1
