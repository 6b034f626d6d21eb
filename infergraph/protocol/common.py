"""What every model kind shares on the wire: tiers, the job that crosses a deployment handle, the
outcome fields the router accounts for, and the `/v1/models` card.

Pure pydantic/dataclasses: the router, the deployments and the tests import it without Ray.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Generic, Literal, TypeVar

from pydantic import BaseModel, Field

W = TypeVar("W")


class Tier(StrEnum):
    """Priority tiers, most urgent first."""

    premium = "premium"
    standard = "standard"
    batch = "batch"

    @property
    def rank(self) -> int:
        """0 for premium: lower ranks are served first."""
        return list(Tier).index(self)


@dataclass(frozen=True)
class Job(Generic[W]):
    """One request's work as it crosses a handle: the kind's payload, typed tier and deadline."""

    work: W
    tier: Tier = Tier.standard
    deadline: float = float("inf")  # time.time() instant; still queued then: refused, never computed


@dataclass
class Outcome:
    """What a model deployment answers for one job: the kind's result, or a client error, or a
    refusal. The router bills `usage_tokens` and `compute_s`; `batch_size` feeds metrics."""

    error: str | None = None  # a client error (400): the input, not the service
    error_param: str | None = None
    error_code: str = "invalid_request"
    error_status: int = 400  # 413 when the input is over a limit the router could not see
    deadline_exceeded: bool = False  # refused in the replica's queue: an overload, not a client error
    usage_tokens: int = 0
    batch_size: int = 0  # units (sentences, pairs) in the batch it was computed in
    compute_s: float = 0.0  # its share of that batch's compute time
    # Where the call's time went (kinds whose replicas report it; time.time() instants):
    replica_in: float = 0.0  # the replica's handler began the call
    replica_out: float = 0.0  # ... and returned it
    replica_wait_s: float = 0.0  # in the replica's batcher, until its batch began
    batch_s: float = 0.0  # the whole batch's compute time


class ModelCard(BaseModel):
    """`GET /v1/models` entry; the extra fields say what actually serves the model."""

    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "infergraph"
    kind: str
    dimensions: int | None = None
    max_input_tokens: int
    max_documents: int | None = Field(None, description="re-rankers: documents per request")
    engine: str
    forward_lanes: int = Field(1, description="forward passes the replica runs at once")
    variant: str = Field("base", description="the served variant (manifest.variant), or 'base'")
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
    max_audio_s: float | None = Field(None, description="speech-to-text: longest upload (413 beyond)")
    multilingual: bool | None = Field(None, description="speech-to-text: detects languages and translates")
    scorer: dict[str, Any] | None = Field(None, description="re-rankers: how documents are scored")
    computed_in: Literal["replica", "router"] = Field(
        "replica", description="where the requests are computed: the model's replicas, or the router itself"
    )
    batching: dict[str, Any] = {}
    stats: dict[str, int] = {}
