"""Turns a variant name into an artifact folder, reusing shared steps (export, student) per model.

Everything is cached under `cache_root()/optimize/<model>-<fingerprint>/`, so a second pipeline
run measures again but rebuilds nothing unless the base weights or the settings changed.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from functools import cached_property
from pathlib import Path

import numpy as np

from infergraph.files import atomic_write_text
from infergraph.optimize import variants as v
from infergraph.optimize.config import Distillation, ModelPlan
from infergraph.optimize.distill import DistillSettings, choose_layers, distill, layer_pruned, teacher_states
from infergraph.optimize.token_int8 import quantize_token_int8
from infergraph.runtimes.artifact import read_manifest
from infergraph.runtimes.catalog import EncoderSpec
from infergraph.runtimes.engines.onnx_engine import export_onnx
from infergraph.runtimes.text_encoder import TextEncoder

Corpus = Callable[[], list[str]]


class VariantFactory:
    def __init__(
        self,
        spec: EncoderSpec,
        model_dir: Path,
        work: Path,
        plan: ModelPlan,
        teacher: Callable[[], TextEncoder],
        corpus: Corpus,
    ) -> None:
        self.spec, self.model_dir, self.work, self.plan = spec, model_dir, work, plan
        self.teacher, self.corpus = teacher, corpus
        self.stats: dict[str, dict[str, float]] = {}  # per variant: build seconds, training figures

    def build(self, variant: str) -> v.Built:
        key = f"-{self.student_key}" if variant.startswith("distilled") else ""
        out = self.work / "artifacts" / f"{variant}{key}"
        started = time.monotonic()
        if not (out / "manifest.json").exists():
            getattr(self, "_" + variant.replace("-", "_"))(out)
        stats = {"build_s": time.monotonic() - started, **self.stats.get(variant, {})}
        return v.Built(out, read_manifest(out), stats)

    @property
    def distillation(self) -> Distillation:
        if self.plan.distillation is None:
            raise ValueError(
                f"{self.spec.name}: pruned and distilled variants need `distillation:` in optimize.yaml"
            )
        return self.plan.distillation

    @property
    def student_key(self) -> str:
        """Names the student by its settings, so changed settings train a new one."""
        d = self.plan.distillation
        if d is None:
            return "student-none"
        layers = "-".join(map(str, d.keep_layers)) if d.keep_layers else f"auto{d.layers}"
        return f"student-l{layers}-n{d.corpus_limit}-t{d.max_tokens}-e{d.epochs}-s{int(d.max_seconds)}"

    # Shared steps -------------------------------------------------------------------------------
    @cached_property
    def base_onnx(self) -> Path:
        return export_onnx(self.model_dir, self.work / "onnx" / "base")

    @cached_property
    def fused_onnx(self) -> Path:
        """The base graph with ONNX Runtime's transformer fusions baked in: what INT8 variants quantise."""
        return v.graph_optimized(self.base_onnx, self.work / "fused")

    @cached_property
    def teacher_data(self) -> tuple[list[list[int]], list[np.ndarray], int]:
        """The corpus as token ids (cut to `max_tokens`), the teacher's token states, the pad id."""
        teacher = self.teacher()
        hidden = getattr(teacher.engine, "hidden_states", None)
        if hidden is None:
            raise TypeError(f"the teacher engine {teacher.engine.name} does not expose token states")
        cut = self.distillation.max_tokens
        ids = [_truncate(e.ids, cut) for e in teacher.tokenizer.encode_batch(self.corpus())]
        return ids, teacher_states(hidden, ids, pad_id=teacher.pad_id), teacher.pad_id

    @cached_property
    def keep_layers(self) -> tuple[int, ...]:
        d = self.distillation
        if d.keep_layers:
            return tuple(d.keep_layers)
        saved = self.work / f"layers-auto{d.layers}-n{d.corpus_limit}-t{d.max_tokens}.json"
        if saved.exists():
            return tuple(json.loads(saved.read_text()))
        ids, states, pad_id = self.teacher_data
        keep = choose_layers(self.model_dir, ids, states, d.layers, pad_id=pad_id)
        atomic_write_text(saved, json.dumps(keep))
        return keep

    @cached_property
    def student_dir(self) -> Path:
        d = self.distillation
        out = self.work / self.student_key
        if (out / "training.json").exists():  # trained before with the same settings
            stats = json.loads((out / "training.json").read_text())
            self.stats["distilled"] = self.stats["distilled-int8"] = stats
            return out
        settings = DistillSettings(
            keep_layers=self.keep_layers,
            epochs=d.epochs,
            batch_size=d.batch_size,
            max_tokens=d.max_tokens,
            lr=d.lr,
            token_weight=d.token_weight,
            max_seconds=d.max_seconds,
        )
        ids, states, pad_id = self.teacher_data
        _, stats = distill(self.model_dir, ids, states, settings, out, pad_id=pad_id)
        atomic_write_text(out / "training.json", json.dumps(stats))  # written last: marks it complete
        self.stats["distilled"] = self.stats["distilled-int8"] = stats
        return out

    @cached_property
    def student_onnx(self) -> Path:
        return export_onnx(self.student_dir, self.student_dir.with_name(self.student_dir.name + "-onnx"))

    # Variants -----------------------------------------------------------------------------------
    def _onnx_fp32(self, out: Path) -> None:
        v.onnx_artifact(self.spec.name, "onnx-fp32", "fp32", self.base_onnx, self.model_dir, out)

    def _onnx_fp16(self, out: Path) -> None:
        half = v.float16(self.base_onnx, self.work / "fp16")
        notes = "GPU target: CPUs have no fast FP16 kernels, so CPU speed here is not its speed"
        v.onnx_artifact(
            self.spec.name, "onnx-fp16", "fp16", half, self.model_dir, out, target="gpu", notes=notes
        )

    def _onnx_int8(self, out: Path) -> None:
        int8 = v.dynamic_int8(self.fused_onnx, self.work / "fused-int8")
        v.onnx_artifact(self.spec.name, "onnx-int8", "int8", int8, self.model_dir, out)

    def _onnx_int8_token(self, out: Path) -> None:
        int8 = quantize_token_int8(self.fused_onnx, self.work / "fused-int8-token" / v.INT8_FILE)
        notes = "INT8 weights per column, activations per token (token_int8.py); attention as onnx-int8"
        v.onnx_artifact(self.spec.name, "onnx-int8-token", "int8", int8, self.model_dir, out, notes=notes)

    def _torch_int8(self, out: Path) -> None:
        notes = "PyTorch dynamic INT8 applied at load (torch.ao quantize_dynamic on every Linear)"
        v.folder_artifact(self.spec.name, "torch-int8", self.model_dir, out, torch_int8=True, notes=notes)

    def _pruned_l1(self, out: Path) -> None:
        sparsity = self.plan.l1_sparsity
        folder = v.l1_unstructured(self.model_dir, sparsity, self.work / f"l1-{sparsity}")
        onnx = export_onnx(folder, self.work / f"l1-{sparsity}-onnx")
        notes = f"{sparsity:.0%} of Linear weights zeroed; dense kernels still multiply them"
        v.onnx_artifact(self.spec.name, "pruned-l1", "fp32", onnx, self.model_dir, out, notes=notes)

    def _pruned_layers(self, out: Path) -> None:
        keep = list(self.keep_layers)
        folder = layer_pruned(self.model_dir, keep, self.work / f"layers-{'-'.join(map(str, keep))}")
        onnx = export_onnx(folder, folder.with_name(folder.name + "-onnx"))
        notes = f"layers {keep} kept, no training: what structured pruning alone costs"
        v.onnx_artifact(self.spec.name, "pruned-layers", "fp32", onnx, self.model_dir, out, notes=notes)

    def _distilled(self, out: Path) -> None:
        notes = f"layers {list(self.keep_layers)} of the teacher kept, then trained on its token states"
        v.onnx_artifact(
            self.spec.name, "distilled", "fp32", self.student_onnx, self.model_dir, out, notes=notes
        )

    def _distilled_int8(self, out: Path) -> None:
        fused = v.graph_optimized(
            self.student_onnx, self.student_dir.with_name(self.student_dir.name + "-fused")
        )
        int8 = v.dynamic_int8(fused, self.student_dir.with_name(self.student_dir.name + "-fused-int8"))
        notes = f"layers {list(self.keep_layers)}, trained, attention fused, dynamic INT8"
        v.onnx_artifact(self.spec.name, "distilled-int8", "int8", int8, self.model_dir, out, notes=notes)


def _truncate(ids: list[int], max_tokens: int) -> list[int]:
    """Cut long texts for training, keeping the closing special token."""
    return ids if len(ids) <= max_tokens else ids[: max_tokens - 1] + ids[-1:]
