"""The promotion gate and the shipped optimize.yaml: what decides which variant users get served."""

from pathlib import Path

import pytest

from infergraph.optimize.config import Gate, load_config
from infergraph.optimize.gate import VariantResult, choose, eligible
from infergraph.paths import PROJECT_ROOT, absolute_tracking_uri, project_path

ROOT = Path(__file__).resolve().parents[2]


def result(variant, quality, speed, target="cpu", artifact=True, fidelity=0.99):
    metrics = {"throughput_b32": speed, "fidelity_mean_cosine": fidelity}
    return VariantResult(
        "m", variant, "int8", target, metrics, quality, artifact=Path("/a") / variant if artifact else None
    )


def test_fastest_variant_within_the_quality_floor_wins():
    results = [
        result("base", 100.0, 100.0, artifact=False),
        result("onnx-int8", 100.4, 220.0),
        result("distilled-int8", 97.0, 400.0),  # fastest, but loses 3% quality
        result("onnx-fp32", 100.0, 180.0),
    ]
    assert choose(results, Gate(min_quality_pct=99.0)).variant == "onnx-int8"
    assert choose(results, Gate(min_quality_pct=95.0)).variant == "distilled-int8"


def test_gpu_targets_and_low_fidelity_are_not_promoted_on_cpu():
    gate = Gate(min_quality_pct=99.0, min_fidelity=0.95)
    fp16 = result("onnx-fp16", 100.0, 900.0, target="gpu")
    drifted = result("pruned", 99.5, 800.0, fidelity=0.90)
    assert not eligible(fp16, gate)[0] and "gpu" in eligible(fp16, gate)[1]
    assert not eligible(drifted, gate)[0] and "fidelity" in eligible(drifted, gate)[1]
    assert choose([fp16, drifted], gate) is None
    assert choose([fp16], Gate(target="gpu")).variant == "onnx-fp16"


def test_the_base_model_is_never_registered_as_a_variant():
    assert choose([result("base", 100.0, 100.0, artifact=False)], Gate()) is None


def test_shipped_config_is_valid_and_its_store_is_the_projects():
    config = load_config(ROOT / "configs" / "optimize.yaml")
    names = [p.name for p in config.models]
    assert names == ["all-MiniLM-L6-v2", "multilingual-e5-small"]
    for plan in config.models:
        assert set(plan.gate_metrics) <= set(plan.metrics)
    assert config.quick is not None and set(config.quick.models) <= set(names)
    store = absolute_tracking_uri(config.tracking_uri, PROJECT_ROOT)  # what the optimize CLI opens
    assert store == f"sqlite:///{project_path('mlflow/mlflow.db')}"
    assert absolute_tracking_uri("sqlite:////tmp/x.db", PROJECT_ROOT) == "sqlite:////tmp/x.db"


def test_a_misspelt_variant_is_refused():
    from pydantic import ValidationError

    from infergraph.optimize.config import ModelPlan

    with pytest.raises(ValidationError):
        ModelPlan(name="m", metrics=["lee_pearson"], gate_metrics=["lee_pearson"], variants=["onnx-int4"])
