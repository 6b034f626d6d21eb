"""The LLM engine's GPU path (packed varlen attention), run on the CPU with reference attention.

A tiny random Llama built from a config (infergraph.bench.gpu_llm.build_models): the packed path
must give transformers' logits, and the engine over it the same greedy tokens as the CPU path.
"""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
import torch

from infergraph.bench.gpu_llm import TINY, build_models, check_against_hf, make_engine, prompts
from infergraph.runtimes.llm.model import SeqInput, _default_inv_freq, build_packed
from infergraph.runtimes.llm.sampling import SamplingParams


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny-llama")
    hf, packed = build_models(TINY, "cpu", torch.float32, folder, packed=True)
    _, plain = build_models(TINY, "cpu", torch.float32, folder, packed=False)
    return hf, packed, plain, folder


def test_packed_plan_gathers_each_context_end_to_end():
    seqs = [
        SeqInput([5], start=3, block_table=[2], want_logits=True),  # decoding: positions 0..3
        SeqInput([7, 8, 9], start=4, block_table=[0, 3], want_logits=False),  # a later chunk: 4..6
    ]
    plan = build_packed(seqs, block_size=4)
    assert plan.ids.tolist() == [5, 7, 8, 9]
    assert plan.pos.tolist() == [3, 4, 5, 6]
    assert plan.write.tolist() == [11, 12, 13, 14]
    assert plan.gather.tolist() == [8, 9, 10, 11, 0, 1, 2, 3, 12, 13, 14]
    assert plan.cu_q.tolist() == [0, 1, 4] and plan.cu_k.tolist() == [0, 4, 11]
    assert (plan.max_q, plan.max_k) == (3, 7)
    assert plan.logit_rows.tolist() == [0]
    assert not plan.decode_only
    assert build_packed(seqs[:1], 4).decode_only


def test_packed_path_matches_transformers(tiny):
    hf, packed, plain, _ = tiny
    for model in (packed, plain):
        res = check_against_hf(hf, model, TINY.vocab)
        for part in ("prefill_chunked_mixed", "decode"):
            assert res[part]["rel_err"] < 1e-4, (model.packed, res)
            assert res[part]["argmax_agree"] == 1.0


def test_engine_on_the_packed_path_gives_the_cpu_paths_tokens(tiny):
    _, packed, plain, _ = tiny
    work = prompts(6, TINY.vocab, seed=3, lo=5, hi=60)

    async def run(model) -> list[list[int]]:
        engine = make_engine(model, max_running=4, max_batch_tokens=32, kv_tokens=2048)  # chunked prefill

        async def one(i: int, ids: list[int]) -> list[int]:
            out: list[int] = []
            async for event in engine.generate(f"r{i}", ids, SamplingParams(max_tokens=12, temperature=0)):
                out += event.token_ids
            return out

        return list(await asyncio.gather(*(one(i, ids) for i, ids in enumerate(work))))

    got, want = asyncio.run(run(packed)), asyncio.run(run(plain))
    assert got == want
    assert all(len(t) == 12 for t in got)  # no EOS: every request runs to max_tokens
    assert packed.counters["eager_steps"] > 0 and packed.counters["graph_steps"] == 0  # no graphs on a CPU


def test_default_rope_frequencies_match_transformers(tiny):
    from transformers import AutoConfig
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    config = AutoConfig.from_pretrained(tiny[3])
    want, _ = ROPE_INIT_FUNCTIONS["default"](config, torch.device("cpu"))
    np.testing.assert_allclose(_default_inv_freq(config).numpy(), want.numpy(), rtol=0, atol=0)


def test_gpu_bench_runs_end_to_end_on_a_tiny_model(tmp_path):
    from infergraph.bench.gpu_llm import main

    main(
        ["--tiny", "--device", "cpu", "--sizes", "2", "--requests-per-stream", "1", "--max-tokens", "3"]
        + ["--skip", "eager", "--out-dir", str(tmp_path)]
    )
    rows = [r for r in (tmp_path / "llm.jsonl").read_text().splitlines() if r]
    kinds = [__import__("json").loads(r)["row"] for r in rows]
    assert kinds == ["meta", "check", "engine", "hf-generate"]
    assert "| 2 |" in (tmp_path / "llm-table.md").read_text()
