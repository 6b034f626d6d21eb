"""The router's own copy of an encoder (deployments/in_router.py): it serves what the deployment's
card says, follows changes to it, and steps aside (the deployment answers) when it cannot."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from infergraph.deployments.admission import AdmissionConfig
from infergraph.deployments.encoder import TextEncoderReplica
from infergraph.deployments.in_router import InRouterModel, mirrored_config
from infergraph.deployments.router import model_queue
from infergraph.deployments.tenants import load_tenants
from infergraph.protocol.common import Job, Tier
from infergraph.protocol.embeddings import EmbedWork
from infergraph.runtimes.catalog import load_catalog

ROOT = Path(__file__).resolve().parents[2]
MINILM = "all-MiniLM-L6-v2"
TEXTS = ["A man is playing a guitar.", "Someone plays the guitar.", "The stock market fell sharply today."]


@pytest.fixture(scope="module")
def arguments(tmp_path_factory) -> dict[str, Any]:
    """A MiniLM replica's arguments, as bind_encoder gives them, with an empty registry."""
    spec = load_catalog(ROOT / "configs" / "models.yaml").get(MINILM)
    store = tmp_path_factory.mktemp("registry")
    return {
        "spec": spec.model_dump(),
        "engine": "onnx",
        "threads": 2,
        "tracking_uri": f"sqlite:///{store / 'mlflow.db'}",
        "default_variant": f"models:/{MINILM}@production",
        "registry_cache": str(store / "cache"),
    }


@pytest.fixture
def deployment(arguments) -> TextEncoderReplica:
    """The deployment's replica, as Serve would run it, with the batching of configs/serve.yaml."""
    return TextEncoderReplica(
        **arguments, user_config={"max_batch_sentences": 16, "max_forward_sequences": 16}
    )


def in_router(arguments) -> InRouterModel:
    return InRouterModel(MINILM, lambda config: TextEncoderReplica(**arguments, user_config=config))


async def embed(model: Any, texts: list[str]) -> np.ndarray:
    [result] = await model.run([Job(EmbedWork(texts=texts), Tier.standard)])
    return np.asarray(result.embeddings)


def test_the_cards_variant_is_named_exactly():
    batching = {"max_batch_sentences": 8}
    registry = {"variant_source": "registry", "variant_uri": f"models:/{MINILM}/3", "batching": batching}
    assert mirrored_config(registry) == {"max_batch_sentences": 8, "variant": f"models:/{MINILM}/3"}
    folder = {"variant_source": "path", "variant_requested": "/srv/variants/int8", "batching": {}}
    assert mirrored_config(folder) == {"variant": "/srv/variants/int8"}
    assert mirrored_config({"variant_source": "base", "batching": {}}) == {"variant": "base"}


def test_the_copy_serves_what_the_deployment_serves(arguments, deployment):
    copy = in_router(arguments)
    assert not copy.serving

    async def scenario() -> tuple[np.ndarray, np.ndarray]:
        await copy.sync(deployment.info())
        return await embed(copy, TEXTS), await embed(deployment, TEXTS)

    vectors, reference = asyncio.run(scenario())
    assert copy.serving and copy.error is None
    card = copy.info()
    assert card["computed_in"] == "router" and card["variant"] == deployment.info()["variant"]
    assert card["batching"] == deployment.info()["batching"]
    assert card["variant_requested"] == deployment.info()["variant_requested"]  # what serve.yaml asked for
    np.testing.assert_allclose(vectors, reference, atol=1e-5)
    assert vectors[0] @ vectors[1] > vectors[0] @ vectors[2] + 0.3  # a paraphrase beats an unrelated text


def test_the_copy_follows_batching_changes_without_reloading(arguments, deployment):
    copy = in_router(arguments)
    asyncio.run(copy.sync(deployment.info()))
    assert copy.copy is not None
    encoder = copy.copy.encoder
    changed = {**deployment.info(), "batching": {**deployment.info()["batching"], "max_batch_sentences": 4}}
    asyncio.run(copy.sync(changed))
    assert copy.serving and copy.info()["batching"]["max_batch_sentences"] == 4
    assert copy.copy.encoder is encoder


def test_a_variant_the_copy_cannot_load_leaves_the_deployment_answering(arguments, deployment, tmp_path):
    copy = in_router(arguments)
    asyncio.run(copy.sync(deployment.info()))
    missing = {**deployment.info(), "variant_source": "path", "variant_requested": str(tmp_path / "gone")}
    asyncio.run(copy.sync(missing))
    assert not copy.serving and "gone" in (copy.error or "")
    asyncio.run(copy.sync(deployment.info()))  # the deployment back on base: so is the copy
    assert copy.serving and copy.error is None


class StandInHandle:
    """Stands in for a Serve DeploymentHandle (no Ray in unit tests): `run.remote(jobs)`."""

    def __init__(self, replica: TextEncoderReplica) -> None:
        self.calls = 0
        self.run = self
        self.replica = replica

    def remote(self, jobs: list[Job[Any]]) -> Any:
        self.calls += 1
        return self.replica.run(jobs)


def test_the_router_sends_to_its_copy_once_it_serves(arguments, deployment):
    handle = StandInHandle(deployment)
    copy = in_router(arguments)
    tiers = load_tenants(ROOT / "configs" / "tenants.yaml").tiers
    queue = model_queue(handle, tiers, AdmissionConfig(), copy)  # type: ignore[arg-type]

    async def one_request() -> Any:
        result, _ = await queue.submit(EmbedWork(texts=TEXTS[:1]), 1, Tier.standard, float("inf"))
        return result

    async def scenario() -> tuple[int, Any]:
        await one_request()
        calls_before_the_copy = handle.calls  # not loaded yet: the deployment answers
        await copy.sync(deployment.info())
        return calls_before_the_copy, await one_request()

    calls_before_the_copy, result = asyncio.run(scenario())
    assert calls_before_the_copy == 1
    assert handle.calls == 1 and result.embeddings.shape == (1, 384)
