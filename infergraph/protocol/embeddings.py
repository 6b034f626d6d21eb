"""`POST /v1/embeddings` (OpenAI's shape, plus TEI's opt-in `truncate`): request, job, result, payload."""

from __future__ import annotations

import base64
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import orjson
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, StrictStr, field_validator

from infergraph.protocol.common import Outcome

MAX_INPUTS_PER_REQUEST = 2048  # OpenAI's own limit for /v1/embeddings


class EmbeddingRequest(BaseModel):
    """The request body as OpenAI defines it (token-array inputs are not supported).

    `truncate` (TEI's name): cut an input over the model's limit instead of refusing it with 400;
    `truncation_direction` says which end goes. `usage` counts the tokens actually embedded.
    """

    model_config = ConfigDict(extra="ignore")
    input: StrictStr | list[StrictStr] = Field(description="A string or a list of strings to embed.")
    model: StrictStr
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: StrictInt | None = Field(default=None, gt=0)
    user: str | None = None
    truncate: StrictBool = False
    truncation_direction: Literal["right", "left"] = "right"

    @field_validator("truncation_direction", mode="before")
    @classmethod
    def _lower(cls, value: Any) -> Any:
        return value.lower() if isinstance(value, str) else value  # TEI writes "Right" / "Left"

    @field_validator("input", mode="before")
    @classmethod
    def _strings_only(cls, value: Any) -> Any:
        is_text_list = isinstance(value, list) and all(isinstance(v, str) for v in value)
        if not isinstance(value, str) and not is_text_list:
            raise ValueError("input must be a string or a list of strings (token arrays are not supported)")
        return value

    @field_validator("input")
    @classmethod
    def _non_empty(cls, value: str | list[str]) -> str | list[str]:
        texts = [value] if isinstance(value, str) else value
        if not texts:
            raise ValueError("input must not be an empty list")
        if len(texts) > MAX_INPUTS_PER_REQUEST:
            raise ValueError(f"at most {MAX_INPUTS_PER_REQUEST} inputs per request, got {len(texts)}")
        for i, text in enumerate(texts):
            if not text.strip():
                raise ValueError(f"input[{i}] is empty")
        return value

    def texts(self) -> list[str]:
        return [self.input] if isinstance(self.input, str) else list(self.input)

    def work(self) -> EmbedWork:
        return EmbedWork(self.texts(), self.truncate, self.truncation_direction)


@dataclass(frozen=True)
class EmbedWork:
    """What a text-encoder deployment computes for one request."""

    texts: list[str]
    truncate: StrictBool = False
    truncation_direction: Literal["right", "left"] = "right"

    @property
    def units(self) -> int:
        """What the router meters this work in: sentences."""
        return len(self.texts)


@dataclass
class EmbedResult(Outcome):
    """Vectors (numpy float32 (n, dim), pickled as-is across the handle) or an `Outcome` error."""

    embeddings: Any = None
    truncated: int = 0  # inputs that were cut to the model's limit


def embeddings_payload(req: EmbeddingRequest, result: EmbedResult) -> bytes:
    vectors: np.ndarray = result.embeddings
    if req.encoding_format == "base64":
        rows: list[Any] = [base64.b64encode(v.astype("<f4").tobytes()).decode() for v in vectors]
    else:
        rows = list(vectors)  # orjson writes numpy rows natively
    body = {
        "object": "list",
        "data": [{"object": "embedding", "index": i, "embedding": row} for i, row in enumerate(rows)],
        "model": req.model,
        "usage": {"prompt_tokens": result.usage_tokens, "total_tokens": result.usage_tokens},
    }
    return orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY)
