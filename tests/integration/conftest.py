"""Start the real service exactly as a user does (`serve run configs/serve.yaml`), on a free port."""

import os
import tempfile

import pytest

from bench.service import RunningService, start_service


@pytest.fixture(scope="session")
def running_service():
    """infergraph started from configs/serve.yaml (only the port changed), stopped after the session."""
    os.environ.setdefault("RAY_TMPDIR", tempfile.mkdtemp(prefix="igt-ray-"))
    running = start_service()
    try:
        yield running
    finally:
        running.stop()


@pytest.fixture(scope="session")
def service(running_service: RunningService) -> str:
    """Base URL of the running service."""
    return running_service.base_url
