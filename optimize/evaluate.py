"""Quality of an encoder on real data, as the optimize pipeline compares variants against FP32.

    uv run python -m optimize.evaluate            # both catalog encoders, ONNX FP32 and PyTorch FP32

- Lee set: Pearson and Spearman correlation between cosine similarity and human ratings.
- Fidelity: mean and minimum cosine between a variant's vectors and the reference (FP32) vectors.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Literal

import numpy as np
from rich.console import Console
from rich.table import Table
from scipy.stats import pearsonr, spearmanr

from optimize.data import RatedPairs, lee_pairs

Encode = Callable[[Sequence[str]], np.ndarray]  # texts -> L2-normalised vectors (n, dim)
ROOT = Path(__file__).resolve().parents[1]


def rated_pairs_scores(encode: Encode, data: RatedPairs) -> dict[str, float]:
    vectors = encode(data.texts)
    i, j = np.array(data.pairs).T
    cosine = np.einsum("nd,nd->n", vectors[i], vectors[j])
    return {
        "pearson": float(pearsonr(cosine, data.scores).statistic),
        "spearman": float(spearmanr(cosine, data.scores).statistic),
    }


def lee_scores(encode: Encode) -> dict[str, float]:
    return rated_pairs_scores(encode, lee_pairs())


def fidelity(reference: np.ndarray, variant: np.ndarray) -> dict[str, float]:
    """How close a variant's vectors stay to the reference's, row by row."""
    cos = np.einsum("nd,nd->n", reference, variant) / (
        np.linalg.norm(reference, axis=1) * np.linalg.norm(variant, axis=1)
    )
    return {"mean_cosine": float(cos.mean()), "min_cosine": float(cos.min())}


def main() -> None:
    from runtimes.catalog import load_catalog
    from runtimes.loader import load_text_encoder

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=["all-MiniLM-L6-v2", "multilingual-e5-small"])
    args = ap.parse_args()
    console = Console()
    catalog = load_catalog(ROOT / "configs" / "models.yaml")
    data = lee_pairs()
    table = Table(title=f"Lee set: {len(data.pairs):,} rated document pairs")
    for col in ("model", "engine", "pearson", "spearman", "fidelity to ONNX FP32 (mean / min cosine)"):
        table.add_column(col)
    engines: tuple[Literal["onnx", "torch"], ...] = ("onnx", "torch")
    for name in args.models:
        reference = None
        for engine in engines:
            with console.status(f"{name} on {engine}"):
                encoder = load_text_encoder(catalog.get(name), engine=engine)
                vectors = encoder.encode(data.texts)
                scores = rated_pairs_scores(encoder.encode, data)
            reference = vectors if reference is None else reference
            fid = fidelity(reference, vectors)
            table.add_row(
                name,
                encoder.engine.name,
                f"{scores['pearson']:.3f}",
                f"{scores['spearman']:.3f}",
                f"{fid['mean_cosine']:.4f} / {fid['min_cosine']:.4f}",
            )
    console.print(table)


if __name__ == "__main__":
    main()
