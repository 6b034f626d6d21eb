"""The promotion gate: which measured variant, if any, becomes the served one."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from infergraph.optimize.config import Gate, GpuGate


@dataclass
class VariantResult:
    """Everything measured about one variant: what MLflow logs and the gate reads."""

    model: str
    variant: str
    precision: str
    target: str  # "cpu" or "gpu": the hardware the variant is meant for
    metrics: dict[str, float]  # quality metrics, speed, size, memory, fidelity
    quality_pct: float  # the worst gate metric, as % of FP32
    artifact: Path | None = None  # None for the PyTorch FP32 base (it is what the catalog serves)
    params: dict[str, str] = field(default_factory=dict)
    notes: str = ""
    version: str | None = None  # registry version, once registered

    @property
    def label(self) -> str:
        return self.variant if self.target == "cpu" else f"{self.variant} ({self.target} target)"


def eligible(result: VariantResult, gate: Gate) -> tuple[bool, str]:
    """Whether a variant may be promoted, and why not."""
    if result.artifact is None:
        return False, "base model (served without a registry entry)"
    if result.target != gate.target:
        return False, f"built for {result.target}, gate promotes {gate.target} variants"
    if result.quality_pct < gate.min_quality_pct:
        return False, f"quality {result.quality_pct:.1f}% < {gate.min_quality_pct}% of FP32"
    fid = result.metrics.get("fidelity_mean_cosine", 1.0)
    if fid < gate.min_fidelity:
        return False, f"fidelity {fid:.4f} < {gate.min_fidelity}"
    return True, "passes"


def choose(results: Sequence[VariantResult], gate: Gate) -> VariantResult | None:
    """The fastest eligible variant by `gate.rank_by`, or None when nothing passes."""
    passing = [r for r in results if eligible(r, gate)[0]]
    return max(passing, key=lambda r: r.metrics.get(gate.rank_by, 0.0), default=None)


def choose_gpu_precision(
    rows: Sequence[dict[str, Any]], gate: GpuGate
) -> tuple[dict[str, Any] | None, dict[str, str]]:
    """Among one model's GPU rows (`python -m infergraph.optimize.gpu`, the base model's), the fastest
    by `gate.rank_by` whose fidelity to FP32 holds; and why each precision passed or not. Rows of
    other variants (a distilled student) are not candidates: a GPU replica serves the base model's
    weights at the promoted precision, and those variants did not pass the CPU gate's quality bar."""
    verdicts: dict[str, str] = {}
    passing = []
    for row in rows:
        label = f"{row.get('variant', 'base')} {row['precision']}"
        fidelity = float(row.get("fidelity_mean_cosine", 0.0))
        if row.get("variant", "base") != "base":
            verdicts[label] = "not the base model"
        elif gate.rank_by not in row:
            verdicts[label] = f"no {gate.rank_by} measured"
        elif fidelity < gate.min_fidelity:
            verdicts[label] = f"fidelity {fidelity:.5f} < {gate.min_fidelity}"
        else:
            verdicts[label] = f"passes ({gate.rank_by} {float(row[gate.rank_by]):,.0f})"
            passing.append(row)
    return max(passing, key=lambda r: float(r[gate.rank_by]), default=None), verdicts
