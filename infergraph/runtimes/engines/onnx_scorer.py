"""ONNX Runtime engine for sequence-classification models (cross-encoders): logits per pair.

The graph comes from optimum's exporter (task "text-classification"), once per model folder into
the cache; `precision="int8"` adds ONNX Runtime dynamic INT8 (per-channel int8 weights, activations
quantised per call), also once; both atomically (infergraph/files.py).
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from infergraph.runtimes.artifact import cached_folder
from infergraph.runtimes.engines.onnx_engine import cpu_session, export_onnx
from infergraph.runtimes.engines.onnx_engine import quantize_int8 as quantize_onnx_int8

log = logging.getLogger(__name__)

INT8_FILE = "model_int8.onnx"


def export_classifier(model_dir: Path, out_dir: Path, opset: int = 18) -> Path:
    """`out_dir/model.onnx` for the sequence-classification model in `model_dir`; exported once."""
    log.info("cross-encoder %s -> ONNX", model_dir)
    return export_onnx(model_dir, out_dir, opset, task="text-classification")


def quantize_int8(onnx_path: Path) -> Path:
    """Dynamic INT8 (per channel) of `onnx_path` in a folder beside its own, made once and reused
    while its checksum holds (`artifact.cached_folder`)."""
    out = onnx_path.parent.with_name(onnx_path.parent.name + "-int8")
    cached_folder(out, lambda tmp: quantize_onnx_int8(onnx_path, tmp / INT8_FILE), {"source": str(onnx_path)})
    return out / INT8_FILE


class OnnxScorer:
    """ONNX Runtime CPU session over an exported classifier. `session.run` is thread-safe, so
    several forward passes may run at once (lanes)."""

    concurrent_calls = True

    def __init__(self, onnx_path: Path, threads: int | None = None, spin: bool = False) -> None:
        self.session = cpu_session(onnx_path, threads, spin)
        self.input_names = {i.name for i in self.session.get_inputs()}
        self.labels = int(self.session.get_outputs()[0].shape[-1])
        self.name = f"onnxruntime-{Path(onnx_path).stem}"

    def logits(
        self, input_ids: np.ndarray, attention_mask: np.ndarray, token_type_ids: np.ndarray
    ) -> np.ndarray:
        feed = {"input_ids": input_ids, "attention_mask": attention_mask}
        if "token_type_ids" in self.input_names:
            feed["token_type_ids"] = token_type_ids
        return np.asarray(self.session.run(None, feed)[0], dtype=np.float32)
