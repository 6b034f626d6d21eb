"""The service through the official OpenAI client, as a user calls it."""

import asyncio
import time

import httpx
import numpy as np
import openai
import pytest

from infergraph.testing import DEV_KEY

AUTH = {"Authorization": f"Bearer {DEV_KEY}"}

pytestmark = pytest.mark.integration

MINILM, E5 = "all-MiniLM-L6-v2", "multilingual-e5-small"


@pytest.fixture(scope="module")
def client(service):
    return openai.OpenAI(base_url=f"{service}/v1", api_key=DEV_KEY, max_retries=0, timeout=60)


def vectors(resp) -> np.ndarray:
    return np.array([d.embedding for d in sorted(resp.data, key=lambda d: d.index)], dtype=np.float32)


def test_single_string(client):
    resp = client.embeddings.create(model=MINILM, input="hello world")  # SDK asks for base64
    assert resp.model == MINILM
    assert len(resp.data) == 1 and len(resp.data[0].embedding) == 384
    assert abs(np.linalg.norm(resp.data[0].embedding) - 1) < 1e-3
    assert resp.usage.prompt_tokens == 4  # [CLS] hello world [SEP]


def test_float_and_base64_agree(client):
    texts = ["one sentence", "and another, a bit longer than the first"]
    as_float = vectors(client.embeddings.create(model=MINILM, input=texts, encoding_format="float"))
    as_b64 = vectors(client.embeddings.create(model=MINILM, input=texts))
    np.testing.assert_allclose(as_float, as_b64, atol=1e-6)


def test_paraphrase_above_unrelated(client):
    texts = ["A man is playing a guitar.", "Someone strums an acoustic guitar.", "Interest rates rose again."]
    v = vectors(client.embeddings.create(model=MINILM, input=texts))
    assert v[0] @ v[1] > v[0] @ v[2] + 0.4


def test_multilingual_model(client):
    texts = [
        "The weather is beautiful today.",
        "Il fait très beau aujourd'hui.",
        "Das Wetter ist heute wunderschön.",
        "The central bank raised interest rates.",
    ]
    v = vectors(client.embeddings.create(model=E5, input=texts))
    sims = v @ v.T
    assert min(sims[0, 1], sims[0, 2], sims[1, 2]) > max(sims[0, 3], sims[1, 3], sims[2, 3])


def test_concurrent_requests_get_their_own_vectors(service, client):
    """Dynamic batching mixes requests; every caller must still get the vectors of its own text."""
    texts = [f"sentence number {i} about topic {i % 7}" + " padding" * (i % 13) for i in range(48)]
    expected = vectors(client.embeddings.create(model=MINILM, input=texts, encoding_format="float"))

    async def one(http: httpx.AsyncClient, text: str) -> list[float]:
        r = await http.post(f"{service}/v1/embeddings", json={"model": MINILM, "input": text})
        r.raise_for_status()
        return r.json()["data"][0]["embedding"]

    async def all_at_once() -> list[list[float]]:
        async with httpx.AsyncClient(timeout=60, headers=AUTH) as http:
            return await asyncio.gather(*(one(http, t) for t in texts))

    got = np.array(asyncio.run(all_at_once()), dtype=np.float32)
    cosines = (got * expected).sum(axis=1)
    assert cosines.min() > 0.9999


def test_models_listing(client):
    cards = {m.id: m for m in client.models.list().data}
    assert {MINILM, E5, "rerank-hybrid-en", "rerank-hybrid-multilingual"} <= set(cards)
    assert (cards[MINILM].model_extra or {})["kind"] == "text-encoder"
    assert (cards["rerank-hybrid-en"].model_extra or {})["kind"] == "reranker"
    extra = cards[E5].model_extra or {}
    assert extra["dimensions"] == 384 and extra["max_input_tokens"] == 512
    assert extra["variant"] == "base"


def test_healthz(service):
    r = httpx.get(f"{service}/healthz")
    assert r.status_code == 200 and r.json()["status"] == "ok"


def test_the_router_computes_minilm_itself(service, client):
    """configs/serve.yaml lists MiniLM under `in_router`: once the router's copy has loaded, MiniLM's
    requests skip the handle (the call's way out and back take no time) and e5's still use it."""
    deadline = time.monotonic() + 60
    url = f"{service}/v1/models/{MINILM}"
    while (card := httpx.get(url, headers=AUTH).json())["computed_in"] != "router":
        assert time.monotonic() < deadline, card
        time.sleep(0.5)
    assert card["variant_requested"] == f"models:/{MINILM}@production"  # the deployment's configuration
    assert httpx.get(f"{service}/v1/models/{E5}", headers=AUTH).json()["computed_in"] == "replica"
    answer = client.embeddings.with_raw_response.create(model=MINILM, input=["A man is playing a guitar."])
    stages = dict(part.split("=") for part in answer.headers["x-infergraph-call-stages-ms"].split(","))
    assert float(stages["outbound"]) + float(stages["inbound"]) < 1.0, stages
    assert float(stages["batch"]) > 0
