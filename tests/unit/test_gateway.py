"""The serving logic every kind shares, driven without Ray: a stand-in deployment answers the calls
the admission queue makes (named as such), everything else is the real gateway, tenants and queue."""

import asyncio

import numpy as np
import orjson
import pytest
from prometheus_client import generate_latest

from infergraph.deployments.admission import ModelQueue, Ticket
from infergraph.deployments.encoder import EmbeddingsEndpoint
from infergraph.deployments.errors import ApiError
from infergraph.deployments.gateway import Gateway, ServedModel
from infergraph.deployments.llm import ChatCompletionsEndpoint, CompletionsEndpoint
from infergraph.deployments.metrics import RouterMetrics
from infergraph.deployments.reranker import RerankEndpoint
from infergraph.deployments.tenants import TenantRegistry, TenantsConfig, hash_key
from infergraph.protocol.common import Tier
from infergraph.protocol.embeddings import EmbedResult, EmbedWork
from infergraph.protocol.llm import LLMEvent
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
            await asyncio.sleep(0.021)  # the call: its stages below
            return [
                EmbedResult(
                    embeddings=np.ones((t.units, 4), np.float32),
                    usage_tokens=7,
                    compute_s=0.5,
                    replica_in=t.dispatched + 0.001,
                    replica_out=t.dispatched + 0.021,
                    replica_wait_s=0.003,
                    batch_s=0.012,
                )
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
EMBED = {"model": "enc", "input": ["x"]}


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


class NeverEndingBody:
    """A client that sent its headers and never finishes the body (reliability issue, defect 1)."""

    async def __call__(self):
        await asyncio.Event().wait()


def test_a_body_that_never_arrives_is_a_408_within_the_bound():
    gw, stand_ins = gateway()
    gw.body_timeout_s = 0.2
    error = refused(gw, RerankEndpoint(), NeverEndingBody())
    assert (error.status, error.code) == (408, "body_timeout")
    assert gw.bodies_arriving["gold"] == 0 and not stand_ins["rr"].jobs


def test_one_tenant_cannot_hold_every_slot_with_unfinished_bodies():
    gw, _ = gateway()
    gw.max_bodies_per_tenant = 3

    async def scenario():
        endpoint = RerankEndpoint()
        slow = [
            asyncio.create_task(gw.serve(endpoint, "/v1/rerank", "Bearer gold-key", NeverEndingBody()))
            for _ in range(3)
        ]
        await asyncio.sleep(0.05)
        with pytest.raises(ApiError) as err:
            await gw.serve(RerankEndpoint(), "/v1/rerank", "Bearer gold-key", Body(RERANK))
        other = await gw.serve(EmbeddingsEndpoint(), "/v1/embeddings", "Bearer small-key", Body(EMBED))
        for task in slow:
            task.cancel()
        return err.value, other

    error, other = asyncio.run(scenario())
    assert (error.status, error.code, error.headers["Retry-After"]) == (429, "too_many_uploads", "1")
    assert other.body  # another tenant is served meanwhile


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


def test_an_answer_says_where_its_model_call_spent_its_time():
    """Stage by stage (to the replica, its batcher, the batch, the rest of its handler, back), per
    request (a header) and per model (a histogram)."""
    gw, _ = gateway()
    answer = serve(gw, EmbeddingsEndpoint(), Body(EMBED))
    stages = dict(part.split("=") for part in answer.headers["x-infergraph-call-stages-ms"].split(","))
    assert list(stages) == ["outbound", "replica_wait", "batch", "replica_other", "inbound"]
    assert (stages["outbound"], stages["replica_wait"], stages["batch"]) == ("1.00", "3.00", "12.00")
    assert stages["replica_other"] == "5.00"  # 20 ms in the handler, 15 of them accounted for
    assert float(stages["inbound"]) >= 0
    exposition = generate_latest(gw.metrics.registry).decode()
    assert 'infergraph_call_stage_seconds_count{model="enc",stage="batch"} 1.0' in exposition
    rerank = serve(gw, RerankEndpoint(), Body(RERANK))  # a kind that does not report them
    assert "x-infergraph-call-stages-ms" not in rerank.headers


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
    queue = gw.models["rr"].queue
    queue.rate.seconds_per_unit = 10.0  # 3 documents: ~30 s of work

    async def scenario():
        busy = await queue.hold(1, Tier.batch, float("inf"))  # something is in flight already
        try:
            await gw.serve(RerankEndpoint(), "/v1/rerank", "Bearer gold-key", Body(RERANK), 500.0)
        finally:
            queue.release(busy)

    with pytest.raises(ApiError) as err:
        asyncio.run(scenario())
    assert err.value.status == 503 and stand_ins["rr"].jobs == []
    assert gw.usage()["tenants"]["gold"]["rejected"] == 1


# --- streamed kinds (LLM), with a stand-in event stream -------------------------------------------


class StandInGenerator:
    """Stands in for an LLM deployment's `generate` stream: scripted events, records its closing."""

    def __init__(self, events: list[LLMEvent]) -> None:
        self.events, self.closed, self.jobs = events, 0, []

    async def open(self, job):
        self.jobs.append(job)
        try:
            for event in self.events:
                await asyncio.sleep(0)
                yield event
        finally:
            self.closed += 1

    async def info(self):
        return {}


def llm_gateway(events: list[LLMEvent]) -> tuple[Gateway, StandInGenerator]:
    registry = tenants()
    metrics = RouterMetrics(registry.config.price_per_replica_hour)
    stand_in = StandInGenerator(events)

    async def never(group):
        raise AssertionError("a streamed kind is never sent grouped calls")

    queue = ModelQueue(never, registry.config.tiers)
    llm = ServedModel("lm", "llm", queue, stand_in.info, open_stream=stand_in.open)
    return Gateway(registry, metrics, {"lm": llm}), stand_in


TEXT = [
    LLMEvent(0, "Paris", None, 9, 1),
    LLMEvent(0, " is", None, 9, 2),
    LLMEvent(0, ".", "stop", 9, 3),
]
CHAT = {"model": "lm", "messages": [{"role": "user", "content": "Capital of France?"}], "max_tokens": 8}


def test_a_chat_completion_is_assembled_billed_and_its_slot_released():
    gw, stand_in = llm_gateway(TEXT)
    out = orjson.loads(serve(gw, ChatCompletionsEndpoint(), Body(CHAT)).body)
    assert out["object"] == "chat.completion" and out["choices"][0]["message"]["content"] == "Paris is."
    assert out["choices"][0]["finish_reason"] == "stop"
    assert out["usage"] == {"prompt_tokens": 9, "completion_tokens": 3, "total_tokens": 12}
    assert gw.usage()["tenants"]["gold"]["input_tokens"] == 12
    assert gw.models["lm"].queue.in_flight_units == 0 and stand_in.closed == 1
    assert stand_in.jobs[0].tier is Tier.premium and stand_in.jobs[0].work.max_tokens == 8


def collect(gw: Gateway, endpoint, body: dict, stop_after: int | None = None) -> list[bytes]:
    async def run():
        answer = await gw.serve(endpoint, endpoint.paths[0], "Bearer gold-key", Body(body))
        chunks = []
        async for chunk in answer.chunks:
            chunks.append(chunk)
            if stop_after is not None and len(chunks) >= stop_after:
                await answer.chunks.aclose()  # the client goes away
                break
        return chunks

    return asyncio.run(run())


def test_a_stream_is_server_sent_events_ending_with_usage_and_done():
    gw, stand_in = llm_gateway(TEXT)
    body = {**CHAT, "stream": True, "stream_options": {"include_usage": True}}
    chunks = collect(gw, ChatCompletionsEndpoint(), body)
    assert all(c.startswith(b"data: ") and c.endswith(b"\n\n") for c in chunks)
    assert chunks[-1] == b"data: [DONE]\n\n"
    parsed = [orjson.loads(c[6:]) for c in chunks[:-1]]
    assert parsed[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    text = "".join(p["choices"][0]["delta"].get("content", "") for p in parsed if p["choices"])
    assert text == "Paris is." and parsed[-2]["choices"][0]["finish_reason"] == "stop"
    assert parsed[-1]["choices"] == [] and parsed[-1]["usage"]["total_tokens"] == 12
    assert all(p["object"] == "chat.completion.chunk" for p in parsed)
    assert gw.models["lm"].queue.in_flight_units == 0 and stand_in.closed == 1


def test_a_client_leaving_mid_stream_frees_its_slot_and_closes_the_replica_stream():
    gw, stand_in = llm_gateway(TEXT)
    chunks = collect(gw, CompletionsEndpoint(), {"model": "lm", "prompt": "x", "stream": True}, stop_after=1)
    assert len(chunks) == 1 and orjson.loads(chunks[0][6:])["object"] == "text_completion"
    assert gw.models["lm"].queue.in_flight_units == 0 and stand_in.closed == 1
    assert gw.usage()["tenants"]["gold"]["input_tokens"] == 10  # billed what it generated: 9 + 1


@pytest.mark.parametrize(
    ("first", "status", "code"),
    [
        (
            LLMEvent(error="too long", error_param="messages", error_code="context_length_exceeded"),
            400,
            "context_length_exceeded",
        ),  # fmt: skip
        (LLMEvent(error="late", deadline_exceeded=True), 503, "deadline_exceeded"),
        (
            LLMEvent(error="generation failed: boom", failed=True),
            503,
            "generation_failed",
        ),  # fmt: skip
    ],
)
def test_a_refusal_before_any_text_is_an_error_status_not_a_stream(first, status, code):
    gw, stand_in = llm_gateway([first])
    error = refused(gw, ChatCompletionsEndpoint(), Body({**CHAT, "stream": True}))
    assert (error.status, error.code) == (status, code)
    assert gw.models["lm"].queue.in_flight_units == 0 and stand_in.closed == 1


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({**CHAT, "temperature": 3}, "temperature"),
        ({**CHAT, "top_p": 0}, "top_p"),
        ({**CHAT, "messages": []}, "messages"),
        ({**CHAT, "stop": ["a", "b", "c", "d", "e"]}, "stop"),
        ({**CHAT, "n": 0}, "n"),
        ({**CHAT, "max_tokens": 0}, "max_tokens"),
    ],
)
def test_bad_sampling_values_are_400(body, param):
    gw, stand_in = llm_gateway(TEXT)
    error = refused(gw, ChatCompletionsEndpoint(), Body(body))
    assert (error.status, error.param) == (400, param) and stand_in.jobs == []


def test_a_model_silent_before_its_first_token_is_a_503_at_the_deadline():
    """The deadline applies to the first token: a replica that never sends one (hung) gets the
    client a 503 with Retry-After shortly after it, and the slot back."""

    class Silent(StandInGenerator):
        async def open(self, job):
            self.jobs.append(job)
            try:
                await asyncio.sleep(3600)
                yield LLMEvent(0, "never", None, 1, 1)
            finally:
                self.closed += 1

    gw, _ = llm_gateway([])
    silent = Silent([])
    gw.models["lm"] = ServedModel("lm", "llm", gw.models["lm"].queue, silent.info, open_stream=silent.open)
    gw.models["lm"].queue.answer_grace_s = 0.05

    async def scenario():
        endpoint = ChatCompletionsEndpoint()
        serving = gw.serve(
            endpoint, endpoint.paths[0], "Bearer gold-key", Body({**CHAT, "stream": True}), 300.0
        )
        return await asyncio.wait_for(serving, timeout=3)

    with pytest.raises(ApiError) as err:
        asyncio.run(scenario())
    assert (err.value.status, err.value.code) == (503, "deadline_exceeded")
    assert "Retry-After" in err.value.headers
    assert gw.models["lm"].queue.in_flight_units == 0 and silent.closed == 1


# A choice that fails after the stream began (n > 1, or a replica lost mid-generation) is an explicit
# error, never a response that ends as if it had finished.
FAILS_MID_STREAM = [
    LLMEvent(0, "Paris", None, 9, 1),
    LLMEvent(1, "Lyon", None, 9, 1),
    LLMEvent(1, error="generation failed: boom", failed=True),
    LLMEvent(0, ".", "stop", 9, 2),
]


def test_a_choice_failing_mid_stream_ends_the_stream_with_an_error_event_not_done():
    gw, stand_in = llm_gateway(FAILS_MID_STREAM)
    chunks = collect(gw, ChatCompletionsEndpoint(), {**CHAT, "n": 2, "stream": True})
    assert b"data: [DONE]\n\n" not in chunks
    last = orjson.loads(chunks[-1][6:])
    assert last["error"]["code"] == "generation_failed" and "boom" in last["error"]["message"]
    assert gw.models["lm"].queue.in_flight_units == 0 and stand_in.closed == 1
    usage = gw.usage()["tenants"]["gold"]
    assert (usage["requests"], usage["answered"], usage["rejected"]) == (1, 0, 1)  # counted once, as failed


def test_a_choice_failing_mid_generation_fails_the_whole_unstreamed_response():
    gw, stand_in = llm_gateway(FAILS_MID_STREAM)
    with pytest.raises(ApiError) as caught:
        serve(gw, ChatCompletionsEndpoint(), Body({**CHAT, "n": 2}))
    assert caught.value.status == 503 and caught.value.code == "generation_failed"
    assert "Retry-After" in caught.value.headers
    assert gw.models["lm"].queue.in_flight_units == 0 and stand_in.closed == 1
    usage = gw.usage()["tenants"]["gold"]
    assert (usage["requests"], usage["answered"], usage["rejected"]) == (1, 0, 1)  # counted once, as failed


class LostReplica(StandInGenerator):
    async def open(self, job):
        yield LLMEvent(0, "Paris", None, 9, 1)
        raise RuntimeError("ActorDiedError: the replica died")


def test_a_replica_lost_mid_stream_ends_the_stream_with_an_error_event():
    gw, _ = llm_gateway(TEXT)
    lost = LostReplica([])
    gw.models["lm"] = ServedModel("lm", "llm", gw.models["lm"].queue, lost.info, open_stream=lost.open)
    chunks = collect(gw, ChatCompletionsEndpoint(), {**CHAT, "stream": True})
    assert orjson.loads(chunks[-1][6:])["error"]["code"] == "generation_failed"
    assert gw.models["lm"].queue.in_flight_units == 0
