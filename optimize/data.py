"""Evaluation data that ships inside PyPI packages, read from the installed files (no hub, no net).

The Lee corpus (Lee, Pincombe & Welsh, 2005): 50 short news documents and the mean human similarity
rating of every pair, in gensim's test data. 1,225 document pairs.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib.resources import files

import numpy as np


@dataclass(frozen=True)
class RatedPairs:
    """Texts and, for pairs (i, j), a human similarity score."""

    texts: list[str]
    pairs: list[tuple[int, int]]
    scores: np.ndarray


def lee_pairs() -> RatedPairs:
    data = files("gensim") / "test" / "test_data"
    lines = (data / "lee.cor").read_text(encoding="latin-1").splitlines()
    texts = [line.strip() for line in lines if line.strip()]
    ratings = np.loadtxt(str(data / "similarities0-1.txt"))
    if ratings.shape != (len(texts), len(texts)):
        raise ValueError(f"Lee ratings are {ratings.shape}, documents {len(texts)}")
    pairs = [(i, j) for i in range(len(texts)) for j in range(i + 1, len(texts))]
    return RatedPairs(texts, pairs, np.array([ratings[i, j] for i, j in pairs]))
