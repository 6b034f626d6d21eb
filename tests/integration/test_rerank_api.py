"""`POST /v1/rerank` and `/v2/rerank` through the running service with a plain HTTP client, in
Cohere's and Jina's shapes; and embeddings' opt-in truncation through the official OpenAI client."""

import httpx
import numpy as np
import openai
import pytest

from infergraph.testing import ADMIN_KEY, DEV_KEY

pytestmark = pytest.mark.integration

AUTH = {"Authorization": f"Bearer {DEV_KEY}"}
ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}
EN, MULTI, MINILM = "rerank-hybrid-en", "rerank-hybrid-multilingual", "all-MiniLM-L6-v2"
QUERY = "How do I install a Debian package from a .deb file?"
DOCUMENTS = [
    "The weather in Lisbon is mild in winter.",
    "Use dpkg -i package.deb to install a .deb file; apt install ./package.deb also resolves dependencies.",
    {"text": "Debian releases are named after characters from Toy Story."},
    "Football is played by two teams of eleven players.",
]


def rerank(service: str, body: dict, path: str = "/v1/rerank") -> httpx.Response:
    return httpx.post(f"{service}{path}", json=body, headers=AUTH, timeout=60)


def test_cohere_v1_shape_ranks_the_answer_first(service):
    r = rerank(service, {"model": EN, "query": QUERY, "documents": DOCUMENTS, "return_documents": True})
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["results"][0]["index"] == 1
    assert out["results"][0]["document"]["text"] == DOCUMENTS[1]
    scores = [x["relevance_score"] for x in out["results"]]
    assert scores == sorted(scores, reverse=True) and all(0 <= s <= 1 for s in scores)
    assert sorted(x["index"] for x in out["results"]) == [0, 1, 2, 3]
    assert out["meta"]["api_version"]["version"] == "1" and out["usage"]["total_tokens"] > 20


def test_cohere_v2_and_jina_style_top_n(service):
    r = rerank(service, {"model": EN, "query": QUERY, "documents": DOCUMENTS, "top_n": 2}, "/v2/rerank")
    assert r.status_code == 200, r.text
    out = r.json()
    assert [x["index"] for x in out["results"]][:1] == [1] and len(out["results"]) == 2
    assert "document" not in out["results"][0] and out["meta"]["api_version"]["version"] == "2"
    assert out["usage"]["prompt_tokens"] == out["usage"]["total_tokens"] > 0  # what Jina clients read


def test_multilingual_reranker_takes_a_german_question(service):
    query = "Wie installiere ich ein Debian-Paket aus einer .deb-Datei?"
    r = rerank(service, {"model": MULTI, "query": query, "documents": DOCUMENTS})
    assert r.status_code == 200, r.text
    assert r.json()["results"][0]["index"] == 1


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        ({"model": EN, "query": "word " * 400, "documents": ["a"]}, 400, "context_length_exceeded"),
        ({"model": EN, "query": QUERY, "documents": []}, 400, "invalid_request"),
        ({"model": EN, "query": QUERY, "documents": [1, 2]}, 400, "invalid_request"),
        ({"model": EN, "query": QUERY, "documents": ["a"] * 1001}, 400, "invalid_request"),
        ({"model": MINILM, "query": QUERY, "documents": ["a"]}, 400, "model_not_supported"),
        ({"model": "nope", "query": QUERY, "documents": ["a"]}, 404, "model_not_found"),
    ],
)
def test_bad_rerank_input_gets_a_4xx_and_the_service_keeps_serving(service, body, status, code):
    r = rerank(service, body)
    assert r.status_code == status, r.text
    assert r.json()["error"]["code"] == code
    assert rerank(service, {"model": EN, "query": QUERY, "documents": DOCUMENTS}).status_code == 200


def test_long_documents_are_cut_not_refused(service):
    r = rerank(service, {"model": EN, "query": QUERY, "documents": ["word " * 2000, DOCUMENTS[1]]})
    assert r.status_code == 200, r.text
    assert r.json()["results"][0]["index"] == 1


def test_rerank_usage_is_billed_to_the_tenant(service):
    before = httpx.get(f"{service}/admin/usage", headers=ADMIN, timeout=30).json()["tenants"]["dev"]
    tokens = rerank(service, {"model": EN, "query": QUERY, "documents": DOCUMENTS}).json()["usage"]
    after = httpx.get(f"{service}/admin/usage", headers=ADMIN, timeout=30).json()
    assert after["tenants"]["dev"]["input_tokens"] - before["input_tokens"] >= tokens["total_tokens"]
    assert EN in after["models"] and "queued_units" in after["models"][EN]


def test_embeddings_truncate_on_request(service):
    client = openai.OpenAI(base_url=f"{service}/v1", api_key=DEV_KEY, max_retries=0, timeout=60)
    long = "word " * 600
    with pytest.raises(openai.BadRequestError, match="at most 256 tokens"):
        client.embeddings.create(model=MINILM, input=long)
    cut = client.embeddings.create(model=MINILM, input=long, extra_body={"truncate": True})
    assert cut.usage.prompt_tokens == 256  # the tokens embedded, not the 602 sent
    exact = client.embeddings.create(model=MINILM, input="word " * 254)  # 254 + [CLS] + [SEP]
    a, b = (np.array(x.data[0].embedding) for x in (cut, exact))
    assert a @ b > 0.9999
