"""Build each variant of a base encoder as an artifact folder (`runtimes/artifact.py`).

- ONNX FP32: optimum's exporter; ONNX Runtime applies its graph optimisations at load.
- ONNX FP16: weights and activations in half precision, inputs/outputs kept FP32. A GPU target:
  CPUs lack fast FP16 kernels, so it is measured here only to show its quality, and marked so.
- Graph optimisation (optimum's ORTOptimizer): attention, LayerNorm and GELU fused into single ops.
- ONNX dynamic INT8 (ONNX Runtime): int8 weights, activations quantised per batch, no calibration
  data, applied to the fused graph.
- PyTorch dynamic INT8: the FP32 folder plus an instruction the loader applies (quantize_dynamic).
- Unstructured L1 pruning: the smallest weights set to zero. Dense kernels multiply zeros as fast
  as anything else, so it saves nothing here; it is measured to show exactly that.
- Structured layer pruning, and the distilled student (see `optimize/distill.py`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from infergraph.files import atomic_dir, atomic_file
from infergraph.runtimes.artifact import MANIFEST, Manifest, tokenizer_sources, write_artifact
from infergraph.runtimes.engines.onnx_engine import quantize_int8

log = logging.getLogger(__name__)

INT8_FILE = "model_quantized.onnx"
FP16_FILE = "model_fp16.onnx"
OPTIMIZED_FILE = "model_optimized.onnx"


def graph_optimized(onnx_path: Path, out_dir: Path) -> Path:
    """ONNX Runtime's transformer fusions (attention, LayerNorm, GELU, bias adds) baked into the file.

    optimum's ORTOptimizer at level 2, for CPU, exact GELU. Done offline because the session's own
    optimisation at load does not fuse BERT attention; measured here, INT8 of the fused graph ran
    ~25% faster than INT8 of the plain export at the same Lee correlation.
    """
    target = out_dir / OPTIMIZED_FILE
    if target.exists():
        return target
    from optimum.onnxruntime import ORTOptimizer
    from optimum.onnxruntime.configuration import OptimizationConfig

    optimizer = ORTOptimizer.from_pretrained(onnx_path.parent, file_names=[onnx_path.name])
    config = OptimizationConfig(optimization_level=2, optimize_for_gpu=False, enable_gelu_approximation=False)
    with atomic_dir(out_dir, replace=True) as tmp:
        optimizer.optimize(save_dir=tmp, optimization_config=config)
        produced = next(tmp.glob("*.onnx"))
        if produced.name != OPTIMIZED_FILE:
            produced.rename(tmp / OPTIMIZED_FILE)
    return target


def dynamic_int8(onnx_path: Path, out_dir: Path, per_channel: bool = True) -> Path:
    """Quantise `onnx_path` into `out_dir` once (ONNX Runtime dynamic INT8); reuse it after."""
    return quantize_int8(onnx_path, out_dir / INT8_FILE, per_channel)


def float16(onnx_path: Path, out_dir: Path) -> Path:
    """Half-precision copy of an ONNX graph; inputs and outputs stay FP32 for the same callers."""
    target = out_dir / FP16_FILE
    if target.exists():
        return target
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    half = convert_float_to_float16(onnx.load(str(onnx_path)), keep_io_types=True)
    with atomic_file(target) as tmp:
        onnx.save(half, str(tmp))
    return target


def l1_unstructured(model_dir: Path, sparsity: float, out_dir: Path) -> Path:
    """Zero the `sparsity` fraction of smallest-magnitude weights in every Linear layer."""
    import torch
    from torch.nn.utils import prune
    from transformers import AutoModel

    from infergraph.optimize.distill import save_model_folder

    model = AutoModel.from_pretrained(str(model_dir))
    for module in model.modules():
        if isinstance(module, torch.nn.Linear):
            prune.l1_unstructured(module, name="weight", amount=sparsity)
            prune.remove(module, "weight")
    return save_model_folder(model, model_dir, out_dir)


@dataclass(frozen=True)
class Built:
    """A variant on disk: the artifact folder and what it took to make."""

    artifact: Path
    manifest: Manifest
    stats: dict[str, float]


def onnx_artifact(
    model: str, variant: str, precision: str, onnx_file: Path, tokenizer_dir: Path, out: Path, **extra: str
) -> Path:
    manifest = Manifest(
        model=model,
        variant=variant,
        format="onnx",
        precision=precision,
        target=extra.pop("target", "cpu"),
        weights=onnx_file.name,
        notes=extra.pop("notes", ""),
    )
    return write_artifact(out, manifest, {onnx_file.name: onnx_file, **tokenizer_sources(tokenizer_dir)})


def folder_artifact(model: str, variant: str, folder: Path, out: Path, torch_int8: bool, notes: str) -> Path:
    """A transformers folder as an artifact (PyTorch engine)."""
    manifest = Manifest(
        model=model,
        variant=variant,
        format="transformers",
        precision="int8" if torch_int8 else "fp32",
        weights=".",
        torch_quantization="dynamic_int8" if torch_int8 else "none",
        notes=notes,
    )
    sources = {
        p.name: p
        for p in folder.iterdir()
        if p.is_file() and p.suffix in (".json", ".safetensors") and p.name != MANIFEST
    }
    return write_artifact(out, manifest, {**tokenizer_sources(folder), **sources})
