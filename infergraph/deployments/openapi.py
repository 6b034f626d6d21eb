"""The service's OpenAPI document: FastAPI's own routes plus one operation per kind endpoint (those
share one catch-all route, so FastAPI cannot describe them), request schemas under `components`,
bearer-key auth, and the OpenAI error shape on every error answer. Clients and fuzzers
(tests/integration/test_api_fuzz.py) read it to learn every route."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from infergraph.deployments.gateway import Endpoint

SCHEMAS = "#/components/schemas/"
PUBLIC_PATHS = ("/healthz",)  # answered without a key

ERROR_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["message", "type", "param", "code"],
            "properties": {
                "message": {"type": "string"},
                "type": {"type": "string"},
                "param": {"type": ["string", "null"]},
                "code": {"type": ["string", "null"]},
            },
        }
    },
}


def _error_answers() -> dict[str, Any]:
    error = {
        "description": "OpenAI-shaped error (429 and 503 carry Retry-After)",
        "content": {"application/json": {"schema": {"$ref": SCHEMAS + "Error"}}},
    }
    return {"4XX": error, "5XX": error}


def _request_body(endpoint: Endpoint[Any, Any], components: dict[str, Any]) -> dict[str, Any]:
    schema = endpoint.request_type.model_json_schema(by_alias=True, ref_template=SCHEMAS + "{model}")
    components.update(schema.pop("$defs", {}))
    if endpoint.body == "multipart":  # the file part is bytes on the wire, not an object
        schema["properties"]["file"] = {"type": "string", "format": "binary"}
        return {"required": True, "content": {"multipart/form-data": {"schema": schema}}}
    return {"required": True, "content": {"application/json": {"schema": schema}}}


def _ok(endpoint: Endpoint[Any, Any]) -> dict[str, Any]:
    content: dict[str, Any] = {"application/json": {"schema": {"type": "object"}}}
    if endpoint.streams:
        content["text/event-stream"] = {"schema": {"type": "string"}}
    return {"200": {"description": "Successful Response", "content": content}}


def build_openapi(app: FastAPI, endpoints: dict[str, Endpoint[Any, Any]]) -> dict[str, Any]:
    doc = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
    doc["paths"].pop("/{path}", None)
    components = doc.setdefault("components", {})
    schemas = components.setdefault("schemas", {})
    for name in ("HTTPValidationError", "ValidationError"):  # FastAPI's 422: this service answers 400
        schemas.pop(name, None)
    schemas["Error"] = ERROR_SCHEMA
    components["securitySchemes"] = {"bearer": {"type": "http", "scheme": "bearer"}}
    for path, operations in doc["paths"].items():
        for operation in operations.values():
            operation["responses"].pop("422", None)
            operation["responses"].update(_error_answers())
            if path not in PUBLIC_PATHS:
                operation["security"] = [{"bearer": []}]
    for path, endpoint in endpoints.items():
        doc["paths"][path] = {
            "post": {
                "summary": path,
                "operationId": "post" + path.replace("/", "_"),
                "security": [{"bearer": []}],
                "requestBody": _request_body(endpoint, schemas),
                "responses": {**_ok(endpoint), **_error_answers()},
            }
        }
    return doc
