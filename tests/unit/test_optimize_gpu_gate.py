"""GPU-target variants go through a gate too (`python -m infergraph.optimize --gpu-results`): the
fastest precision whose vectors stay with FP32's on the same GPU is registered and `production-gpu`
moves to it; a GPU replica then runs the base weights at that precision."""

from __future__ import annotations

import json

from rich.console import Console

from infergraph.deployments.variants import promoted_gpu_precision
from infergraph.optimize import tracking
from infergraph.optimize.__main__ import promote_gpu
from infergraph.optimize.config import GpuGate
from infergraph.optimize.gate import choose_gpu_precision
from infergraph.paths import PROJECT_ROOT

H100 = json.loads((PROJECT_ROOT / "results" / "optimize" / "gpu-h100.json").read_text())  # a real run


def test_the_fastest_faithful_precision_of_the_base_model_wins_on_the_h100_figures():
    best, verdicts = choose_gpu_precision(H100, GpuGate())
    assert best is not None and best["precision"] == "fp16" and best["variant"] == "base"
    assert verdicts["distilled (4 layers) fp16"] == "not the base model"  # faster, but 80% quality on CPU


def test_a_precision_that_moves_the_vectors_is_not_promoted():
    rows = [dict(r, fidelity_mean_cosine=0.99) if r["precision"] == "fp16" else r for r in H100]
    best, verdicts = choose_gpu_precision(rows, GpuGate())
    assert best is not None and best["precision"] == "bf16"
    assert verdicts["base fp16"].startswith("fidelity 0.99000 <")


def test_gpu_results_register_a_version_the_gpu_replicas_read(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = tracking.connect(uri, tmp_path / "artifacts")
    run_ids = tracking.log_gpu_results(client, H100, tmp_path / "artifacts")
    promoted = promote_gpu(client, H100, run_ids, GpuGate(), Console(quiet=True))
    assert promoted == {"all-MiniLM-L6-v2": "fp16"}
    precision, found = promoted_gpu_precision("all-MiniLM-L6-v2", uri)
    assert precision == "fp16" and found.startswith("models:/all-MiniLM-L6-v2/")
    assert promoted_gpu_precision("all-MiniLM-L6-v2", f"sqlite:///{tmp_path / 'none.db'}")[0] is None
