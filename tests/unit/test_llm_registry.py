"""An LLM replica serves the precision `optimize.llm` promoted: the `production` alias's version
names it; with no store, no model or no alias it keeps the catalog's precision and says why."""

from infergraph.deployments.llm import promoted_precision

NAME = "smollm2-135m-instruct"


def register(store, precision: str, alias: str | None = "production") -> str:
    from mlflow import MlflowClient

    uri = f"sqlite:///{store / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    if not client.search_registered_models(f"name='{NAME}'"):
        client.create_registered_model(NAME)
    version = client.create_model_version(NAME, source=str(store), tags={"precision": precision}).version
    if alias:
        client.set_registered_model_alias(NAME, alias, version)
    return uri


def test_the_promoted_precision_is_served(tmp_path):
    register(tmp_path, "fp32")
    uri = register(tmp_path, "bf16")
    precision, found = promoted_precision(NAME, uri)
    assert precision == "bf16" and found == f"models:/{NAME}/2"


def test_without_an_alias_or_a_store_the_catalog_precision_stays(tmp_path):
    uri = register(tmp_path, "int8", alias=None)
    assert promoted_precision(NAME, uri)[0] is None
    precision, reason = promoted_precision(NAME, f"sqlite:///{tmp_path / 'missing' / 'mlflow.db'}")
    assert precision is None and "no registry entry" in reason
    assert promoted_precision(NAME, "")[0] is None
