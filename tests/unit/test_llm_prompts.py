"""The frozen LLM prompt corpus: the script rewrites it byte for byte, and it spreads as advertised."""

from collections import Counter

import pytest

from infergraph.bench import llm_prompts
from infergraph.optimize.data import DataUnavailableError


@pytest.fixture(scope="module")
def committed():
    return llm_prompts.CORPUS.read_bytes()


def test_regenerates_byte_identically(committed):
    try:
        made = llm_prompts.render(llm_prompts.build())
    except DataUnavailableError as e:
        pytest.skip(f"the Debian FAQ package cannot be fetched here: {e}")
    assert made.encode("utf-8") == committed, "run `python -m infergraph.bench.llm_prompts` and commit"
    assert made == llm_prompts.render(llm_prompts.build())  # seeded: twice the same


def test_size_and_fields(committed):
    prompts = llm_prompts.load()
    assert len(committed) < 200 * 1024
    assert len(prompts) == llm_prompts.SIZE
    assert len({p.id for p in prompts}) == len(prompts)
    assert len({p.text for p in prompts}) == len(prompts)
    for p in prompts:
        assert p.messages[-1]["role"] == "user" and p.text.strip()
        assert p.words == len(p.text.split())
    assert set(Counter(p.kind for p in prompts)) == set(llm_prompts.MIX)


def test_spread_of_prompt_lengths():
    words = sorted(p.words for p in llm_prompts.load())
    n = len(words)
    assert words[0] <= 8 and words[-1] >= 150
    buckets = Counter(0 if w < 20 else 1 if w < 60 else 2 if w < 120 else 3 for w in words)
    assert all(buckets[b] >= 0.08 * n for b in range(4)), buckets  # short, medium, long, very long
    assert words[n // 2] >= 20 and words[int(0.9 * n)] >= 100  # not all short


def test_spread_of_max_tokens():
    lo, hi = llm_prompts.MAX_TOKENS
    tokens = [p.max_tokens for p in llm_prompts.load()]
    assert all(lo <= t <= hi for t in tokens)
    assert min(tokens) <= lo + 4 and max(tokens) >= hi - 4
    assert len(set(tokens)) >= 60  # drawn, not a short cycle
    assert sum(t < 64 for t in tokens) >= 0.3 * len(tokens) and sum(t >= 96 for t in tokens) >= 0.15 * len(
        tokens
    )
