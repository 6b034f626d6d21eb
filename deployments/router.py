"""The router: the FastAPI ingress every request enters through.

It validates the body, picks the model deployment and shapes the OpenAI response. The QoS layer
(tenants, tiers, deadlines, per-model queues) belongs between validation and the handle call in
`embeddings()`; the endpoints and the deployments' interface stay as they are.
"""

import base64
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import orjson
from fastapi import FastAPI, Request
from fastapi.responses import Response
from pydantic import ValidationError
from ray import serve
from ray.serve.handle import DeploymentHandle

from deployments.errors import ApiError, describe_validation_error, install_error_handlers
from deployments.schemas import EmbeddingRequest, EmbedResult, ModelCard

DEFAULT_MAX_BODY_BYTES = 4 * 1024 * 1024

app = FastAPI(
    title="infergraph",
    description="OpenAI-compatible multi-model inference on Ray Serve.",
    version="0.1.0",
)
install_error_handlers(app)


async def read_json_body(request: Request, limit: int) -> Any:
    """Parse the JSON body, refusing more than `limit` bytes before reading them all."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise ApiError(413, f"request body is {declared} bytes; the limit is {limit}", code="body_too_large")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise ApiError(413, f"request body exceeds the limit of {limit} bytes", code="body_too_large")
        chunks.append(chunk)
    try:
        return orjson.loads(b"".join(chunks))
    except orjson.JSONDecodeError:
        raise ApiError(400, "request body is not valid JSON", code="invalid_json") from None


def embedding_payload(req: EmbeddingRequest, result: EmbedResult) -> bytes:
    vectors: np.ndarray = result.embeddings
    if req.encoding_format == "base64":
        rows: list[Any] = [base64.b64encode(v.astype("<f4").tobytes()).decode() for v in vectors]
    else:
        rows = list(vectors)  # orjson writes numpy rows natively
    body = {
        "object": "list",
        "data": [{"object": "embedding", "index": i, "embedding": row} for i, row in enumerate(rows)],
        "model": req.model,
        "usage": {"prompt_tokens": result.prompt_tokens, "total_tokens": result.prompt_tokens},
    }
    return orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY)


def coalescer(handle: DeploymentHandle, max_requests: int, wait_s: float) -> Callable[[list[str]], Any]:
    """Gather concurrent small requests for one model into a single call to its deployment.

    Every handle call costs milliseconds of CPU on both ends; on a small machine that, not the
    model, caps single-sentence traffic. Serve's own batcher does the gathering.
    """

    @serve.batch(max_batch_size=max_requests, batch_wait_timeout_s=wait_s, max_concurrent_batches=4)
    async def forward(requests: list[list[str]]) -> list[EmbedResult]:
        return await handle.embed_many.remote(requests)

    return forward


@serve.deployment(ray_actor_options={"num_cpus": 0.5}, max_ongoing_requests=512)
@serve.ingress(app)
class Router:
    def __init__(
        self,
        models: dict[str, DeploymentHandle],
        max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
        coalesce_max_requests: int = 32,
        coalesce_wait_s: float = 0.002,
        coalesce_below_sentences: int = 8,
    ) -> None:
        self.models = models
        self.max_body_bytes = max_body_bytes
        self.coalesced = {
            name: coalescer(h, coalesce_max_requests, coalesce_wait_s) for name, h in models.items()
        }
        self.coalesce_below = coalesce_below_sentences
        self.dimensions: dict[str, int] = {}
        self.started = int(time.time())

    async def card(self, name: str) -> ModelCard:
        """Asked of the deployment each time, so live batching changes show up."""
        info = await self.models[name].info.remote()
        self.dimensions[name] = info["dimensions"]
        return ModelCard(created=self.started, **info)

    async def dimensions_of(self, name: str) -> int:
        if name not in self.dimensions:
            await self.card(name)
        return self.dimensions[name]

    def handle_for(self, model: str) -> DeploymentHandle:
        handle = self.models.get(model)
        if handle is None:
            raise ApiError(
                404,
                f"The model '{model}' does not exist; available: {', '.join(sorted(self.models))}",
                param="model",
                code="model_not_found",
            )
        return handle

    @app.post(
        "/v1/embeddings",
        openapi_extra={
            "requestBody": {"content": {"application/json": {"schema": EmbeddingRequest.model_json_schema()}}}
        },
    )
    async def embeddings(self, request: Request) -> Response:
        try:
            req = EmbeddingRequest.model_validate(await read_json_body(request, self.max_body_bytes))
        except ValidationError as exc:
            message, param = describe_validation_error(exc)
            raise ApiError(400, message, param, "invalid_request") from None
        handle = self.handle_for(req.model)
        if req.dimensions is not None and req.dimensions != (dims := await self.dimensions_of(req.model)):
            raise ApiError(400, f"{req.model} only returns {dims} dimensions", param="dimensions")
        texts = req.texts()
        if len(texts) < self.coalesce_below:
            result: EmbedResult = await self.coalesced[req.model](texts)
        else:
            result = await handle.embed.remote(texts)
        if result.error:
            raise ApiError(400, result.error, result.error_param, "context_length_exceeded")
        return Response(embedding_payload(req, result), media_type="application/json")

    @app.get("/v1/models")
    async def list_models(self) -> dict[str, Any]:
        cards = [await self.card(name) for name in sorted(self.models)]
        return {"object": "list", "data": [c.model_dump() for c in cards]}

    @app.get("/v1/models/{model}")
    async def get_model(self, model: str) -> dict[str, Any]:
        self.handle_for(model)
        return (await self.card(model)).model_dump()

    @app.get("/healthz")
    async def healthz(self) -> dict[str, Any]:
        return {"status": "ok", "models": sorted(self.models)}
