"""The hybrid re-ranker's maths: BM25 over the request's documents fused with bi-encoder cosine.

A bi-encoder misses exact matches a user cares about (package names, commands, paths); BM25 misses
paraphrase. Fusing both over the candidates of one request helped on the Debian FAQ (measured by
`python -m infergraph.optimize.rerank`, which also picks `lexical_weight` on a held-out split).

Choices, measured there on the tuning half of the FAQ questions (MiniLM en; e5 en+de+fr):
- tokens: NFKC + casefold + accents folded, unicode word runs (CJK split per character), each cut
  to its first 5 characters. The cut is a language-agnostic stemmer: "packages"/"package" and
  cross-lingual cognates ("Installation"/"installing") meet; it helped German and French questions
  against English passages most. A stopword list did not measurably help: IDF already mutes them.
- IDF: BM25's Lucene form log(1 + (N - n + .5) / (n + .5)), always > 0. rank_bm25's Okapi IDF is
  0 or negative for terms in half the documents or more, so in a request of 1-3 documents a matching
  term could lower a document's score.
- fusion: each signal min-max scaled within the request, then (1 - w) * dense + w * lexical.
  z-scores scored the same within noise, rank fusion worse. Min-max keeps the result in [0, 1].
"""

from __future__ import annotations

import math
import re
import unicodedata
from collections.abc import Sequence

import numpy as np
from rank_bm25 import BM25Okapi

PREFIX_CHARS = 5
_CJK = "\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"  # kana and Han: no spaces between words
_TOKEN = re.compile(rf"[{_CJK}]|[^\W{_CJK}]+")


def tokenize(text: str) -> list[str]:
    """Lowercase, accent-free word stems: `apt-get` -> apt, get; `/etc/apt/sources.list` -> etc, apt,
    sourc, list; `Paketverwaltung` -> paket."""
    if text.isascii():  # the common case: nothing to normalise (NFKC, NFKD are identities here)
        folded = text.lower()
    else:
        folded = unicodedata.normalize("NFKD", unicodedata.normalize("NFKC", text).casefold())
        folded = "".join(c for c in folded if not unicodedata.combining(c))
    return [t[:PREFIX_CHARS] for t in _TOKEN.findall(folded)]


class _BM25(BM25Okapi):
    """rank_bm25's Okapi scoring with an IDF that stays positive for any number of documents."""

    def _calc_idf(self, nd: dict[str, int]) -> None:
        n_docs = self.corpus_size
        self.idf = {word: math.log1p((n_docs - n + 0.5) / (n + 0.5)) for word, n in nd.items()}
        self.average_idf = float(np.mean(list(self.idf.values()))) if self.idf else 0.0


def lexical_scores(query: str, documents: Sequence[str]) -> np.ndarray:
    """BM25 of `query` against `documents`, with IDF from these documents only. float64, >= 0."""
    corpus = [tokenize(d) for d in documents]
    terms = tokenize(query)
    if not documents or not terms or not any(corpus):
        return np.zeros(len(documents))
    return np.asarray(_BM25(corpus).get_scores(terms), dtype=np.float64)


def minmax(x: np.ndarray) -> np.ndarray:
    """Scale to [0, 1] within the request; a constant signal (no preference) becomes 0.5 everywhere."""
    x = np.asarray(x, dtype=np.float64)
    if x.size == 0:
        return x
    low, span = float(x.min()), float(x.max() - x.min())
    if not np.isfinite(span) or span <= 1e-12:
        return np.full_like(x, 0.5)
    return (x - low) / span


def fuse(dense: np.ndarray, lexical: np.ndarray, lexical_weight: float) -> np.ndarray:
    """(1 - w) * minmax(dense) + w * minmax(lexical): a relevance score in [0, 1] (float32).

    Relative to the request's documents (the best document of each signal gets 1), not calibrated
    across requests.
    """
    if not 0.0 <= lexical_weight <= 1.0:
        raise ValueError(f"lexical_weight must be in [0, 1], got {lexical_weight}")
    if np.shape(dense) != np.shape(lexical):
        raise ValueError(f"dense {np.shape(dense)} and lexical {np.shape(lexical)} differ in shape")
    fused = (1.0 - lexical_weight) * minmax(dense) + lexical_weight * minmax(lexical)
    return np.clip(fused, 0.0, 1.0).astype(np.float32)


def cosine(query_vector: np.ndarray, document_vectors: np.ndarray) -> np.ndarray:
    """Cosine of the query with each document (vectors need not be unit length)."""
    q = np.asarray(query_vector, dtype=np.float64).reshape(-1)
    docs = np.asarray(document_vectors, dtype=np.float64).reshape(-1, q.size)
    q = q / max(float(np.linalg.norm(q)), 1e-12)
    docs = docs / np.maximum(np.linalg.norm(docs, axis=1, keepdims=True), 1e-12)
    return docs @ q


def hybrid_scores(
    query: str,
    documents: Sequence[str],
    query_vector: np.ndarray,
    document_vectors: np.ndarray,
    lexical_weight: float,
) -> np.ndarray:
    """Relevance in [0, 1] of each document, in input order. `query` and `documents` are the raw
    texts (no model prefixes); the vectors come from the bi-encoder (with its prefixes)."""
    if len(documents) != len(document_vectors):
        raise ValueError(f"{len(documents)} documents but {len(document_vectors)} document vectors")
    return fuse(cosine(query_vector, document_vectors), lexical_scores(query, documents), lexical_weight)
