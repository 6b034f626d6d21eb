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
