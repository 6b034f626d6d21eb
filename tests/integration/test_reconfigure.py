"""Batching settings change live through `serve deploy` + `reconfigure`, without restarting replicas."""

import os
import subprocess
import sys
import time
from functools import partial
from pathlib import Path

import httpx
import pytest
import yaml

from infergraph.testing import DEV_KEY

AUTH = {"Authorization": f"Bearer {DEV_KEY}"}
post = partial(httpx.post, headers=AUTH)  # every call as the development tenant

pytestmark = pytest.mark.integration

MINILM = "all-MiniLM-L6-v2"


def card(base_url: str) -> dict:
    return httpx.get(
        f"{base_url}/v1/models/{MINILM}", headers={"Authorization": f"Bearer {DEV_KEY}"}, timeout=30
    ).json()


def test_user_config_changes_live(running_service, tmp_path):
    base = running_service.base_url
    for _ in range(5):
        post(f"{base}/v1/embeddings", json={"model": MINILM, "input": "warm"}, timeout=30).raise_for_status()
    before = card(base)
    assert before["batching"]["max_batch_sentences"] == 16
    served_before = before["stats"]["requests"]

    config = yaml.safe_load(running_service.config.read_text())
    for dep in config["applications"][0]["deployments"]:
        if dep["name"] == MINILM:
            dep["user_config"]["max_batch_sentences"] = 12
            dep["user_config"]["batch_wait_timeout_s"] = 0.001
    changed = tmp_path / "serve.yaml"
    changed.write_text(yaml.safe_dump(config))
    serve_cli = Path(sys.executable).parent / "serve"
    env = {**os.environ, "RAY_AUTH_MODE": "token"}  # clusters started by `serve run` use token auth
    subprocess.run(
        [str(serve_cli), "deploy", "-a", running_service.dashboard_url(), str(changed)],
        check=True,
        env=env,
        capture_output=True,
        timeout=120,
    )

    deadline = time.monotonic() + 120
    while (now := card(base))["batching"]["max_batch_sentences"] != 12:
        assert time.monotonic() < deadline, now
        time.sleep(1)
    assert now["batching"]["batch_wait_timeout_s"] == 0.001
    assert now["stats"]["requests"] >= served_before, "the replica restarted instead of reconfiguring"
    r = post(f"{base}/v1/embeddings", json={"model": MINILM, "input": "after"}, timeout=30)
    assert r.status_code == 200
