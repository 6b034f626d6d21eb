"""`configs/optimize.yaml`: which variants to build per model, what to measure, and the promotion gate."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field

from infergraph.aliases import PRODUCTION, PRODUCTION_GPU

VariantName = Literal[
    "onnx-fp32",  # optimum export, graph optimised by ONNX Runtime at load
    "onnx-fp16",  # a GPU target: measured on CPU too, marked so
    "onnx-int8",  # ONNX Runtime dynamic INT8
    "onnx-int8-token",  # INT8 with one activation scale per token (token_int8.py)
    "torch-int8",  # PyTorch dynamic INT8 (torch.ao quantize_dynamic)
    "pruned-l1",  # unstructured L1 magnitude pruning: sparse weights, dense kernels
    "pruned-layers",  # structured: drop transformer layers, no training
    "distilled",  # the layer-pruned student trained on the teacher's embeddings
    "distilled-int8",  # that student, ONNX dynamic INT8
]
Metric = Literal["lee_pearson", "faq_mrr10", "faq_de_mrr10", "faq_fr_mrr10", "bitext_acc1"]


class Distillation(BaseModel):
    model_config = ConfigDict(extra="forbid")
    layers: int = Field(3, ge=1, description="transformer layers the student keeps")
    keep_layers: list[int] | None = None  # which ones; unset: chosen greedily (distill.choose_layers)
    corpus: Literal["english", "multilingual"] = "english"
    corpus_limit: int = 6000
    epochs: int = 3
    batch_size: int = 32
    max_tokens: int = 128  # texts are cut for training: attention cost grows with length squared
    lr: float = 2e-4
    token_weight: float = 1.0  # token-level loss beside the pooled-vector loss
    max_seconds: float = 300.0


class ModelPlan(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str
    metrics: list[Metric]  # measured for every variant
    gate_metrics: list[Metric]  # quality % of FP32 = the worst of these
    variants: list[VariantName]
    distillation: Distillation | None = None
    l1_sparsity: float = Field(0.3, gt=0, lt=1)


class Gate(BaseModel):
    """Promote the fastest variant whose quality stays within `min_quality_pct` of FP32."""

    model_config = ConfigDict(extra="forbid")
    alias: str = PRODUCTION
    min_quality_pct: float = 99.0
    min_fidelity: float = 0.0  # optional floor on mean cosine to FP32
    target: Literal["cpu", "gpu"] = "cpu"  # only variants built for this target compete
    rank_by: Literal["throughput_b32"] = "throughput_b32"


class GpuGate(BaseModel):
    """Promote the fastest precision of a model on a GPU (`--gpu-results`) whose vectors stay within
    `min_fidelity` (mean cosine) of FP32 on the same GPU: quality metrics are functions of the
    vectors, so at 0.999 they cannot move beyond noise. Serving reads the alias's `precision` tag."""

    model_config = ConfigDict(extra="forbid")
    alias: str = PRODUCTION_GPU
    min_fidelity: float = Field(0.999, gt=0, le=1)
    rank_by: str = "sentences_per_s_b128"  # a GPU serves big passes: serve-gpu.yaml's batch limits


class Speed(BaseModel):
    model_config = ConfigDict(extra="forbid")
    batches: list[int] = [1, 8, 32]
    sentences: int = 512  # from loadtest/corpus_en.jsonl
    threads: int = 2


class OptimizeConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    tracking_uri: str = "sqlite:///mlflow/mlflow.db"
    artifact_root: str = "mlflow/artifacts"
    results_dir: str = "results/optimize"
    catalog: str = "configs/models.yaml"
    gate: Gate = Gate()
    gpu_gate: GpuGate = GpuGate()
    speed: Speed = Speed()
    models: list[ModelPlan]
    quick: QuickOverrides | None = None


class QuickOverrides(BaseModel):
    """`--quick`: the same pipeline, smaller, for tests and a first look."""

    model_config = ConfigDict(extra="forbid")
    models: list[str] = ["all-MiniLM-L6-v2"]
    variants: list[VariantName] = ["onnx-fp32", "onnx-int8"]
    metrics: list[Metric] = ["lee_pearson"]
    speed_sentences: int = 64
    distill_corpus_limit: int = 256
    distill_max_seconds: float = 20.0


OptimizeConfig.model_rebuild()


def load_config(path: str | Path) -> OptimizeConfig:
    with open(path) as f:
        return OptimizeConfig.model_validate(yaml.safe_load(f))
