"""Start the real service exactly as a user does (`serve run configs/serve.yaml`), on a free port."""

import os
import tempfile
from pathlib import Path

import pytest
import yaml

from infergraph.paths import PROJECT_ROOT
from infergraph.testing import UNTRAINED_CROSS_ENCODER
from infergraph.testing.service import DEFAULT_CONFIG, RunningService, start_service

# The shared service reads an empty registry, so tests do not depend on what `python -m infergraph.optimize`
# promoted in this checkout's own mlflow/ store.
EMPTY_STORE = Path(tempfile.mkdtemp(prefix="igt-store-")) / "mlflow.db"


CROSS_ENCODER = UNTRAINED_CROSS_ENCODER


def with_cross_encoder(config: dict, model_dir: Path, workdir: Path) -> None:
    """Serve a cross-encoder re-ranker too: the catalog plus one entry, one more small deployment."""
    catalog = yaml.safe_load((PROJECT_ROOT / "configs" / "models.yaml").read_text())
    source = {"type": "path", "path": str(model_dir)}
    catalog["models"].append(
        {"name": CROSS_ENCODER, "kind": "reranker", "scorer": {"type": "cross-encoder", "source": source}}
    )
    (workdir / "models.yaml").write_text(yaml.safe_dump(catalog))
    app = config["applications"][0]
    app["args"]["catalog"] = str(workdir / "models.yaml")
    app["args"]["models"].append(CROSS_ENCODER)
    deployment = {"name": CROSS_ENCODER, "max_ongoing_requests": 64, "ray_actor_options": {"num_cpus": 0.05}}
    app["deployments"].append(deployment)


@pytest.fixture(scope="session")
def running_service(untrained_cross_encoder):
    """infergraph started from configs/serve.yaml (port and registry store changed, plus an untrained
    cross-encoder re-ranker), stopped after."""
    os.environ.setdefault("RAY_TMPDIR", tempfile.mkdtemp(prefix="igt-ray-"))
    config = yaml.safe_load(DEFAULT_CONFIG.read_text())
    config["applications"][0]["args"]["registry"]["tracking_uri"] = f"sqlite:///{EMPTY_STORE}"
    with_cross_encoder(config, untrained_cross_encoder, EMPTY_STORE.parent)
    path = EMPTY_STORE.parent / "serve.yaml"
    path.write_text(yaml.safe_dump(config))
    running = start_service(path)
    try:
        yield running
    finally:
        running.stop()


@pytest.fixture(scope="session")
def service(running_service: RunningService) -> str:
    """Base URL of the running service."""
    return running_service.base_url


@pytest.fixture(scope="session")
def empty_store() -> Path:
    """The (never created) tracking store the shared service reads."""
    return EMPTY_STORE
