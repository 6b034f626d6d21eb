"""The model kinds infergraph serves: one registration each.

A kind is a protocol module (infergraph/protocol/: wire types and payload encoder), a runtime
(infergraph/runtimes/: no Ray), a Serve deployment with an `Endpoint` for its routes, and the entry
below that ties them to the catalog's `kind:`. The router, the gateway, admission, tenants and
metrics know kinds only through this table.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ray.serve import Application

from infergraph.deployments.context import BuildContext
from infergraph.deployments.encoder import EmbeddingsEndpoint, bind_encoder
from infergraph.deployments.gateway import Endpoint
from infergraph.deployments.llm import ChatCompletionsEndpoint, CompletionsEndpoint, bind_llm
from infergraph.deployments.reranker import RerankEndpoint, bind_reranker, rerank_encoders
from infergraph.deployments.speech import TranscriptionsEndpoint, TranslationsEndpoint, bind_speech
from infergraph.runtimes.catalog import ModelSpec

Bind = Callable[[ModelSpec, BuildContext, dict[str, Application]], Application]


@dataclass(frozen=True)
class Kind:
    name: str  # the catalog's `kind:`
    endpoints: tuple[Endpoint[Any, Any], ...]  # the routes it answers
    bind: Bind  # the Serve deployment for one catalog entry; gets the models bound before it
    calls: Callable[[ModelSpec], list[str]] = field(
        default=lambda spec: []
    )  # models it calls through handles
    admission: dict[str, Any] = field(default_factory=dict)  # the kind's own AdmissionConfig defaults


# Speech is metered in audio seconds and its replica orders windows by tier and deadline itself, so
# the router lets much more out at once than for text; a long upload goes out alone, in its own call.
SPEECH_ADMISSION = {
    "max_in_flight_per_replica": 36_000,
    "max_calls_per_replica": 16,
    "max_group_units": 120,
    "max_group_requests": 8,
}


KINDS: dict[str, Kind] = {
    kind.name: kind
    for kind in (
        Kind("text-encoder", (EmbeddingsEndpoint(),), bind_encoder),
        Kind("reranker", (RerankEndpoint(),), bind_reranker, calls=rerank_encoders),
        Kind("llm", (ChatCompletionsEndpoint(), CompletionsEndpoint()), bind_llm),
        Kind(
            "speech-to-text",
            (TranscriptionsEndpoint(), TranslationsEndpoint()),
            bind_speech,
            admission=SPEECH_ADMISSION,
        ),
    )
}


def kind_streams(kind: str) -> bool:
    """Whether the kind answers from a stream of events (the router then opens streaming calls)."""
    return kind in KINDS and any(ep.streams for ep in KINDS[kind].endpoints)


def endpoints_by_path() -> dict[str, Endpoint[Any, Any]]:
    """Every POST route of every kind."""
    return {path: ep for kind in KINDS.values() for ep in kind.endpoints for path in ep.paths}
