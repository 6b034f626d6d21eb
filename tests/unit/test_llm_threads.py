"""How many CPU threads an LLM replica's steps use: the catalog's `threads` first (the shipped
SmolLM2 entry runs one, measured faster when the service shares 2 cores), then the environment."""

import os

from infergraph.paths import project_path
from infergraph.runtimes.catalog import load_catalog
from infergraph.runtimes.llm.spec import LLMSpec
from infergraph.runtimes.threads import engine_threads

ENTRY = {"name": "m", "kind": "llm", "source": {"type": "path", "path": "/nowhere"}}


def test_the_catalogs_threads_win_over_the_environment(monkeypatch):
    monkeypatch.setenv("INFERGRAPH_ENGINE_THREADS", "2")
    assert engine_threads(LLMSpec.model_validate({**ENTRY, "threads": 1}).threads) == 1


def test_without_a_catalog_setting_the_environment_then_every_core_decides(monkeypatch):
    monkeypatch.setenv("INFERGRAPH_ENGINE_THREADS", "3")
    assert engine_threads(LLMSpec.model_validate(ENTRY).threads) == 3
    monkeypatch.delenv("INFERGRAPH_ENGINE_THREADS")
    assert engine_threads(LLMSpec.model_validate(ENTRY).threads) == (os.cpu_count() or 1)


def test_the_shipped_smollm2_steps_on_one_thread():
    catalog = load_catalog(project_path("configs/models.yaml"))
    spec = next(m for m in catalog.models if m.name == "smollm2-135m-instruct")
    assert isinstance(spec, LLMSpec) and spec.threads == 1
