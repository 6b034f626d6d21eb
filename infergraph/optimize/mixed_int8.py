"""Dynamic INT8 that keeps the few MatMuls whose quantisation moves the vectors most in FP32.

Full dynamic INT8 of multilingual-e5-small runs ~5x the PyTorch FP32 base on a VNNI CPU but loses
up to 4% of FP32's retrieval quality (French FAQ), so the gate keeps e5 at FP32. The loss is not
spread evenly: quantising a single MatMul alone moves the vectors by very different amounts. This
variant measures that per MatMul and keeps the worst in FP32, as few as needed:

1. damage(node) = 1 - mean cosine to FP32 when only `node` is quantised (one INT8 build each);
2. keep the most damaging 1, 2, 3, 4, 6, 8, ... nodes in FP32 until the whole graph's mean cosine to
   FP32 reaches `fidelity` (at most half of them).

Both steps measure on unlabelled text (`data.multilingual_corpus`: Django's messages minus the
evaluated ones, news and web text), never on the evaluation sets the gate then judges it by.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from infergraph.files import atomic_write_text
from infergraph.optimize import evaluate
from infergraph.runtimes.engines.onnx_engine import quantize_int8

Encode = Callable[[Sequence[str]], np.ndarray]
KEEP_STEPS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32)
FIDELITY = 0.999  # the mean cosine to FP32 to reach (full INT8 of e5: 0.997)
PROBE_TEXTS = 300


@dataclass
class Choice:
    """The FP32 nodes chosen, and what was measured on the way."""

    excluded: list[str]
    fidelity: float  # of the chosen graph, on the probe texts
    damage: dict[str, float]  # per weight MatMul: 1 - mean cosine with only it quantised
    tried: dict[int, float]  # nodes kept in FP32 -> the graph's mean cosine


def weight_matmuls(onnx_path: Path) -> list[str]:
    """The MatMul nodes with a weight initializer: what dynamic INT8 quantises."""
    import onnx

    graph = onnx.load(str(onnx_path), load_external_data=False).graph
    weights = {init.name for init in graph.initializer}
    return [n.name for n in graph.node if n.op_type == "MatMul" and any(i in weights for i in n.input)]


def choose(
    nodes: Sequence[str],
    fidelity_of: Callable[[dict[str, list[str]]], float],
    fidelity: float,
) -> Choice:
    """Rank `nodes` by damage, then keep the fewest most damaging in FP32 that reach `fidelity`.

    `fidelity_of(options)`: the mean cosine to FP32 of the INT8 graph built with `options`
    (`nodes_to_quantize` or `nodes_to_exclude`, as ONNX Runtime's quantize_dynamic takes them)."""
    damage = {node: 1.0 - fidelity_of({"nodes_to_quantize": [node]}) for node in nodes}
    ranked = sorted(nodes, key=lambda n: damage[n], reverse=True)
    tried: dict[int, float] = {}
    for keep in [k for k in KEEP_STEPS if k <= len(ranked) // 2]:
        tried[keep] = fidelity_of({"nodes_to_exclude": ranked[:keep]})
        if tried[keep] >= fidelity:
            return Choice(ranked[:keep], tried[keep], damage, tried)
    keep = max(tried, key=lambda k: tried[k]) if tried else 0
    return Choice(ranked[:keep], tried.get(keep, 0.0), damage, tried)


def mean_cosine(reference: np.ndarray, encode: Encode, texts: Sequence[str]) -> float:
    return evaluate.fidelity(reference, encode(texts))["mean_cosine"]


def build(
    fp32_onnx: Path, target: Path, encoder_of: Callable[[Path], Encode], texts: Sequence[str], fidelity: float
) -> Choice:
    """The mixed INT8 graph of `fp32_onnx` at `target` (once: the choice is saved beside it)."""
    record = target.with_suffix(".choice.json")
    if target.exists() and record.exists():
        saved = json.loads(record.read_text())
        return Choice(**(saved | {"tried": {int(k): v for k, v in saved["tried"].items()}}))
    reference = encoder_of(fp32_onnx)(texts)
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:

        def fidelity_of(nodes: dict[str, list[str]]) -> float:
            probe = Path(tmp) / "probe.onnx"
            quantize_int8(fp32_onnx, probe, True, **nodes)
            try:
                return mean_cosine(reference, encoder_of(probe), texts)
            finally:
                probe.unlink()

        choice = choose(weight_matmuls(fp32_onnx), fidelity_of, fidelity)
    quantize_int8(fp32_onnx, target, nodes_to_exclude=choice.excluded)
    atomic_write_text(record, json.dumps(asdict(choice), indent=1))
    return choice
