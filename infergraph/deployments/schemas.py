"""Wire formats of the public API (OpenAI-compatible) and of router <-> model deployments."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictStr, field_validator

MAX_INPUTS_PER_REQUEST = 2048  # OpenAI's own limit for /v1/embeddings


class EmbeddingRequest(BaseModel):
    """`POST /v1/embeddings` body, as OpenAI defines it (token-array inputs are not supported)."""

    model_config = ConfigDict(extra="ignore")
    input: StrictStr | list[StrictStr] = Field(description="A string or a list of strings to embed.")
    model: StrictStr
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = Field(default=None, gt=0)
    user: str | None = None

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


class ModelCard(BaseModel):
    """`GET /v1/models` entry; the extra fields say what actually serves the model."""

    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "infergraph"
    kind: str
    dimensions: int
    max_input_tokens: int
    engine: str
    forward_lanes: int = Field(1, description="forward passes the replica runs at once")
    variant: str = Field(description="the served variant (manifest.variant), or 'base'")
    variant_uri: str | None = Field(
        None, description="models:/<name>/<version> when it came from the registry"
    )
    variant_source: Literal["registry", "path", "base"] = "base"
    variant_requested: str | None = Field(None, description="what the configuration asked for")
    precision: str = "fp32"
    variant_reason: str | None = Field(None, description="how the variant was chosen (why base, when it is)")
    variant_error: str | None = Field(
        None, description="the last variant change that failed (the old one serves)"
    )
    batching: dict[str, Any] = {}
    stats: dict[str, int] = {}


@dataclass
class EmbedResult:
    """What a text-encoder deployment answers for one request: vectors or a client error."""

    embeddings: Any = None  # numpy float32 (n, dim): pickled as-is across the handle
    prompt_tokens: int = 0
    error: str | None = None
    error_param: str | None = None
    deadline_exceeded: bool = False  # refused in the replica's queue: an overload, not a client error
    batch_sentences: int = 0  # size of the batch it was computed in
    compute_s: float = 0.0  # its share of that batch's compute time
