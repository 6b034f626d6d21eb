"""Quality of an encoder on real data, as the optimize pipeline compares variants against FP32.

- Lee set: Pearson and Spearman correlation between cosine similarity and human ratings.
- Fidelity: mean and minimum cosine between a variant's vectors and the reference (FP32) vectors.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
from scipy.stats import pearsonr, spearmanr

from optimize.data import RatedPairs, lee_pairs

Encode = Callable[[Sequence[str]], np.ndarray]  # texts -> L2-normalised vectors (n, dim)


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
