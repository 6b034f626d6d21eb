"""Bad input gets an OpenAI-shaped 4xx, and the replica keeps serving afterwards."""

from functools import partial

import httpx
import openai
import pytest

from infergraph.testing import DEV_KEY

AUTH = {"Authorization": f"Bearer {DEV_KEY}"}
post = partial(httpx.post, headers=AUTH)  # every call as the development tenant

pytestmark = pytest.mark.integration

MINILM = "all-MiniLM-L6-v2"


@pytest.fixture(scope="module")
def client(service):
    return openai.OpenAI(base_url=f"{service}/v1", api_key=DEV_KEY, max_retries=0, timeout=60)


def assert_openai_error(r: httpx.Response, status: int, param: str | None = None) -> dict:
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/json")
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["message"]
    if param is not None:
        assert err["param"] == param
    return err


def test_sdk_raises_typed_errors(client):
    with pytest.raises(openai.BadRequestError, match="empty list"):
        client.embeddings.create(model=MINILM, input=[])
    with pytest.raises(openai.NotFoundError, match="does not exist"):
        client.embeddings.create(model="no-such-model", input="x")
    with pytest.raises(openai.BadRequestError, match="at most 256 tokens"):
        client.embeddings.create(model=MINILM, input=["fine", "word " * 400])


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"model": MINILM, "input": []}, "input"),
        ({"model": MINILM, "input": [1, 2, 3]}, "input"),
        ({"model": MINILM, "input": {"text": "x"}}, "input"),
        ({"model": MINILM, "input": ["ok", ""]}, "input"),
        ({"model": MINILM}, "input"),
        ({"input": "x"}, "model"),
        ({"model": 42, "input": "x"}, "model"),
        ({"model": MINILM, "input": "x", "encoding_format": "hex"}, "encoding_format"),
        ({"model": MINILM, "input": "x", "dimensions": 1024}, "dimensions"),
        ({"model": MINILM, "input": "word " * 300}, "input"),
    ],
)
def test_bad_bodies(service, body, param):
    assert_openai_error(post(f"{service}/v1/embeddings", json=body, timeout=30), 400, param)


def test_malformed_json(service):
    r = post(f"{service}/v1/embeddings", content=b'{"model": "x", "input": ', timeout=30)
    assert_openai_error(r, 400)


def test_body_that_is_not_an_object(service):
    assert_openai_error(post(f"{service}/v1/embeddings", content=b"[1, 2]", timeout=30), 400)


def test_oversize_body(service):
    r = post(f"{service}/v1/embeddings", content=b"x" * (5 * 1024 * 1024), timeout=60)
    assert_openai_error(r, 413)


def test_unknown_route_and_method(service):
    assert_openai_error(httpx.get(f"{service}/v1/nothing-here"), 404)
    assert_openai_error(httpx.get(f"{service}/v1/embeddings"), 405)


def test_service_still_answers_after_bad_input(client):
    for _ in range(3):
        with pytest.raises(openai.BadRequestError):
            client.embeddings.create(model=MINILM, input=["word " * 400])
    resp = client.embeddings.create(model=MINILM, input=["still alive"])
    assert len(resp.data[0].embedding) == 384


def test_model_cards_need_a_key(service):
    assert_openai_error(httpx.get(f"{service}/v1/models"), 401)
    assert_openai_error(httpx.get(f"{service}/v1/models/{MINILM}"), 401)
    assert httpx.get(f"{service}/v1/models", headers=AUTH).status_code == 200
