"""The pipeline's summary: a table (markdown + console) and a speed-vs-quality plot in `results/`."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from rich.table import Table

from infergraph.optimize.gate import VariantResult

COLUMNS = (
    "model",
    "variant",
    "precision",
    "replicas",
    "p50 ms (b32)",
    "p95 ms (b32)",
    "p50 ms (b1)",
    "sent/s (b32)",
    "x base",
    "quality % FP32",
    "fidelity",
    "MB",
    "gate",
)


def rows(results: Sequence[VariantResult], promoted: dict[str, str], gate_notes: dict[tuple[str, str], str]):
    base = {r.model: r.metrics["throughput_b32"] for r in results if r.artifact is None}
    for r in results:
        m = r.metrics
        mark = "promoted" if promoted.get(r.model) == r.variant else gate_notes.get((r.model, r.variant), "")
        yield (
            r.model,
            r.label,
            r.precision,
            "1",  # in-process, one engine: what one replica does
            f"{m['p50_ms_b32']:.1f}",
            f"{m['p95_ms_b32']:.1f}",
            f"{m['p50_ms_b1']:.1f}",
            f"{m['throughput_b32']:.1f}",
            f"{m['throughput_b32'] / base[r.model]:.2f}",
            f"{r.quality_pct:.1f}",
            f"{m['fidelity_mean_cosine']:.4f}",
            f"{m['size_mb']:.0f}",
            mark,
        )


def console_table(results, promoted, gate_notes, title: str) -> Table:
    table = Table(title=title)
    for col in COLUMNS:
        table.add_column(col, justify="left" if col in ("model", "variant", "precision", "gate") else "right")
    for row in rows(results, promoted, gate_notes):
        table.add_row(*row)
    return table


def markdown_table(results, promoted, gate_notes) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(row) + " |" for row in rows(results, promoted, gate_notes)]
    return "\n".join(lines) + "\n"


def head_to_head_lines(head_to_head: dict[str, tuple[str, dict[str, float]]]) -> str:
    """The gate winner against the base in alternating passes: the robust "x base" figure."""
    if not head_to_head:
        return ""
    lines = [
        "",
        "Head to head with the PyTorch FP32 base (alternating passes, median of the rounds' ratios):",
        "",
    ]
    for model, (variant, h) in head_to_head.items():
        lines.append(
            f"- {model}: {variant} {h['h2h_speedup']:.2f}x (worst round {h['h2h_speedup_min']:.2f}x), "
            f"{h['h2h_variant_sentences_per_s']:.1f} vs {h['h2h_base_sentences_per_s']:.1f} sentences/s "
            f"at batch {h['h2h_batch']:.0f}, {h['h2h_rounds']:.0f} rounds"
        )
    return "\n".join(lines) + "\n"


def plot(results: Sequence[VariantResult], promoted: dict[str, str], min_quality: float, path: Path) -> Path:
    """Throughput against quality, one panel per model; the gate's quality floor drawn in."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = sorted({r.model for r in results})
    fig, axes = plt.subplots(1, len(models), figsize=(6.5 * len(models), 4.8), squeeze=False)
    for ax, model in zip(axes[0], models, strict=True):
        for r in (r for r in results if r.model == model):
            star = promoted.get(model) == r.variant
            color = "tab:green" if star else ("tab:gray" if r.target != "cpu" else "tab:blue")
            ax.scatter(r.quality_pct, r.metrics["throughput_b32"], s=120 if star else 50, color=color)
            ax.annotate(r.label, (r.quality_pct, r.metrics["throughput_b32"]), fontsize=8, xytext=(4, 3),
                        textcoords="offset points")  # fmt: skip
        ax.axvline(min_quality, color="tab:red", linestyle="--", linewidth=1, label=f"gate {min_quality}%")
        ax.set_title(model)
        ax.set_xlabel("quality, % of FP32 (worst gate metric)")
        ax.set_ylabel("sentences/s at batch 32 (this CPU, 2 threads)")
        ax.legend(loc="lower left")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
