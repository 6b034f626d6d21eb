"""The vLLM adapter around a stand-in for vLLM's AsyncLLM (vLLM cannot be installed on these
machines): our sampling settings, tiers and deadlines reach it as vLLM expects them, and its delta
outputs come back as our TokenEvents."""

import asyncio
import time
from types import SimpleNamespace

import pytest

from infergraph.runtimes.batching import DeadlineExceededError
from infergraph.runtimes.llm.sampling import SamplingParams
from infergraph.runtimes.llm.vllm_engine import VllmEngine, sampling_kwargs


class StandInVllmModule:
    """Stands in for the `vllm` module: its SamplingParams records keywords."""

    RequestOutputKind = SimpleNamespace(DELTA="delta")

    class SamplingParams:
        def __init__(self, **kwargs) -> None:
            self.kwargs = kwargs


def output(text: str, ids: list[int], finish: str | None = None):
    choice = SimpleNamespace(text=text, token_ids=ids, finish_reason=finish)
    return SimpleNamespace(outputs=[choice], finished=finish is not None)


class StandInAsyncLLM:
    """Stands in for vLLM's AsyncLLM: scripted delta outputs, optional delay before the first."""

    def __init__(self, outputs, first_delay_s: float = 0.0) -> None:
        self.outputs, self.first_delay_s = outputs, first_delay_s
        self.calls, self.aborted = [], []

    async def generate(self, prompt, sampling, request_id, priority=0):
        self.calls.append((prompt, sampling.kwargs, request_id, priority))
        await asyncio.sleep(self.first_delay_s)
        for out in self.outputs:
            yield out

    async def abort(self, request_id):
        self.aborted.append(request_id)


class Tokenizer:
    def apply_chat_template(self, messages, add_generation_prompt, tokenize):
        assert add_generation_prompt and tokenize
        return [1, 2, 3]

    def encode(self, text):
        return [7] * len(text.split())


def engine(llm: StandInAsyncLLM) -> VllmEngine:
    return VllmEngine(llm, Tokenizer(), 2048, StandInVllmModule)


def run(eng: VllmEngine, params: SamplingParams, **kw):
    async def collect():
        return [e async for e in eng.generate("r1", [1, 2, 3], params, **kw)]

    return asyncio.run(collect())


def test_sampling_settings_and_tier_reach_vllm_as_it_expects_them():
    llm = StandInAsyncLLM([output("Paris", [11], "stop")])
    run(
        engine(llm), SamplingParams(max_tokens=9, temperature=0, top_p=0.5, seed=3, stop=("\n",)), tier_rank=2
    )
    prompt, kwargs, request_id, priority = llm.calls[0]
    assert prompt == {"prompt_token_ids": [1, 2, 3]} and request_id == "r1" and priority == 2
    assert kwargs == {**sampling_kwargs(SamplingParams(9, 0, 0.5, 3, ("\n",))), "output_kind": "delta"}
    assert kwargs["temperature"] == 0 and kwargs["stop"] == ["\n"] and kwargs["n"] == 1


def test_delta_outputs_become_token_events_with_running_counts():
    llm = StandInAsyncLLM([output("The", [5]), output(" capital", [6, 7]), output(" is Paris.", [8], "stop")])
    events = run(engine(llm), SamplingParams(max_tokens=8))
    assert "".join(e.text for e in events) == "The capital is Paris."
    assert [e.completion_tokens for e in events] == [1, 3, 4]
    assert [e.finish_reason for e in events] == [None, None, "stop"]
    assert all(e.prompt_tokens == 3 for e in events)


def test_a_first_token_later_than_the_deadline_is_refused():
    llm = StandInAsyncLLM([output("late", [1], "stop")], first_delay_s=0.5)
    eng = engine(llm)
    with pytest.raises(DeadlineExceededError):
        run(eng, SamplingParams(max_tokens=4), deadline=time.time() + 0.05)
    assert eng.stats()["deadline_exceeded"] == 1 and eng.stats()["running"] == 0


def test_prompts_go_through_the_models_chat_template():
    eng = engine(StandInAsyncLLM([]))
    assert eng.chat_prompt([{"role": "user", "content": "hi"}]) == [1, 2, 3]
    assert eng.text_prompt("two words") == [7, 7]


def test_the_gpu_config_serves_the_llm_on_vllm_and_builds():
    import yaml

    from infergraph.deployments.app import build_app
    from infergraph.paths import PROJECT_ROOT
    from infergraph.runtimes.catalog import load_catalog

    config = yaml.safe_load((PROJECT_ROOT / "configs" / "serve-gpu.yaml").read_text())
    app = config["applications"][0]
    catalog = load_catalog(PROJECT_ROOT / app["args"]["catalog"])
    llms = [catalog.get(m) for m in app["args"]["models"] if catalog.get(m).kind == "llm"]
    assert [m.engine for m in llms] == ["vllm"]  # type: ignore[union-attr]
    gpu = {d["name"]: d for d in app["deployments"]}[llms[0].name]["ray_actor_options"]
    assert gpu["num_gpus"] == 1
    assert build_app(app["args"]) is not None  # binds every deployment without starting Ray
