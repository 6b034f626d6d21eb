"""`python -m infergraph.optimize --quick` end to end on the real weights; a deployment serves the winner.

The pipeline runs as a user runs it (its own process) against a temporary MLflow store; the test
then reads the store as the serving side does and starts the real service on it.
"""

import json
import subprocess
import sys
from pathlib import Path

import httpx
import numpy as np
import pytest
import yaml

from infergraph.testing import DEV_KEY
from infergraph.testing.service import serving_only, start_service

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
MINILM = "all-MiniLM-L6-v2"


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    """The reduced pipeline into a fresh store; returns its tracking URI and results folder."""
    tmp = tmp_path_factory.mktemp("optimize")
    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    cmd = [sys.executable, "-m", "infergraph.optimize", "--quick", "--tracking-uri", uri,
           "--artifact-root", str(tmp / "artifacts"), "--results-dir", str(tmp / "results")]  # fmt: skip
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return uri, tmp / "results", done.stdout


def test_quick_pipeline_logs_registers_and_promotes(quick_run):
    from mlflow import MlflowClient

    uri, results, _ = quick_run
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    experiment = client.get_experiment_by_name(f"optimize/{MINILM}")
    runs = client.search_runs([experiment.experiment_id])
    variants = {r.data.tags.get("variant") for r in runs}
    assert {"base-torch-fp32", "onnx-fp32", "onnx-int8"} <= variants
    int8 = next(r for r in runs if r.data.tags.get("variant") == "onnx-int8")
    for metric in (
        "lee_pearson",
        "lee_pearson_pct",
        "throughput_b32",
        "p95_ms_b1",
        "size_mb",
        "fidelity_mean_cosine",
    ):
        assert metric in int8.data.metrics, metric
    assert int8.data.metrics["size_mb"] < 40  # int8 weights: about a quarter of FP32's 90 MB

    winner = client.get_model_version_by_alias(MINILM, "production")
    assert winner.tags["variant"] in {"onnx-fp32", "onnx-int8"}
    assert float(winner.tags["quality_pct_of_fp32"]) >= 99.0
    summary = json.loads((results / "summary.json").read_text())
    rows = summary["variants"]
    promoted = [r for r in rows if r["promoted"]]
    assert [r["variant"] for r in promoted] == [winner.tags["variant"]]
    passing = [r for r in rows if r["quality_pct"] >= 99.0 and r["variant"] in {"onnx-fp32", "onnx-int8"}]
    assert promoted[0]["throughput_b32"] == max(
        r["throughput_b32"] for r in passing
    )  # the fastest that passes
    assert (results / "variants.png").stat().st_size > 10_000
    # The winner was also timed against the base in alternating passes; ONNX beats PyTorch FP32 there.
    variant, h2h = summary["head_to_head"][MINILM]
    assert variant == winner.tags["variant"] and h2h["h2h_speedup"] > 1.0, h2h
    pipeline = next(r for r in runs if r.info.run_name == "pipeline --quick")
    assert pipeline.data.metrics["h2h_speedup"] == pytest.approx(h2h["h2h_speedup"])
    assert "head to head" in (results / "summary.md").read_text().lower()


def test_a_deployment_serves_the_promoted_variant(quick_run, tmp_path):
    from mlflow import MlflowClient

    uri, _, _ = quick_run
    winner = MlflowClient(tracking_uri=uri, registry_uri=uri).get_model_version_by_alias(MINILM, "production")
    config = serving_only([MINILM])
    app = config["applications"][0]
    app["args"]["registry"] = {**app["args"].get("registry", {}), "tracking_uri": uri}
    path = tmp_path / "serve.yaml"
    path.write_text(yaml.safe_dump(config))
    service = start_service(path)
    try:
        card = httpx.get(
            f"{service.base_url}/v1/models/{MINILM}",
            headers={"Authorization": f"Bearer {DEV_KEY}"},
            timeout=30,
        ).json()
        assert card["variant"] == winner.tags["variant"], card
        assert card["variant_uri"] == f"models:/{MINILM}/{winner.version}"
        auth = {"Authorization": f"Bearer {DEV_KEY}"}
        texts = ["A man is playing a guitar.", "Someone plays an instrument.", "The stock market fell."]
        r = httpx.post(f"{service.base_url}/v1/embeddings", json={"model": MINILM, "input": texts},
                       headers=auth, timeout=60)  # fmt: skip
        assert r.status_code == 200, r.text
        v = np.array([d["embedding"] for d in r.json()["data"]])
        assert v[0] @ v[1] > v[0] @ v[2] + 0.2  # the served variant still knows a paraphrase
    finally:
        service.stop()


def test_gpu_figures_land_in_mlflow_labelled_with_their_device(quick_run):
    from mlflow import MlflowClient

    uri, results, _ = quick_run
    gpu = ROOT / "results" / "optimize" / "gpu-h100.json"
    cmd = [sys.executable, "-m", "infergraph.optimize", "--gpu-results", str(gpu), "--tracking-uri", uri,
           "--artifact-root", str(results.parent / "artifacts")]  # fmt: skip
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name(f"optimize/{MINILM}")
    runs = client.search_runs([experiment.experiment_id], "tags.target = 'gpu'")
    rows = json.loads(gpu.read_text())
    assert len(runs) == len(rows)
    assert all("H100" in r.data.tags["device"] and r.data.metrics["sentences_per_s_b32"] > 0 for r in runs)
