"""Schemathesis over the service's own OpenAPI document (issue 14, outcome 1): every operation, valid
and invalid inputs, each case sent with the development key, the admin key and no key. No answer may
be a 5xx, every error is OpenAI-shaped JSON, and the service still serves afterwards.

CI runs `FUZZ_EXAMPLES` (default 10) cases per operation (each sent three times); a longer run:
    FUZZ_EXAMPLES=300 uv run pytest tests/integration/test_api_fuzz.py
"""

import copy
import os
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode

from infergraph.deployments.kinds import endpoints_by_path
from infergraph.deployments.router import app
from infergraph.testing import ADMIN_KEY, DEV_KEY

pytestmark = pytest.mark.integration

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "10"))
KEYS = {"dev-key": DEV_KEY, "admin-key": ADMIN_KEY, "no-key": None}
MAX_TOKENS = 8  # generation length is not what this test is about: keep each LLM answer short
OPENAI_ERROR_FIELDS = {"message", "type", "param", "code"}


def with_served_models(doc: dict[str, Any], models: dict[str, str]) -> dict[str, Any]:
    """The document with each POST operation's `model` limited to the served models of the kinds
    that answer it (invalid-input cases still send others), so valid cases reach the replicas."""
    doc = copy.deepcopy(doc)
    for path, endpoint in endpoints_by_path().items():
        names = sorted(name for name, kind in models.items() if kind in endpoint.kinds)
        for content in doc["paths"][path]["post"]["requestBody"]["content"].values() if names else ():
            content["schema"]["properties"]["model"] = {"type": "string", "enum": names}
    return doc


# (mode, method, path) of every documented operation, known without a running service; invalid
# inputs only where the operation takes any (a path parameter or a body)
CASES = [
    pytest.param(mode, method.upper(), path, id=f"{mode.value} {method.upper()} {path}")
    for path, ops in app.openapi()["paths"].items()
    for method, op in ops.items()
    for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)
    if mode is GenerationMode.POSITIVE or op.get("parameters") or op.get("requestBody")
]


@pytest.fixture(scope="module")
def api_schema(service):
    doc = httpx.get(f"{service}/openapi.json", timeout=30).json()
    listing = httpx.get(f"{service}/v1/models", headers={"Authorization": f"Bearer {DEV_KEY}"}, timeout=60)
    models = {card["id"]: card["kind"] for card in listing.json()["data"]}
    return schemathesis.openapi.from_dict(with_served_models(doc, models))


def short_generation(case: schemathesis.Case) -> None:
    if case.path.endswith("completions") and isinstance(case.body, dict):
        for field in ("max_tokens", "max_completion_tokens"):
            value = case.body.get(field)
            too_long = isinstance(value, int) and not isinstance(value, bool) and value > MAX_TOKENS
            if value is None or too_long:
                case.body[field] = MAX_TOKENS


def header(response: Any, name: str) -> str:
    """First value of a header of schemathesis' response (its headers map names to lists)."""
    values = {k.lower(): v for k, v in response.headers.items()}.get(name, [""])
    return values[0] if isinstance(values, list) else values


def assert_answer_is_sound(response: Any, case: schemathesis.Case) -> None:
    where = f"{case.method} {case.path} -> {response.status_code}: {response.text[:300]}"
    assert response.status_code < 500, where
    if response.status_code >= 400:
        assert header(response, "content-type").startswith("application/json"), where
        error = response.json()["error"]
        assert set(error) == OPENAI_ERROR_FIELDS and error["message"], where
        if response.status_code == 429:
            assert header(response, "retry-after"), where


@pytest.mark.parametrize(("mode", "method", "path"), CASES)
def test_no_5xx_and_every_error_openai_shaped(api_schema, service, mode, method, path):
    """Each generated case is sent with the development key, the admin key and no key."""
    operation = api_schema[path][method]

    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
    def send_with_each_key(case: schemathesis.Case) -> None:
        short_generation(case)
        if case.headers:
            case.headers.pop("Authorization", None)  # a generated bogus key: the no-key call covers it
        for key in KEYS.values():
            headers = {"Authorization": f"Bearer {key}"} if key else {}
            assert_answer_is_sound(case.call(base_url=service, headers=headers, timeout=60), case)

    send_with_each_key()


def test_service_serves_after_fuzzing(service):
    auth = {"Authorization": f"Bearer {DEV_KEY}"}
    health = httpx.get(f"{service}/healthz", timeout=30)
    assert health.status_code == 200
    r = httpx.post(
        f"{service}/v1/embeddings", json={"model": "all-MiniLM-L6-v2", "input": ["still here"]}, headers=auth
    )
    assert r.status_code == 200 and len(r.json()["data"][0]["embedding"]) == 384
