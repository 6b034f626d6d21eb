"""The frozen input corpus, `loadtest/corpus_en.jsonl` (one `{"text": ...}` per line).

Benchmarks, the optimize pipeline and the load test all replay it, so their numbers compare.
Stdlib only: Locust (its own gevent-patched process) and bare GPU boxes import it.
"""

from __future__ import annotations

import json
from pathlib import Path

from infergraph.paths import PROJECT_ROOT

CORPUS = PROJECT_ROOT / "loadtest" / "corpus_en.jsonl"


def load_corpus(limit: int | None = None, path: str | Path = CORPUS) -> list[str]:
    """The first `limit` texts (all by default), in file order."""
    with open(path, encoding="utf-8") as f:
        texts = [json.loads(line)["text"] for line in f if line.strip()]
    if not texts:
        raise ValueError(f"no texts in {path}")
    return texts[:limit]
