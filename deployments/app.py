"""Application builder that `serve run configs/serve.yaml` imports: router + one deployment per model."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict
from ray.serve import Application

from deployments.encoder import TextEncoderDeployment
from deployments.router import DEFAULT_MAX_BODY_BYTES, Router
from runtimes.catalog import load_catalog

PROJECT_ROOT = Path(__file__).resolve().parents[1]


class AppArgs(BaseModel):
    """`args:` of the application in serve.yaml."""

    model_config = ConfigDict(extra="forbid")
    catalog: str = "configs/models.yaml"
    models: list[str] = ["all-MiniLM-L6-v2", "multilingual-e5-small"]
    engine: Literal["onnx", "torch"] = "onnx"
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES


def build_app(args: dict[str, Any]) -> Application:
    opts = AppArgs.model_validate(args or {})
    catalog_path = Path(opts.catalog)
    if not catalog_path.is_absolute():
        catalog_path = PROJECT_ROOT / catalog_path  # replicas do not share the CLI's working dir
    catalog = load_catalog(catalog_path)
    handles = {}
    for name in opts.models:
        spec = catalog.get(name).model_dump()
        deployment = TextEncoderDeployment.options(name=name)  # type: ignore[attr-defined]
        handles[name] = deployment.bind(spec, engine=opts.engine)
    return Router.bind(handles, max_body_bytes=opts.max_body_bytes)  # type: ignore[attr-defined]
