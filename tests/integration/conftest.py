"""Start the real service exactly as a user does (`serve run configs/serve.yaml`), on a free port."""

import os
import tempfile
from pathlib import Path

import pytest
import yaml

from infergraph.testing.service import DEFAULT_CONFIG, RunningService, start_service

# The shared service reads an empty registry, so tests do not depend on what `python -m infergraph.optimize`
# promoted in this checkout's own mlflow/ store.
EMPTY_STORE = Path(tempfile.mkdtemp(prefix="igt-store-")) / "mlflow.db"


@pytest.fixture(scope="session")
def running_service():
    """infergraph started from configs/serve.yaml (port and registry store changed), stopped after."""
    os.environ.setdefault("RAY_TMPDIR", tempfile.mkdtemp(prefix="igt-ray-"))
    config = yaml.safe_load(DEFAULT_CONFIG.read_text())
    config["applications"][0]["args"]["registry"]["tracking_uri"] = f"sqlite:///{EMPTY_STORE}"
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
