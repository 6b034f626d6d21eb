"""`python -m infergraph.optimize.llm --quick` end to end into a temporary MLflow store (~35 s here):
fp32 and int8 of SmolLM2-135M-Instruct, measured, logged, registered, and the `production` alias set
by the gate; plus the pieces the measurement rests on (all-position logits, dequantised weights)."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from infergraph.paths import PROJECT_ROOT

MODEL = "smollm2-135m-instruct"


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory) -> tuple[str, Path]:
    root = tmp_path_factory.mktemp("optimize-llm")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    cmd = [sys.executable, "-m", "infergraph.optimize.llm", "--quick", "--tracking-uri", uri,
           "--artifact-root", str(root / "artifacts"), "--results-dir", str(root / "results")]  # fmt: skip
    done = subprocess.run(cmd, cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return uri, root / "results"


def test_quick_run_logs_measures_registers_and_promotes(quick_run):
    import mlflow
    from mlflow import MlflowClient

    uri, results = quick_run
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    experiment = client.get_experiment_by_name(f"optimize/{MODEL}")
    assert experiment is not None
    runs = client.search_runs([experiment.experiment_id])
    parent = next(r for r in runs if r.info.run_name == "llm precisions --quick")
    children = {r.data.params["precision"]: r for r in runs if r.info.run_id != parent.info.run_id}
    assert set(children) == {"fp32", "int8"}
    assert all(r.data.tags.get("mlflow.parentRunId") == parent.info.run_id for r in children.values())
    for run in children.values():
        assert {
            "perplexity",
            "ppl_ratio",
            "agreement_prefix",
            "agreement_exact",
            "tokens_per_s_single",
        } <= set(run.data.metrics)
    fp32, int8 = children["fp32"].data.metrics, children["int8"].data.metrics
    assert parent.data.metrics["fp32_perplexity"] == fp32["perplexity"]

    # SmolLM2-135M on the Debian FAQ's English prose: perplexity in the tens (measured ~27)
    assert math.isfinite(fp32["perplexity"]) and 8 < fp32["perplexity"] < 80
    assert fp32["ppl_ratio"] == 1.0 and fp32["agreement_prefix"] >= 0.9  # the method's own floor
    assert fp32["tokens_per_s_concurrent"] > 0 and fp32["tokens_per_s_single"] > 0
    # int8 rounds the weights per output channel: perplexity barely moves (+0.5% measured)...
    assert 0.98 < int8["ppl_ratio"] < 1.03
    # ...but a 135M model's greedy path has near ties: on the 4 quick prompts int8 follows fp32 for
    # 0.44 of the 48 tokens (0.45 on the full run's 20; bf16 0.62, int4 0.76). Far from chance (~0).
    assert int8["agreement_prefix"] >= 0.3
    # the dequantised weights the quality passes use are the kernel's: same logits, same argmax
    assert int8["kernel_argmax_match"] == 1.0 and int8["kernel_logit_max_abs_diff"] < 1e-2

    # every precision is a registry version; the alias points at one whose manifest names a precision
    versions = client.search_model_versions(f"name='{MODEL}'")
    assert {v.tags["precision"] for v in versions} == {"fp32", "int8"}
    promoted = client.get_model_version_by_alias(MODEL, "production")
    assert promoted.tags.get("production_reason")
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)  # another test may have pointed the registry elsewhere
    path = mlflow.artifacts.download_artifacts(
        artifact_uri=f"models:/{MODEL}@production", dst_path=str(results.parent / "download")
    )
    manifest = json.loads((Path(path) / "llm_manifest.json").read_text())
    assert manifest["model"] == MODEL and manifest["precision"] == promoted.tags["precision"]
    assert manifest["precision"] in {"fp32", "int8", "int4", "bf16"}
    assert len(manifest["source_weights_sha256"]["model.safetensors"]) == 64

    summary = json.loads((results / "optimize.json").read_text())
    assert summary["promoted"] == manifest["precision"]
    assert (results / "optimize.md").read_text().count("| fp32 |") == 1
    assert (results / "optimize.png").stat().st_size > 10_000
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert {"optimize.json", "optimize.md", "optimize.png"} <= artifacts


def test_all_position_logits_match_transformers(smollm2_dir, smollm2_weights):
    """The perplexity pass's logits are the engine forward's, every row: for fp32 the same as
    transformers' `LlamaForCausalLM` on the same folder."""
    import torch
    from transformers import AutoModelForCausalLM

    from infergraph.optimize.llm import all_logits

    model, tokenizer = smollm2_weights
    ids = tokenizer("The Debian FAQ answers common questions about the system.")["input_ids"]
    hf = AutoModelForCausalLM.from_pretrained(smollm2_dir, dtype=torch.float32).eval()
    with torch.inference_mode():
        want = hf(torch.tensor([ids])).logits[0]
    got = all_logits(model, ids)
    assert got.shape == want.shape
    assert torch.allclose(got, want, atol=1e-3, rtol=1e-4)
    assert torch.allclose(all_logits(model, ids, first=3), got[3:], atol=1e-4, rtol=1e-5)


def test_dequantised_int4_is_what_the_kernel_multiplies(smollm2_weights):
    """int4 codes re-derived by quant.py's rule with the variant's own scales and zeros reproduce the
    kernel's products (`_dequantise` checks that and raises otherwise: a wrong reference fails)."""
    import torch

    from infergraph.optimize.llm import _dequantise
    from infergraph.runtimes.llm.quant import Int4Linear

    reference, _ = smollm2_weights
    weight = reference.gate_up[3]
    int4 = Int4Linear(weight)
    deq = _dequantise(int4, weight)
    x = torch.randn(5, weight.shape[1])
    assert torch.allclose(int4(x), x @ deq.T, rtol=1e-4, atol=1e-4)
    # the GGUF's Q4_1 blocks are such groups (quant.py): for SmolLM2 the codes recover its weights
    assert (deq - weight).abs().max() < 1e-5
    with pytest.raises(RuntimeError, match="differs from its kernel"):
        _dequantise(int4, reference.gate_up[4])
