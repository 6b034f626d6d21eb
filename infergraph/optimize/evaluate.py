"""Quality of an encoder on real data, as the optimize pipeline compares variants against FP32.

- Lee set: Pearson and Spearman correlation between cosine similarity and human ratings.
- Fidelity: mean and minimum cosine between a variant's vectors and the reference (FP32) vectors.
- Retrieval (Debian FAQ): MRR@10 and recall@1 of the answer passage among all passages.
- Bitext (Django translations): how often a translation's nearest English string is its original.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
from scipy.stats import pearsonr, spearmanr

from infergraph.optimize.data import Bitext, QAPairs, RatedPairs, lee_pairs

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


def _unit(vectors: np.ndarray) -> np.ndarray:
    vectors = np.asarray(vectors, dtype=np.float64)
    return vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)


def _gold_ranks(similarity: np.ndarray) -> np.ndarray:
    """1-based rank of the diagonal (gold) entry in each row; ties count against the gold."""
    gold = np.diag(similarity)[:, None]
    return (similarity >= gold).sum(axis=1)  # the gold itself plus everything scoring as high


def retrieval_mrr(
    encode_queries: Encode, encode_passages: Encode, data: QAPairs, k: int = 10
) -> dict[str, float]:
    """MRR@k and recall@1/@k of question -> passage retrieval by cosine over all passages.

    passages[i] is the only right answer to questions[i]. Encoders get the raw text: model-specific
    prefixes are the caller's business. For e5, pass `lambda t: enc.encode(["passage: " + x for x in t])`
    for passages; queries can go as they are (the runtime adds "query: " to text without a known prefix).
    """
    ranks = _gold_ranks(_unit(encode_queries(data.questions)) @ _unit(encode_passages(data.passages)).T)
    return {
        f"mrr@{k}": float(np.where(ranks <= k, 1.0 / ranks, 0.0).mean()),
        "recall@1": float((ranks == 1).mean()),
        f"recall@{k}": float((ranks <= k).mean()),
    }


def bitext_accuracy(encode: Encode, data: Bitext) -> dict[str, float]:
    """Bitext retrieval accuracy: is a text's nearest neighbour (cosine) on the other side its pair?

    "acc@1" is the mean of both directions, "acc@1_to_en" (translation -> English) and
    "acc@1_from_en" (English -> translation). Both sides go through the same encoder (for e5 the
    runtime's default "query: " prefix, the symmetric-task setting).
    """
    similarity = _unit(encode(data.source)) @ _unit(encode(data.target)).T
    to_en = float((_gold_ranks(similarity) == 1).mean())
    from_en = float((_gold_ranks(similarity.T) == 1).mean())
    return {"acc@1": (to_en + from_en) / 2, "acc@1_to_en": to_en, "acc@1_from_en": from_en}
