"""A service bound to a non-loopback address refuses to serve the development keys the README
publishes (reliability issue, outcome 6): it fails to build, saying what to do, and answers nothing."""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

import httpx
import pytest
import yaml

from infergraph.testing.service import AUTH, launch_service, serving_only

pytestmark = pytest.mark.integration

MINILM = "all-MiniLM-L6-v2"


def test_a_public_bind_with_the_published_keys_builds_nothing():
    os.environ.setdefault("RAY_TMPDIR", tempfile.mkdtemp(prefix="igt-ray-"))
    config = serving_only([MINILM])
    config["http_options"]["host"] = "0.0.0.0"
    config["applications"][0]["args"]["registry"]["default_variant"] = "base"
    path = Path(tempfile.mkdtemp(prefix="ig-public-")) / "serve.yaml"
    path.write_text(yaml.safe_dump(config))
    service = launch_service(path)
    try:
        deadline = time.monotonic() + 180
        while "published development keys" not in service.log.read_text(errors="replace"):
            assert time.monotonic() < deadline, f"no refusal in the log:\n{service.log_tail()}"
            time.sleep(1)
        assert "allow_dev_keys" in service.log.read_text(errors="replace")
        with pytest.raises(httpx.HTTPError):  # nothing serves: no HTTP answer at all
            r = httpx.post(
                f"{service.base_url}/v1/embeddings", json={"model": MINILM, "input": "x"}, headers=AUTH
            )
            r.raise_for_status()
    finally:
        service.stop()
