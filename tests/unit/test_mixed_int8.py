"""The mixed INT8 variant keeps the fewest, most damaging MatMuls in FP32 that bring the graph to
the fidelity asked (issue "Encoders at the limit", compression that keeps quality)."""

from __future__ import annotations

from infergraph.optimize.mixed_int8 import choose

# A stand-in graph: quantising a node alone costs this much cosine; costs add up.
DAMAGE = {"ffn_down.4": 0.0015, "ffn_down.5": 0.00026, "ffn_down.0": 0.00022, "ffn_up.9": 0.00012}
DAMAGE |= {f"small.{i}": 0.00002 for i in range(8)}


def fidelity_of(nodes: dict[str, list[str]]) -> float:
    if "nodes_to_quantize" in nodes:
        quantised = set(nodes["nodes_to_quantize"])
    else:
        quantised = set(DAMAGE) - set(nodes["nodes_to_exclude"])
    return 1.0 - sum(DAMAGE[n] for n in quantised)


def test_the_most_damaging_nodes_stay_fp32_and_no_more_than_needed():
    choice = choose(list(DAMAGE), fidelity_of, fidelity=0.9993)
    assert choice.excluded == ["ffn_down.4", "ffn_down.5"]  # 1 node gives 0.99924, 2 give 0.9995
    assert choice.fidelity >= 0.9993 and choice.tried == {
        1: fidelity_of({"nodes_to_exclude": ["ffn_down.4"]}),
        2: choice.fidelity,
    }
    assert choice.damage["ffn_down.4"] == max(choice.damage.values())


def test_when_the_target_is_out_of_reach_it_keeps_the_best_it_tried_within_half_the_nodes():
    choice = choose(list(DAMAGE), fidelity_of, fidelity=1.0)
    assert len(choice.excluded) == max(choice.tried) <= len(DAMAGE) // 2
    assert choice.fidelity == max(choice.tried.values())
