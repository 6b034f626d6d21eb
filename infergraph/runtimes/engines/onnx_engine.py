"""ONNX Runtime engine: the fast CPU path. The graph comes from optimum's exporter, cached."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnxruntime as ort

from infergraph.files import atomic_file
from infergraph.runtimes.artifact import cached_folder
from infergraph.runtimes.engines.base import mean_pool_normalize
from infergraph.runtimes.engines.block_embeddings import Q4_EMBEDDINGS, gather_from_q4

log = logging.getLogger(__name__)

ONNX_FILE = "model.onnx"


def export_onnx(model_dir: Path, out_dir: Path, opset: int = 18, task: str = "feature-extraction") -> Path:
    """Export `model_dir` (a transformers encoder) to `out_dir/model.onnx` once; reuse it after,
    while its checksums hold (`artifact.cached_folder`: a changed or half-written export is redone)."""

    q4_table = model_dir / Q4_EMBEDDINGS  # the word embeddings as their source stored them (4-bit)

    def export(tmp: Path) -> None:
        from optimum.exporters.onnx import main_export  # heavy import, only when exporting

        log.info("exporting %s to ONNX (one time) -> %s", model_dir, out_dir)
        main_export(
            model_name_or_path=str(model_dir),
            output=tmp,
            task=task,
            library_name="transformers",
            opset=opset,
            do_validation=False,
            device="cpu",
        )
        if q4_table.exists():
            gather_from_q4(tmp / ONNX_FILE, q4_table)

    key = {"source": str(model_dir), "opset": opset, "task": task, "q4_word_embeddings": q4_table.exists()}
    cached_folder(out_dir, export, key)
    return out_dir / ONNX_FILE


def quantize_int8(onnx_path: Path, target: Path, per_channel: bool = True, **nodes: Sequence[str]) -> Path:
    """ONNX Runtime dynamic INT8 of `onnx_path` into `target`, once (atomically); reused after.

    Called directly rather than through optimum's ORTQuantizer because fused graphs' contrib ops
    need `DefaultTensorType`, which optimum does not pass. Signed int8 weights (per output channel
    by default), unsigned int8 activations: the layout of ONNX Runtime's AVX2/AVX-512 kernels.
    `nodes`: `nodes_to_exclude` (kept FP32) or `nodes_to_quantize` (only these), by node name.
    """
    if target.exists():
        return target
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    log.info("dynamic INT8 of %s -> %s (one time)", onnx_path, target)
    with atomic_file(target) as tmp:
        quantize_dynamic(
            str(onnx_path),
            str(tmp),
            per_channel=per_channel,
            weight_type=QuantType.QInt8,
            extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT},
            **{option: list(names) for option, names in nodes.items()},
        )
    return target


def cpu_session(onnx_path: Path, threads: int | None = None, spin: bool = False) -> ort.InferenceSession:
    """An ONNX Runtime CPU session with every graph optimisation, one inter-op thread and
    `threads` intra-op threads; no spinning unless asked (spinning worker threads burn the CPU that
    Serve's proxy and router need on a small box)."""
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.inter_op_num_threads = 1
    if threads:
        opts.intra_op_num_threads = threads
    opts.add_session_config_entry("session.intra_op.allow_spinning", "1" if spin else "0")
    return ort.InferenceSession(str(onnx_path), opts, providers=["CPUExecutionProvider"])


class OnnxEngine:
    """ONNX Runtime CPU session over an exported encoder; pooling in numpy.

    `session.run` is thread-safe, so a `TextEncoder` may run several passes on it at once (lanes).
    """

    concurrent_calls = True

    def __init__(self, onnx_path: Path, threads: int | None = None, spin: bool = False) -> None:
        self.session = cpu_session(onnx_path, threads, spin)
        self.input_names = {i.name for i in self.session.get_inputs()}
        out = self.session.get_outputs()[0]
        self.dim = int(out.shape[-1])
        self.name = f"onnxruntime-{Path(onnx_path).stem}"

    def hidden_states(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        """The last layer's token vectors (batch, tokens, dim): what a distilled student learns from."""
        feed = {"input_ids": input_ids, "attention_mask": attention_mask}
        if "token_type_ids" in self.input_names:
            feed["token_type_ids"] = np.zeros_like(input_ids)
        return self.session.run(None, feed)[0].astype(np.float32, copy=False)

    def embed(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        return mean_pool_normalize(self.hidden_states(input_ids, attention_mask), attention_mask)
