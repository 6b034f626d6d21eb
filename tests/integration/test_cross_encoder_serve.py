"""A cross-encoder re-ranker served through `serve run`: what the replica answers is what the runtime
computes in-process, cut to the model's limits, with OpenAI-shaped errors.

The model is the MiniLM backbone with an UNTRAINED head (no cross-encoder weights ship offline):
the tests check plumbing and exactness, not relevance."""

import httpx
import numpy as np
import pytest

from infergraph.testing import DEV_KEY
from infergraph.testing import UNTRAINED_CROSS_ENCODER as CROSS_ENCODER

pytestmark = pytest.mark.integration

AUTH = {"Authorization": f"Bearer {DEV_KEY}"}
QUERY = "How do I upgrade Debian to the next release?"
DOCUMENTS = [
    "Edit /etc/apt/sources.list to name the new release, then run apt full-upgrade.",
    "Football is played by two teams of eleven players.",
    "Debian releases are named after Toy Story characters.",
    "word " * 3000,  # far over 512 tokens: cut, not refused
]


@pytest.fixture(scope="module")
def in_process(untrained_cross_encoder):
    from infergraph.runtimes.catalog import CrossEncoderScorer, PathSource
    from infergraph.runtimes.cross_encoder import load_cross_encoder

    source = PathSource(type="path", path=str(untrained_cross_encoder))
    return load_cross_encoder(CrossEncoderScorer(type="cross-encoder", source=source), 512, 256, threads=1)


def rerank(service: str, body: dict) -> httpx.Response:
    return httpx.post(f"{service}/v1/rerank", json={"model": CROSS_ENCODER, **body}, headers=AUTH, timeout=60)


def test_served_scores_are_the_runtimes(service, in_process):
    r = rerank(service, {"query": QUERY, "documents": DOCUMENTS})
    assert r.status_code == 200, r.text
    served = {x["index"]: x["relevance_score"] for x in r.json()["results"]}
    expected = in_process.score(QUERY, DOCUMENTS)
    np.testing.assert_allclose([served[i] for i in range(len(DOCUMENTS))], expected, atol=1e-4)
    assert [x["index"] for x in r.json()["results"]] == list(np.argsort(-expected, kind="stable"))
    assert r.json()["usage"]["total_tokens"] <= 4 * 512


def test_an_over_long_query_is_a_400_and_the_replica_keeps_serving(service):
    r = rerank(service, {"query": "word " * 300, "documents": ["a"]})
    assert r.status_code == 400 and r.json()["error"]["code"] == "context_length_exceeded", r.text
    assert r.json()["error"]["param"] == "query"
    assert rerank(service, {"query": QUERY, "documents": DOCUMENTS[:1]}).status_code == 200


def test_card_says_what_scores(service):
    card = httpx.get(f"{service}/v1/models/{CROSS_ENCODER}", headers=AUTH, timeout=30).json()
    assert card["kind"] == "reranker" and card["scorer"]["type"] == "cross-encoder"
    assert card["engine"].startswith("onnxruntime")
