"""The service serves what the MLflow registry says, and switches variant live without dropping a request.

A temporary SQLite MLflow store holds MiniLM's FP32 ONNX export packaged as an optimize artifact
(variant "onnx-fp32-test"), registered as version 1 of `all-MiniLM-L6-v2` and aliased `production`.
The real service (serve.yaml with only MiniLM, its registry pointed at that store) must serve it;
then `serve deploy` with `user_config.variant: base` switches to the base model while requests keep
flowing. (Refused variants and checksum failures are covered on the deployment class in
tests/unit/test_variant_source.py, without a cluster.)
"""

import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from functools import partial
from pathlib import Path

import httpx
import numpy as np
import pytest
import yaml

from infergraph.testing import DEV_KEY
from infergraph.testing.service import RunningService, serving_only, start_service

pytestmark = pytest.mark.integration

AUTH = {"Authorization": f"Bearer {DEV_KEY}"}
post = partial(httpx.post, headers=AUTH)
MINILM = "all-MiniLM-L6-v2"
TEXTS = ["A man is playing a guitar.", "The cat sits on the mat."]


@contextlib.contextmanager
def own_ray_tmpdir():
    """A Ray temp dir of its own, so this cluster never meets the shared service's."""
    before = os.environ.get("RAY_TMPDIR")
    os.environ["RAY_TMPDIR"] = path = tempfile.mkdtemp(prefix="igt-reg-")
    try:
        yield path
    finally:
        if before is None:
            os.environ.pop("RAY_TMPDIR", None)
        else:
            os.environ["RAY_TMPDIR"] = before
        shutil.rmtree(path, ignore_errors=True)  # the cluster's session, with its copy of the project


@pytest.fixture(scope="module")
def registry_service(minilm_artifact, register_artifact, tmp_path_factory):
    store = tmp_path_factory.mktemp("store")
    version = register_artifact(store, minilm_artifact, MINILM)
    config = serving_only([MINILM])
    app = config["applications"][0]
    app["args"]["registry"] = {
        "tracking_uri": f"sqlite:///{store / 'mlflow.db'}",
        "default_variant": "models:/{name}@production",
        "cache_dir": str(tmp_path_factory.mktemp("registry-cache")),
    }
    path = tmp_path_factory.mktemp("config") / "serve.yaml"
    path.write_text(yaml.safe_dump(config))
    with own_ray_tmpdir() as ray_tmp:
        running = start_service(path, ready_timeout_s=240)
        try:
            yield running, version, ray_tmp
        finally:
            running.stop()


def card(base_url: str) -> dict:
    r = httpx.get(f"{base_url}/v1/models/{MINILM}", headers=AUTH, timeout=30)
    r.raise_for_status()
    return r.json()


def embed(base_url: str) -> np.ndarray:
    r = post(f"{base_url}/v1/embeddings", json={"model": MINILM, "input": TEXTS}, timeout=60)
    assert r.status_code == 200, r.text
    return np.array([d["embedding"] for d in r.json()["data"]], dtype=np.float32)


def deploy(running: RunningService, ray_tmp: str, variant: str, out: Path) -> None:
    config = yaml.safe_load(running.config.read_text())
    for dep in config["applications"][0]["deployments"]:
        if dep["name"] == MINILM:
            dep["user_config"]["variant"] = variant
    out.write_text(yaml.safe_dump(config))
    serve_cli = Path(sys.executable).parent / "serve"
    env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_TMPDIR": ray_tmp}
    subprocess.run(
        [str(serve_cli), "deploy", "-a", running.dashboard_url(), str(out)],
        check=True,
        env=env,
        capture_output=True,
        timeout=120,
    )


def wait_for_card(base_url: str, condition, timeout_s: float = 90) -> dict:
    deadline = time.monotonic() + timeout_s
    while not condition(now := card(base_url)):
        assert time.monotonic() < deadline, now
        time.sleep(0.5)
    return now


class Traffic:
    """Requests sent back to back from a thread; every answer's status is kept."""

    def __init__(self, base_url: str) -> None:
        self.base_url = base_url
        self.statuses: list[int | str] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self) -> None:
        with httpx.Client(headers=AUTH, timeout=60) as http:
            while not self.stop.is_set():
                try:
                    r = http.post(f"{self.base_url}/v1/embeddings", json={"model": MINILM, "input": TEXTS})
                    self.statuses.append(r.status_code)
                except httpx.HTTPError as exc:
                    self.statuses.append(repr(exc))

    def __enter__(self) -> "Traffic":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.thread.join(timeout=90)


def test_shipped_service_without_a_store_serves_base_and_creates_none(service, empty_store):
    """configs/serve.yaml with no tracking store yet (a fresh checkout): both models serve base, say why."""
    db = empty_store
    for model in (MINILM, "multilingual-e5-small"):
        now = httpx.get(f"{service}/v1/models/{model}", headers=AUTH, timeout=30).json()
        assert now["variant"] == "base" and now["variant_source"] == "base" and now["variant_uri"] is None
        assert now["variant_reason"].startswith(f"no registry entry models:/{model}@production")
        assert f"tracking store {db} does not exist" in now["variant_reason"]
    assert not db.exists(), "starting the service created a tracking store"


def test_serves_the_production_alias_then_switches_live(registry_service, minilm_onnx, tmp_path):
    running, version, ray_tmp = registry_service
    base = running.base_url
    served = card(base)
    assert served["variant"] == "onnx-fp32-test", served
    assert served["variant_uri"] == f"models:/{MINILM}/{version}"
    assert served["variant_source"] == "registry" and served["precision"] == "fp32"
    assert served["variant_requested"] == f"models:/{MINILM}@production"
    assert served["variant_error"] is None and served["engine"].startswith("onnx")
    got = embed(base)
    assert (got * minilm_onnx.encode(TEXTS)).sum(axis=1).min() > 0.9999
    requests_before = card(base)["stats"]["requests"]

    # Live switch to the base model under traffic: every request answered, none dropped.
    with Traffic(base) as traffic:
        time.sleep(1)
        deploy_started_at = len(traffic.statuses)  # the switch can finish before `serve deploy` returns
        deploy(running, ray_tmp, "base", tmp_path / "base.yaml")
        now = wait_for_card(base, lambda c: c["variant"] == "base")
        during_switch = len(traffic.statuses) - deploy_started_at
        time.sleep(1)
    assert traffic.statuses and set(traffic.statuses) == {200}, traffic.statuses
    assert during_switch >= 3, f"only {during_switch} requests while the variant switched"
    assert now["variant_source"] == "base" and now["variant_uri"] is None and now["variant_error"] is None
    assert now["variant_requested"] == "base" and now["variant_reason"] == "the base model was requested"
    assert now["stats"]["requests"] >= requests_before, "the replica restarted instead of reconfiguring"
    assert now["stats"]["variant_switches"] == 1
    assert now["batching"]["max_batch_sentences"] == 16  # batching settings untouched, no `variant` in them
    assert (embed(base) * got).sum(axis=1).min() > 0.9999
