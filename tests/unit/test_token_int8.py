"""Per-token INT8 keeps quiet tokens precise beside a token with huge activations, where ONNX
Runtime's per-tensor dynamic INT8 crushes them (the reason e5's INT8 failed its quality gate)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from infergraph.optimize.token_int8 import quantize_token_int8
from infergraph.runtimes.engines.onnx_engine import quantize_int8

K, N = 64, 48


def linear_model(path: Path, weight: np.ndarray, bias: np.ndarray) -> Path:
    """Y = X @ W + b, X of shape [batch, tokens, K]: a transformer's linear layer."""
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["x", "w"], ["xw"], name="dense/MatMul"),
            helper.make_node("Add", ["xw", "b"], ["y"]),
        ],
        "linear",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", "tokens", K])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", "tokens", N])],
        [numpy_helper.from_array(weight, "w"), numpy_helper.from_array(bias, "b")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.save(model, str(path))
    return path


def run(path: Path, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return np.asarray(session.run(None, {"x": x})[0])


def relative_error(got: np.ndarray, want: np.ndarray) -> float:
    return float(np.linalg.norm(got - want) / np.linalg.norm(want))


def test_per_token_int8_keeps_quiet_tokens_beside_an_outlier_token(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    weight = rng.normal(0, 0.05, (K, N)).astype(np.float32)
    bias = rng.normal(0, 0.1, N).astype(np.float32)
    fp32 = linear_model(tmp_path / "fp32.onnx", weight, bias)
    x = rng.normal(0, 1, (2, 9, K)).astype(np.float32)
    x[0, 0] *= 300.0  # one "massive activation" token, as e5's first token after its FFNs
    want = run(fp32, x)
    quiet = (slice(None), slice(1, None))  # every other token

    token = quantize_token_int8(fp32, tmp_path / "token" / "model.onnx")
    per_tensor = quantize_int8(fp32, tmp_path / "tensor" / "model.onnx")
    got_token, got_tensor = run(token, x), run(per_tensor, x)

    assert relative_error(got_token[quiet], want[quiet]) < 0.02
    assert relative_error(got_token[0, 0], want[0, 0]) < 0.02  # the outlier token itself too
    assert relative_error(got_tensor[quiet], want[quiet]) > 0.2  # per-tensor: quiet tokens lost


def test_the_graph_holds_int8_weights_only_and_is_built_once(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    fp32 = linear_model(
        tmp_path / "fp32.onnx", rng.normal(0, 0.05, (K, N)).astype(np.float32), np.zeros(N, np.float32)
    )
    target = tmp_path / "token" / "model.onnx"
    quantize_token_int8(fp32, target)
    graph = onnx.load(str(target)).graph
    assert "MatMul" not in {node.op_type for node in graph.node}
    assert {init.data_type for init in graph.initializer if len(init.dims) == 2} == {TensorProto.INT8}
    built = target.stat().st_mtime_ns
    quantize_token_int8(fp32, target)
    assert target.stat().st_mtime_ns == built
