"""The serving logic every kind shares, driven without Ray: a stand-in deployment answers the calls
the admission queue makes (named as such), everything else is the real gateway, tenants and queue."""

import asyncio

import numpy as np
import orjson
import pytest

from infergraph.deployments.admission import ModelQueue, Ticket
from infergraph.deployments.encoder import EmbeddingsEndpoint
from infergraph.deployments.errors import ApiError
from infergraph.deployments.gateway import Gateway, ServedModel
from infergraph.deployments.metrics import RouterMetrics
from infergraph.deployments.reranker import RerankEndpoint
from infergraph.deployments.tenants import TenantRegistry, TenantsConfig, hash_key
from infergraph.protocol.common import Tier
from infergraph.protocol.embeddings import EmbedResult, EmbedWork
from infergraph.protocol.rerank import RerankResult, RerankWork

TIERS = {t: {"deadline_ms": 10_000, "queue_limit": 8} for t in Tier}


def tenants(**limits) -> TenantRegistry:
    rate = {"requests_per_s": limits.get("rps", 100), "burst": limits.get("burst", 100)}
    config = {
        "admin_key_sha256": hash_key("admin"),
        "price_per_replica_hour": 3600.0,  # 1 per compute-second: cost equals compute_s
        "tiers": TIERS,
        "tenants": [
            {"name": "gold", "key_sha256": hash_key("gold-key"), "tier": "premium", "rate": rate},
            {
                "name": "small",
                "key_sha256": hash_key("small-key"),
                "tier": "batch",
                "rate": rate,
                "models": ["enc"],
            },
        ],
    }
    return TenantRegistry(TenantsConfig.model_validate(config))


class StandInDeployment:
    """Stands in for a model deployment's `run`: records the jobs, answers like the real kinds."""

    def __init__(self, kind: str) -> None:
        self.kind, self.jobs = kind, []

    async def send(self, group: list[Ticket]):
        self.jobs += [(t.work, t.tier) for t in group]
        if self.kind == "text-encoder":
            return [
                EmbedResult(embeddings=np.ones((t.units, 4), np.float32), usage_tokens=7, compute_s=0.5)
                for t in group
            ]
        scores = [np.linspace(0.1, 0.9, t.units, dtype=np.float32) for t in group]  # last doc best
        return [RerankResult(scores=s, usage_tokens=11, compute_s=0.25) for s in scores]

    async def info(self):
        return {"dimensions": 4, "max_documents": 3}


def gateway(**limits) -> tuple[Gateway, dict[str, StandInDeployment]]:
    registry = tenants(**limits)
    metrics = RouterMetrics(registry.config.price_per_replica_hour)
    stand_ins = {"enc": StandInDeployment("text-encoder"), "rr": StandInDeployment("reranker")}
    models = {
        name: ServedModel(name, d.kind, ModelQueue(d.send, registry.config.tiers), d.info)
        for name, d in stand_ins.items()
    }
    return Gateway(registry, metrics, models), stand_ins


class Body:
    """The request body, counting whether the gateway read it."""

    def __init__(self, body) -> None:
        self.body, self.reads = body, 0

    async def __call__(self):
        self.reads += 1
        return self.body


def serve(gw: Gateway, endpoint, body: Body, key: str | None = "gold-key", path: str = ""):
    path = path or endpoint.paths[0]
    auth = f"Bearer {key}" if key else None
    return asyncio.run(gw.serve(endpoint, path, auth, body))


def refused(gw: Gateway, endpoint, body: Body, **kw) -> ApiError:
    with pytest.raises(ApiError) as err:
        serve(gw, endpoint, body, **kw)
    return err.value


RERANK = {"model": "rr", "query": "q", "documents": ["a", {"text": "b"}, "c"]}


def test_a_bad_key_is_refused_before_the_body_is_read():
    gw, _ = gateway()
    for key in (None, "wrong"):
        body = Body(RERANK)
        assert refused(gw, RerankEndpoint(), body, key=key).status == 401
        assert body.reads == 0


def test_a_rate_limited_tenant_gets_429_with_retry_after_before_the_body_is_read():
    gw, _ = gateway(rps=0.1, burst=1)
    serve(gw, RerankEndpoint(), Body(RERANK))
    body = Body(RERANK)
    error = refused(gw, RerankEndpoint(), body)
    assert (error.status, error.code, body.reads) == (429, "rate_limited", 0)
    assert int(error.headers["Retry-After"]) >= 1


def test_rerank_answers_sorted_cut_to_top_n_with_documents_and_bills_tokens():
    gw, stand_ins = gateway()
    answer = serve(gw, RerankEndpoint(), Body({**RERANK, "top_n": 2, "return_documents": True}))
    out = orjson.loads(answer.body)
    assert [r["index"] for r in out["results"]] == [2, 1]  # best first, only two
    assert out["results"][1]["document"] == {"text": "b"}
    assert out["usage"]["total_tokens"] == 11 and out["meta"]["api_version"]["version"] == "1"
    work, tier = stand_ins["rr"].jobs[0]
    assert work == RerankWork("q", ["a", "b", "c"]) and tier is Tier.premium  # typed, not a number
    usage = gw.usage()["tenants"]["gold"]
    assert (usage["answered"], usage["input_tokens"], usage["cost"]) == (1, 11, 0.25)
    v2 = orjson.loads(serve(gw, RerankEndpoint(), Body(RERANK), path="/v2/rerank").body)
    assert "document" not in v2["results"][0] and v2["meta"]["api_version"]["version"] == "2"


@pytest.mark.parametrize(
    ("body", "status", "code", "param"),
    [
        ({**RERANK, "documents": []}, 400, "invalid_request", "documents"),
        ({**RERANK, "documents": ["a", " "]}, 400, "invalid_request", "documents"),
        ({**RERANK, "documents": [{"txt": "a"}]}, 400, "invalid_request", "documents.0.str"),
        ({**RERANK, "query": 3}, 400, "invalid_request", "query"),
        ({**RERANK, "top_n": 0}, 400, "invalid_request", "top_n"),
        ({**RERANK, "documents": ["a"] * 4}, 400, "too_many_documents", "documents"),  # the model's 3
        ({**RERANK, "model": "enc"}, 400, "model_not_supported", "model"),
        ({**RERANK, "model": "nope"}, 404, "model_not_found", "model"),
    ],
)
def test_bad_rerank_requests_get_openai_shaped_4xx(body, status, code, param):
    gw, stand_ins = gateway()
    error = refused(gw, RerankEndpoint(), Body(body))
    assert (error.status, error.code) == (status, code)
    assert error.param == param or (param.startswith("documents") and error.param.startswith("documents"))
    assert stand_ins["rr"].jobs == []  # nothing reached the model


def test_a_tenant_limited_to_some_models_gets_403_elsewhere():
    gw, _ = gateway()
    assert refused(gw, RerankEndpoint(), Body(RERANK), key="small-key").status == 403
    serve(gw, EmbeddingsEndpoint(), Body({"model": "enc", "input": ["x"]}), key="small-key")


def test_embeddings_carry_truncate_and_check_dimensions():
    gw, stand_ins = gateway()
    body = {"model": "enc", "input": ["a", "b"], "truncate": True, "truncation_direction": "Left"}
    out = orjson.loads(serve(gw, EmbeddingsEndpoint(), Body(body)).body)
    assert len(out["data"]) == 2 and out["usage"]["prompt_tokens"] == 7
    assert stand_ins["enc"].jobs[0][0] == EmbedWork(["a", "b"], True, "left")
    error = refused(gw, EmbeddingsEndpoint(), Body({**body, "dimensions": 8}))
    assert (error.status, error.param) == (400, "dimensions")


def test_work_refused_in_the_replica_for_its_deadline_is_a_503_with_retry_after():
    gw, stand_ins = gateway()

    async def late(group):
        return [RerankResult(error="deadline passed", deadline_exceeded=True) for _ in group]

    gw.models["rr"].queue.send = late
    error = refused(gw, RerankEndpoint(), Body(RERANK))
    assert (error.status, error.code, error.headers["Retry-After"]) == (503, "deadline_exceeded", "1")
    assert gw.usage()["tenants"]["gold"]["rejected"] == 1


def test_an_unreachable_deadline_is_refused_without_reaching_the_model():
    gw, stand_ins = gateway()
    gw.models["rr"].queue.rate.seconds_per_unit = 10.0  # 3 documents: ~30 s of backlog
    with pytest.raises(ApiError) as err:
        asyncio.run(gw.serve(RerankEndpoint(), "/v1/rerank", "Bearer gold-key", Body(RERANK), 500.0))
    assert err.value.status == 503 and stand_ins["rr"].jobs == []
