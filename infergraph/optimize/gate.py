"""The promotion gate: which measured variant, if any, becomes the served one."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from infergraph.optimize.config import Gate


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
