"""A model replica that dies while it holds a call (defect 4 of the reliability issue): the router
tries once more on another replica while the deadline is ahead, and otherwise answers an OpenAI-shaped
503 `replica_unavailable` with Retry-After, never a 500.

The handle is a stand-in for a Serve `DeploymentHandle` (named as such); the exceptions are Ray's own,
and the queue, the gateway and the router's `model_queue` are the real ones."""

import asyncio

import numpy as np
import pytest
from ray.exceptions import ActorUnavailableError

from infergraph.deployments.admission import AdmissionConfig
from infergraph.deployments.encoder import EmbeddingsEndpoint
from infergraph.deployments.errors import ApiError
from infergraph.deployments.gateway import Gateway, ServedModel
from infergraph.deployments.metrics import RouterMetrics
from infergraph.deployments.router import model_queue
from infergraph.deployments.tenants import TenantRegistry, TenantsConfig, hash_key
from infergraph.protocol.common import Tier
from infergraph.protocol.embeddings import EmbedResult


def tenants() -> TenantRegistry:
    rate = {"requests_per_s": 100, "burst": 100}
    return TenantRegistry(TenantsConfig.model_validate({
        "admin_key_sha256": hash_key("admin"),
        "price_per_replica_hour": 1.0,
        "tiers": {t: {"deadline_ms": 10_000, "queue_limit": 8} for t in Tier},
        "tenants": [{"name": "gold", "key_sha256": hash_key("gold-key"), "tier": "premium", "rate": rate}],
    }))  # fmt: skip


class StandInHandle:
    """Stands in for a deployment handle whose replica dies for the first `failures` calls."""

    def __init__(self, failures: int) -> None:
        self.failures, self.calls = failures, 0
        self.run = self

    def remote(self, jobs):
        self.calls += 1
        failing = self.calls <= self.failures

        async def answer():
            await asyncio.sleep(0)
            if failing:
                raise ActorUnavailableError("the replica's process was killed", None)
            return [
                EmbedResult(embeddings=np.ones((j.work.units, 4), np.float32), compute_s=0.01) for j in jobs
            ]

        return answer()

    async def info(self):
        return {"dimensions": 4}


def serve_one(failures: int):
    registry = tenants()
    handle = StandInHandle(failures)
    queue = model_queue(handle, registry.config.tiers, AdmissionConfig())  # type: ignore[arg-type]
    model = ServedModel("enc", "text-encoder", queue, handle.info)
    gw = Gateway(registry, RouterMetrics(1.0), {"enc": model})

    async def body():
        return {"model": "enc", "input": ["hello"]}

    answer = asyncio.run(gw.serve(EmbeddingsEndpoint(), "/v1/embeddings", "Bearer gold-key", body))
    return answer, handle


def test_a_replica_lost_once_is_retried_on_another_and_the_request_answered():
    answer, handle = serve_one(failures=1)
    assert handle.calls == 2 and b'"embedding"' in answer.body


def test_a_replica_lost_twice_is_a_503_with_retry_after_not_a_500():
    with pytest.raises(ApiError) as err:
        serve_one(failures=2)
    assert (err.value.status, err.value.code) == (503, "replica_unavailable")
    assert int(err.value.headers["Retry-After"]) >= 1
