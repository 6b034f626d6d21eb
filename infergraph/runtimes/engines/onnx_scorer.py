"""ONNX Runtime engine for sequence-classification models (cross-encoders): logits per pair.

The graph comes from optimum's exporter (task "text-classification"), once per model folder into
the cache; `precision="int8"` adds ONNX Runtime dynamic INT8 (per-channel int8 weights, activations
quantised per call), also once. Both are written under a temporary name and renamed, so an
interrupted run never leaves a file that looks finished.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import onnxruntime as ort

log = logging.getLogger(__name__)

ONNX_FILE = "model.onnx"
INT8_FILE = "model_int8.onnx"


def export_classifier(model_dir: Path, out_dir: Path, opset: int = 18) -> Path:
    """`out_dir/model.onnx` for the sequence-classification model in `model_dir`; exported once."""
    target = out_dir / ONNX_FILE
    if target.exists():
        return target
    from optimum.exporters.onnx import main_export  # heavy import, only when exporting

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=out_dir.name + ".", dir=out_dir.parent))
    log.info("exporting cross-encoder %s to ONNX (one time) -> %s", model_dir, out_dir)
    try:
        main_export(
            model_name_or_path=str(model_dir),
            output=tmp,
            task="text-classification",
            library_name="transformers",
            opset=opset,
            do_validation=False,
            device="cpu",
        )
        tmp.rename(out_dir)
    except OSError:
        if not target.exists():  # a concurrent exporter did not win the race either
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def quantize_int8(onnx_path: Path) -> Path:
    """Dynamic INT8 of `onnx_path`, next to it; made once.

    Signed int8 weights per output channel, unsigned int8 activations: the layout of ONNX Runtime's
    AVX2/AVX-512 kernels, and what the optimize pipeline's `onnx-int8` encoder variants use.
    """
    target = onnx_path.with_name(INT8_FILE)
    if target.exists():
        return target
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    fd, tmp_name = tempfile.mkstemp(prefix=INT8_FILE + ".", suffix=".tmp", dir=onnx_path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    log.info("dynamic INT8 of %s (one time)", onnx_path)
    try:
        quantize_dynamic(
            str(onnx_path),
            str(tmp),
            per_channel=True,
            weight_type=QuantType.QInt8,
            extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT},
        )
        tmp.replace(target)
    finally:
        tmp.unlink(missing_ok=True)
    return target


class OnnxScorer:
    """ONNX Runtime CPU session over an exported classifier. `session.run` is thread-safe, so
    several forward passes may run at once (lanes)."""

    concurrent_calls = True

    def __init__(self, onnx_path: Path, threads: int | None = None, spin: bool = False) -> None:
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.inter_op_num_threads = 1
        if threads:
            opts.intra_op_num_threads = threads
        # Spinning worker threads burn the CPU that Serve's proxy and router need on a small box.
        opts.add_session_config_entry("session.intra_op.allow_spinning", "1" if spin else "0")
        self.session = ort.InferenceSession(str(onnx_path), opts, providers=["CPUExecutionProvider"])
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
