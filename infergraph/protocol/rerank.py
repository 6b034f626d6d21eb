"""`POST /v1/rerank` and `/v2/rerank`: Cohere's request and response shapes (as Infinity and TEI
serve them), which Jina's clients also read (`results[].index/relevance_score/document.text`, `usage`)."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, StrictStr, field_validator

from infergraph.protocol.common import Outcome

MAX_DOCUMENTS_PER_REQUEST = 1000  # Cohere's recommended ceiling; a model may allow fewer


class TextDocument(BaseModel):
    """Cohere v1 / Jina document object; only `text` is scored."""

    model_config = ConfigDict(extra="ignore")
    text: StrictStr


class RerankRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")  # max_chunks_per_doc, max_tokens_per_doc, rank_fields...
    model: StrictStr
    query: StrictStr
    documents: list[StrictStr | TextDocument] = Field(description="strings or {'text': ...} objects")
    top_n: StrictInt | None = Field(default=None, ge=1, description="return the best n (default: all)")
    return_documents: StrictBool = False

    @field_validator("query")
    @classmethod
    def _query_not_empty(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("query is empty")
        return value

    @field_validator("documents")
    @classmethod
    def _documents(cls, value: list[str | TextDocument]) -> list[str | TextDocument]:
        if not value:
            raise ValueError("documents must not be an empty list")
        if len(value) > MAX_DOCUMENTS_PER_REQUEST:
            raise ValueError(f"at most {MAX_DOCUMENTS_PER_REQUEST} documents per request, got {len(value)}")
        for i, doc in enumerate(value):
            if not (doc if isinstance(doc, str) else doc.text).strip():
                raise ValueError(f"documents[{i}] is empty")
        return value

    def texts(self) -> list[str]:
        return [d if isinstance(d, str) else d.text for d in self.documents]

    def work(self) -> RerankWork:
        return RerankWork(self.query, self.texts())


@dataclass(frozen=True)
class RerankWork:
    """What a re-ranker deployment scores for one request."""

    query: str
    documents: list[str]

    @property
    def units(self) -> int:
        """What the router meters this work in: (query, document) pairs."""
        return len(self.documents)


@dataclass
class RerankResult(Outcome):
    """One relevance score in [0, 1] per document, in the request's order."""

    scores: Any = None  # numpy float32 (n,)


def rerank_payload(req: RerankRequest, result: RerankResult, api_version: str = "1") -> bytes:
    """Sorted by score, best first, cut to `top_n`; `meta` as Cohere writes it, `usage` as Jina does."""
    scores = np.asarray(result.scores, dtype=np.float64)
    order = np.argsort(-scores, kind="stable")[: req.top_n or len(scores)]
    texts = req.texts() if req.return_documents else None
    results: list[dict[str, Any]] = []
    for i in order.tolist():
        row: dict[str, Any] = {"index": i, "relevance_score": float(scores[i])}
        if texts is not None:
            row["document"] = {"text": texts[i]}
        results.append(row)
    tokens = result.usage_tokens
    body = {
        "id": str(uuid.uuid4()),
        "model": req.model,
        "results": results,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        "meta": {
            "api_version": {"version": api_version},
            "billed_units": {"search_units": 1},
            "tokens": {"input_tokens": tokens, "output_tokens": 0},
        },
    }
    return orjson.dumps(body)
