"""Start the real service exactly as a user does (`serve run configs/serve.yaml`), on a free port."""

import os
import tempfile

import pytest

from bench.service import start_service


@pytest.fixture(scope="session")
def service():
    """Base URL of a running infergraph started from configs/serve.yaml (only the port changed)."""
    os.environ.setdefault("RAY_TMPDIR", tempfile.mkdtemp(prefix="igt-ray-"))
    running = start_service()
    try:
        yield running.base_url
    finally:
        running.stop()
