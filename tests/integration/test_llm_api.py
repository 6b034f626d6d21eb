"""The LLM kind through `serve run`, as users call it: the official OpenAI client, streaming and not,
on the offline SmolLM2-135M-Instruct weights."""

import time

import httpx
import openai
import pytest

from infergraph.testing import ADMIN_KEY, DEV_KEY

pytestmark = pytest.mark.integration

LLM, MINILM = "smollm2-135m-instruct", "all-MiniLM-L6-v2"
ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}
AUTH = {"Authorization": f"Bearer {DEV_KEY}"}
CAPITAL = [{"role": "user", "content": "What is the capital of France? Answer in one sentence."}]


@pytest.fixture(scope="module")
def client(service):
    return openai.OpenAI(base_url=f"{service}/v1", api_key=DEV_KEY, max_retries=0, timeout=120)


def test_chat_answers_and_counts_usage(client):
    resp = client.chat.completions.create(model=LLM, messages=CAPITAL, temperature=0, max_tokens=24)
    choice = resp.choices[0]
    assert "Paris" in choice.message.content and choice.message.role == "assistant"
    assert choice.finish_reason in ("stop", "length") and resp.object == "chat.completion"
    assert resp.usage.prompt_tokens > 10 and 0 < resp.usage.completion_tokens <= 24
    assert resp.usage.total_tokens == resp.usage.prompt_tokens + resp.usage.completion_tokens


def test_streamed_chat_is_the_same_greedy_text_with_usage_last(client):
    whole = client.chat.completions.create(model=LLM, messages=CAPITAL, temperature=0, max_tokens=24)
    stream = client.chat.completions.create(
        model=LLM, messages=CAPITAL, temperature=0, max_tokens=24, stream=True,
        stream_options={"include_usage": True},
    )  # fmt: skip
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    assert chunks[0].choices[0].delta.role == "assistant"
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == whole.choices[0].finish_reason
    assert chunks[-1].choices == [] and chunks[-1].usage.total_tokens == whole.usage.total_tokens


def test_text_completion_stops_at_max_tokens_or_a_stop_string(client):
    resp = client.completions.create(model=LLM, prompt="Once upon a time", max_tokens=5, temperature=0)
    assert resp.choices[0].finish_reason == "length" and resp.usage.completion_tokens == 5
    stopped = client.completions.create(
        model=LLM, prompt="List: one, two, three,", max_tokens=40, temperature=0, stop=[","]
    )
    assert stopped.choices[0].finish_reason == "stop" and "," not in stopped.choices[0].text


def test_n_choices_with_a_seed_are_reproducible(client):
    def sample():
        return client.chat.completions.create(
            model=LLM, messages=CAPITAL, temperature=1.0, max_tokens=12, n=2, seed=7
        )

    first, again = sample(), sample()
    assert [c.index for c in first.choices] == [0, 1]
    assert [c.message.content for c in first.choices] == [c.message.content for c in again.choices]


@pytest.mark.parametrize(
    ("kwargs", "error", "code"),
    [
        (
            {"messages": [{"role": "user", "content": "word " * 3000}]},
            openai.BadRequestError,
            "context_length_exceeded",
        ),
        ({"messages": CAPITAL, "max_tokens": 4096}, openai.BadRequestError, "context_length_exceeded"),
        ({"messages": CAPITAL, "temperature": 5}, openai.BadRequestError, "invalid_request"),
        ({"messages": CAPITAL, "model": MINILM}, openai.BadRequestError, "model_not_supported"),
        ({"messages": CAPITAL, "model": "nope"}, openai.NotFoundError, "model_not_found"),
    ],
)
def test_bad_requests_get_openai_errors_and_the_replica_keeps_serving(client, kwargs, error, code):
    with pytest.raises(error) as err:
        client.chat.completions.create(**{"model": LLM, "max_tokens": 4, **kwargs})
    assert err.value.code == code
    assert client.chat.completions.create(model=LLM, messages=CAPITAL, max_tokens=2).choices


def test_an_empty_completion_prompt_is_a_400_not_a_failed_generation(client):
    with pytest.raises(openai.BadRequestError) as err:
        client.completions.create(model=LLM, prompt="", max_tokens=4)
    assert err.value.code == "invalid_value" and err.value.param == "prompt"


def test_a_client_that_leaves_a_stream_frees_its_sequence(service, client):
    with httpx.stream(
        "POST", f"{service}/v1/chat/completions", headers={"Authorization": f"Bearer {DEV_KEY}"},
        json={"model": LLM, "messages": CAPITAL, "max_tokens": 400, "stream": True}, timeout=60,
    ) as r:  # fmt: skip
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        next(r.iter_lines())  # one chunk, then the client goes away
    deadline = time.time() + 30
    while time.time() < deadline:
        stats = httpx.get(f"{service}/v1/models/{LLM}", headers=AUTH, timeout=30).json()["stats"]
        if stats.get("running", 1) == 0 and stats.get("waiting", 1) == 0:
            break
        time.sleep(0.5)
    assert stats["running"] == 0 and stats["waiting"] == 0, stats
    usage = httpx.get(f"{service}/admin/usage", headers=ADMIN, timeout=30).json()
    assert usage["models"][LLM]["in_flight_units"] == 0


def test_generation_metrics_reach_prometheus(client, service):
    client.chat.completions.create(model=LLM, messages=CAPITAL, max_tokens=4, temperature=0)
    text = httpx.get(f"{service}/metrics", headers=ADMIN, timeout=30).text
    assert f'infergraph_llm_time_to_first_token_seconds_count{{model="{LLM}",tier="standard"}}' in text
    assert "infergraph_llm_inter_token_seconds_bucket" in text
    assert f'infergraph_llm_engine{{model="{LLM}",what="kv_blocks_total"}}' in text
    assert f'infergraph_llm_output_tokens_total{{model="{LLM}"}}' in text
